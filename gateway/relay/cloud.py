"""The cloud relay: controller state -> outbox -> cloud (cloud-api.md 5, 11).

``observe`` turns each new controller state into at most one snapshot per change and per
``snapshot_period_s``; ``record_event`` adds the events the state feed derived (once, for every
relay) and OTA outcomes, ``record_history`` the watering history. All of it is committed to
the outbox first (group commits), and one pump drains the outbox to the cloud, one batch in
flight, so order per controller holds and nothing is lost while the cloud is away.

Two modes (``CloudMode``): ``gateway_routes`` sends snapshots, events and history through
reportDeviceState (idempotent by batch and event id, 11 P2); ``user_state`` writes the latest
snapshot of each controller under ``gateways.<gateway_id>`` of the user state document (5:
one write in flight, merge semantics), while events and history wait in the outbox until a
route for them exists. ``auto`` probes registerGateway once: API Gateway's 404 means the
routes do not exist.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import TypeAdapter, ValidationError

from cloud_client import CloudClient, CognitoAuth
from cloud_client.errors import (
    CloudError,
    RelinkNeeded,
    RequestRejected,
    RouteNotFound,
)
from cloud_client.models import (
    MAX_BATCH_BYTES,
    MAX_ITEMS_PER_BATCH,
    RegisterGateway,
    ReportDeviceState,
    ReportItem,
    SaveUserState,
    iso_ms,
)
from firmware_bridge.gatt.history import DetailedEntry
from gateway import __version__
from gateway.backoff import full_jitter
from gateway.clock import Clock, LoopClock
from gateway.config import CloudConfig, CloudMode
from gateway.errors import GatewayError
from gateway.ops.health import CloudStatus, OutboxView, RelayState
from gateway.ops.models import ControllerState
from gateway.relay.events import (
    DerivedEvent,
    JsonObject,
    history_data,
    history_dedupe,
    snapshot_data,
)
from gateway.store.outbox import NewItem, Outbox, OutboxWriter, StoredItem

log = structlog.get_logger("gateway.relay.cloud")
ITEM: TypeAdapter[ReportItem] = TypeAdapter(ReportItem)
# The batch envelope and the ids added at send time (~80 bytes an item) fit in what the 256 KiB
# limit leaves above this.
BATCH_ITEM_BYTES = MAX_BATCH_BYTES - 16 * 1024
# When the outbox is empty the pump sleeps until the writer commits, or this long at most.
IDLE_POLL_S = 5.0
# After a failed send: exponential backoff with full jitter, from 1 s up to 5 min (a cloud
# outage can last hours; probing every few minutes is what 4 suggests for /health).
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 300.0
# How often a relink_needed relay looks at the token store for a new link.
RELINK_POLL_S = 5.0
# In the state directory: the outbox, and (in cloud/) what the relay last said of itself.
USER_STATE_NOTE = ("cloud mode user_state: the backend has no route for events and watering "
                   "history yet; they are kept in the outbox (and go to MQTT)")


@dataclass
class _Controller:
    serial: str
    sent_data: JsonObject | None = None
    sent_at: float = float("-inf")
    pending: ControllerState | None = None


@dataclass
class RelayCounters:
    delivered: int = 0
    rejected: int = 0
    malformed: int = 0
    batches: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    rejected_codes: dict[str, int] = field(default_factory=dict)


def _iso(at: float) -> str:
    return iso_ms(datetime.fromtimestamp(at, UTC))


class CloudRelay:
    def __init__(self, config: CloudConfig, gateway_id: str, outbox: Outbox,
                 client: CloudClient, auth: CognitoAuth | None, *,
                 serials: Callable[[], Sequence[str]] = tuple,
                 token_stamp: Callable[[], float | None] = lambda: None,
                 status_path: Path | None = None,
                 on_commit: Callable[[Sequence[NewItem], list[str]], None] | None = None,
                 clock: Clock | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.client = client
        self.auth = auth
        self.writer = OutboxWriter(outbox, on_commit)
        self.counters = RelayCounters()
        self.mode: CloudMode | None = None if config.mode is CloudMode.AUTO else config.mode
        self._serials = serials
        self._token_stamp = token_stamp
        self._status_path = status_path
        self.clock = clock or LoopClock()
        self._rng = rng
        self._controllers: dict[str, _Controller] = {}
        # Registration is current when it carried the latest serials: a claim that lands while
        # a registerGateway is in flight bumps the generation, so that one does not count.
        self._serials_generation = 0
        self._registered_generation = -1
        self._wake = asyncio.Event()

    # ---- in: from the state feed --------------------------------------------------------------

    def observe(self, address: str, serial: str, state: ControllerState) -> None:
        now = self.clock.time()
        entry = self._controllers.setdefault(address, _Controller(serial))
        if snapshot_data(state) == entry.sent_data:
            entry.pending = None
            return
        if now - entry.sent_at >= self.config.snapshot_period_s:
            self._snapshot(entry, state, now)
        else:
            entry.pending = state
            self._wake.set()

    def record_event(self, serial: str, event: DerivedEvent, at: float | None = None) -> None:
        observed = self.clock.time() if at is None else at
        body = {"kind": "event", "serial": serial, "observed_at": _iso(observed),
                "type": event.type, "data": event.data}
        self.writer.submit(NewItem(serial, "event", observed, json.dumps(body)))

    def record_history(self, serial: str, entries: Sequence[DetailedEntry]) -> None:
        for entry in entries:
            dedupe = history_dedupe(entry)
            body = {"kind": "event", "serial": serial, "event_id": f"history:{serial}:{dedupe}",
                    "observed_at": _iso(float(entry.timestamp)), "type": "watering_record",
                    "data": history_data(entry)}
            self.writer.submit(NewItem(serial, "history", float(entry.timestamp),
                                       json.dumps(body), dedupe=dedupe))

    def _snapshot(self, entry: _Controller, state: ControllerState, now: float) -> None:
        data = snapshot_data(state)
        body = {"kind": "snapshot", "serial": entry.serial,
                "observed_at": _iso(state.updated_at or now), "fw_version": state.firmware_version,
                "data": data}
        self.writer.submit(NewItem(entry.serial, "snapshot", now, json.dumps(body)))
        entry.sent_data = data
        entry.sent_at = now
        entry.pending = None

    def serials_changed(self) -> None:
        """A claim or pairing changed what the gateway serves: register again before the
        next batch (11 P1)."""
        self._serials_generation += 1

    # ---- the tasks ------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.writer.run(), name="outbox writer")
            tasks.create_task(self._coalescer(), name="snapshot coalescer")
            tasks.create_task(self._pump(), name="cloud pump")

    async def _coalescer(self) -> None:
        """Sends the snapshots held back by the period, once their period is over."""
        while True:
            now = self.clock.time()
            due = [e.sent_at + self.config.snapshot_period_s - now
                   for e in self._controllers.values() if e.pending is not None]
            if not due:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.clock.sleep(max(0.0, min(due)))
            now = self.clock.time()
            for entry in self._controllers.values():
                if (entry.pending is not None
                        and now - entry.sent_at >= self.config.snapshot_period_s):
                    self._snapshot(entry, entry.pending, now)

    async def _pump(self) -> None:
        failures = 0
        while True:
            self._write_status()
            try:
                if self.auth is not None and self.auth.state == "relink_needed":
                    await self._await_relink()
                if self.mode is None:
                    await self._probe()
                if self.mode is CloudMode.GATEWAY_ROUTES:
                    sent = await self._send_batch()
                else:
                    sent = await self._save_user_state()
                failures = 0
                if not sent:
                    await self._idle()
            except RelinkNeeded as exc:
                # Never linked, or the link was revoked: nothing can go out until a person links
                # the hub again, so wait for the token store to change (this raised before any
                # I/O: looping at once would spin the event loop).
                self.counters.last_error, self.counters.last_error_at = str(exc), self.clock.time()
                log.warning("cloud_relink_needed", reason=exc.kind,
                            remedy="sudo -u awgw awgw cloud link")
                await self._await_relink()
            except (CloudError, GatewayError) as exc:
                # GatewayError: the outbox could not be read or acked (disk trouble); what it
                # holds stays, and is sent once it can be read again.
                failures += 1
                self.counters.last_error, self.counters.last_error_at = str(exc), self.clock.time()
                delay = full_jitter(self._rng, failures, BACKOFF_MIN_S, BACKOFF_MAX_S)
                log.warning("cloud_send_failed", error=str(exc), retry_in_s=round(delay, 1))
                await self.clock.sleep(delay)

    async def _idle(self) -> None:
        async with self.writer.committed:
            try:
                async with asyncio.timeout(IDLE_POLL_S):
                    await self.writer.committed.wait()
            except TimeoutError:
                pass
        if self.mode is CloudMode.USER_STATE:
            # 5: self-limit the user document's write rate.
            await self.clock.sleep(self.config.user_state_period_s)

    async def _await_relink(self) -> None:
        stamp = self._token_stamp()
        while self._token_stamp() == stamp:
            await self.clock.sleep(RELINK_POLL_S)
        assert self.auth is not None
        self.auth.state = "linked"
        log.info("cloud_relinked")

    async def _probe(self) -> None:
        try:
            await self._register()
        except RouteNotFound:
            self.mode = CloudMode.USER_STATE
        else:
            self.mode = CloudMode.GATEWAY_ROUTES
        log.info("cloud_mode_chosen", mode=self.mode.value, configured="auto")

    @property
    def _registered(self) -> bool:
        return self._registered_generation == self._serials_generation

    async def _register(self) -> None:
        generation = self._serials_generation
        await self.client.register_gateway(RegisterGateway(
            gateway_id=self.gateway_id, name=self.config.gateway_name, sw_version=__version__,
            platform="raspberrypi", capabilities=["ble", "ota_relay"],
            serials=list(self._serials())))
        self._registered_generation = generation

    # ---- gateway_routes: reportDeviceState --------------------------------------------------

    async def _send_batch(self, max_items: int = MAX_ITEMS_PER_BATCH) -> bool:
        if not self._registered:
            await self._register()
        leased = await asyncio.to_thread(self.outbox.lease, max_items, BATCH_ITEM_BYTES)
        if not leased:
            return False
        try:
            items = self._items(leased)
            if items:
                await self._report(leased, items)
            else:
                await asyncio.to_thread(self.outbox.ack, [i.id for i in leased])
        except BaseException:
            self.outbox.release(i.id for i in leased)
            raise
        return True

    def _items(self, leased: Sequence[StoredItem]) -> list[tuple[StoredItem, ReportItem]]:
        """The leased rows as report items; a damaged row is counted and acked with the rest
        (it cannot happen for what this relay wrote, and must not block the outbox)."""
        items: list[tuple[StoredItem, ReportItem]] = []
        for stored in leased:
            try:
                raw = json.loads(stored.body)
                if stored.kind == "snapshot":
                    raw["seq"] = stored.seq
                else:
                    raw.setdefault("event_id", stored.key)
                items.append((stored, ITEM.validate_python(raw)))
            except (ValueError, ValidationError, TypeError):
                self.counters.malformed += 1
                log.warning("outbox_item_malformed", key=stored.key, kind=stored.kind)
        return items

    async def _report(self, leased: Sequence[StoredItem],
                      items: list[tuple[StoredItem, ReportItem]]) -> None:
        batch = ReportDeviceState(gateway_id=self.gateway_id, batch_id=uuid.uuid4().hex,
                                  sent_at=datetime.now(UTC), items=[i for _, i in items])
        try:
            reply = await self.client.report_device_state(batch)
        except RequestRejected as exc:
            if exc.code == "gateway_not_registered":
                self._registered_generation = -1
            if exc.status in (400, 413) and len(leased) > 1:
                # A poison item or a body over the limit: halve until it is isolated.
                self.outbox.release(i.id for i in leased)
                await self._send_batch(max(1, len(leased) // 2))
                return
            if exc.status in (400, 413):
                self.counters.rejected += 1
                self.counters.rejected_codes[exc.code or str(exc.status)] = (
                    self.counters.rejected_codes.get(exc.code or str(exc.status), 0) + 1)
                log.warning("cloud_item_refused", key=leased[0].key, code=exc.code)
                await asyncio.to_thread(self.outbox.ack, [leased[0].id])
                return
            raise
        for result in reply.results:
            if result.status == "rejected":
                self.counters.rejected += 1
                code = result.code or "rejected"
                self.counters.rejected_codes[code] = self.counters.rejected_codes.get(code, 0) + 1
        stored_count = sum(r.status != "rejected" for r in reply.results)
        await asyncio.to_thread(self.outbox.ack, [i.id for i in leased])
        self.counters.delivered += stored_count
        self.counters.batches += 1
        self.counters.last_success_at = self.clock.time()

    # ---- user_state: the latest snapshot under gateways.<id> -----------------------------------

    async def _save_user_state(self) -> bool:
        latest = await asyncio.to_thread(self.outbox.latest_snapshots)
        if not latest:
            return False
        controllers: JsonObject = {}
        for serial, stored in latest.items():
            try:
                body = json.loads(stored.body)
            except ValueError:
                self.counters.malformed += 1
                continue
            controllers[serial] = {"seq": stored.seq, "observed_at": body.get("observed_at"),
                                   "fw_version": body.get("fw_version"), "data": body.get("data")}
        state: JsonObject = {"gateways": {self.gateway_id: {
            "name": self.config.gateway_name, "sw_version": __version__,
            "updated_at": _iso(self.clock.time()), "controllers": controllers}}}
        await self.client.save_user_state(SaveUserState(state=state))
        await asyncio.to_thread(self.outbox.ack, [s.id for s in latest.values()])
        self.counters.delivered += len(latest)
        self.counters.batches += 1
        self.counters.last_success_at = self.clock.time()
        return True

    def _write_status(self) -> None:
        """For `awgw cloud status` while the daemon is stopped (atomic replace)."""
        if self._status_path is None:
            return
        try:
            self._status_path.parent.mkdir(parents=True, exist_ok=True)
            temp = self._status_path.with_name(self._status_path.name + ".tmp")
            temp.write_text(self.status().model_dump_json())
            temp.replace(self._status_path)
        except OSError as exc:
            log.warning("cloud_status_not_written", path=str(self._status_path),
                        error=exc.strerror)

    # ---- status -------------------------------------------------------------------------------

    def state(self) -> RelayState:
        """Unlinked or relink_needed until linked, then starting while nothing went out yet,
        then up or down by whichever of the last success and the last failure came later."""
        link = self.auth.state if self.auth else "unlinked"
        c = self.counters
        if link != "linked":
            return RelayState.RELINK_NEEDED if link == "relink_needed" else RelayState.UNLINKED
        if c.last_error_at is not None and (c.last_success_at is None
                                            or c.last_error_at > c.last_success_at):
            return RelayState.DOWN
        return RelayState.UP if c.last_success_at is not None else RelayState.STARTING

    def status(self) -> CloudStatus:
        stats = self.outbox.stats()
        return CloudStatus(
            enabled=True, mode=self.config.mode.value,
            active_mode=self.mode.value if self.mode else None, gateway_id=self.gateway_id,
            link=self.auth.state if self.auth else "unlinked",
            user=None, token_expires_in_s=self.auth.expires_in_s if self.auth else None,
            outbox=OutboxView(depth=stats.depth, bytes=stats.bytes,
                              oldest_age_s=stats.oldest_age_s, by_kind=stats.by_kind,
                              dropped=stats.dropped),
            delivered=self.counters.delivered, rejected=self.counters.rejected,
            last_success_at=self.counters.last_success_at,
            last_error=self.counters.last_error,
            note=USER_STATE_NOTE if self.mode is CloudMode.USER_STATE else None)

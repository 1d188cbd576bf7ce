"""The MQTT relay: retained controller state, events, availability, Home Assistant discovery and
commands, over aiomqtt with its own reconnect supervisor. Its neighbours in this package: the
topics, the discovery payloads, the commands (parsed without I/O), the update entity's offers and
the broker's password.

Nothing here can block the radio side: ``observe`` only records the latest state per
controller (a coalesced view, so a slow or absent broker cannot grow memory) and puts derived
events in this relay's own outbox (durable, in order). While connected, one task publishes
whatever state changed, one drains the outbox (QoS 1, each event acked once the broker has
it), one answers commands. On every (re)connect the current state is republished, not a replay
of every change, and events come from the outbox in order, once (a broker that drops the link
between receiving an event and acking it gets it again: QoS 1 is at least once; ``event_id``
tells them apart).

Commands are parsed into the same typed operations as the control socket (``ops.models``),
checked against ``allowed_ops``, and answered on ``<node>/result``: confirmed, refused with the
reason, or busy. A retained command is never executed: a stale command must not open a valve
after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from pydantic import BaseModel, ValidationError

from cloud_client.versions import version_key
from firmware_bridge.gatt.history import DetailedEntry
from firmware_bridge.mcuboot import ImageFormatError, parse_image
from gateway.backoff import full_jitter
from gateway.clock import Clock, LoopClock
from gateway.config import DiscoveryStyle, MqttConfig
from gateway.errors import ControllerBusy, GatewayError
from gateway.ops.health import RelayState
from gateway.ops.models import (
    ControllerState,
    Ota,
    OtaReport,
)
from gateway.ops.protocol import ControllerOps, dispatch_to_controllers
from gateway.relay.events import DerivedEvent, history_data, history_dedupe
from gateway.relay.mqtt import discovery as ha_discovery
from gateway.relay.mqtt.commands import (
    COMMAND_TTL_S,
    MAX_COMMAND_BYTES,
    CommandReply,
    CommandStatus,
    brief,
    parse_command,
    parse_minutes,
)
from gateway.relay.mqtt.identity import CLASH_REMEDY, IdentityWatch, Instance, this_process
from gateway.relay.mqtt.tls import tls_context
from gateway.relay.mqtt.topics import OFFLINE, ONLINE, Topics, node_id
from gateway.relay.mqtt.update_entity import Offer
from gateway.relay.offers import OfferBoard
from gateway.store.images import read_image
from gateway.store.outbox import NewItem, Outbox, OutboxWriter, StoredItem
from gateway.supervise import Supervision

log = structlog.get_logger("gateway.relay.mqtt")
# Reconnect backoff: from 1 s doubling to 60 s, full jitter (a broker restart is back within
# seconds; a long outage is probed once a minute).
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
# Events go out in leases of this many (one fsync to ack them); the outbox is polled this
# often when the writer has nothing new.
EVENT_LEASE = 50
IDLE_POLL_S = 5.0
# Radio and gateway state are re-checked this often (the radio has no event of its own).
TICK_S = 2.0
# Commands in flight at once: a script flooding the command topic queues behind these.
MAX_CONCURRENT_COMMANDS = 8
# Commands accepted and not yet answered (running or queued behind the ones in flight): past
# this a command is answered busy at once, so a flood costs neither memory nor tasks.
MAX_PENDING_COMMANDS = 32
# The guarded part this relay runs as (gateway/daemon/hub.py); its commands are its children.
PART = "mqtt relay"


@dataclass
class _Node:
    address: str
    serial: str
    state: ControllerState | None = None
    minutes: dict[int, int] | None = None
    # The discovery last published for it: a new controller, a new firmware version or new
    # channel names publish it again.
    announced: ha_discovery.ControllerInfo | None = None
    # What this connection last published of it, so unchanged retained values are not sent
    # again with every state (None: nothing yet on this connection).
    availability: str | None = None
    minutes_published: bool = False
    offer: Offer | None = None
    installing: bool = False
    percentage: int | None = None
    update_published: str | None = None


class MqttRelay:
    def __init__(self, config: MqttConfig, gateway_id: str, outbox: Outbox, ops: ControllerOps,
                 *, radio_ok: Callable[[], bool] = lambda: True,
                 rssi_of: Callable[[str], int | None] = lambda _a: None,
                 radio_of: Callable[[str], str | None] = lambda _a: None,
                 gateway_state: Callable[[], dict[str, Any]] = dict,
                 password: str | None = None, staged_dir: Path | None = None,
                 tls: ssl.SSLContext | None = None,
                 offers: OfferBoard | None = None,
                 rng: Callable[[], float] = random.random,
                 clock: Clock | None = None,
                 supervision: Supervision | None = None,
                 instance: Instance | None = None) -> None:
        self.config = config
        self.topics = Topics(config.topic_prefix, gateway_id)
        self.outbox = outbox
        self.writer = OutboxWriter(outbox)
        self.ops = ops
        self._radio_ok = radio_ok
        self._rssi_of = rssi_of
        self._radio_of = radio_of
        self._gateway_state = gateway_state
        self._password = password
        # Built by the composition root before any store opens (a bad ca_file is exit 7).
        self._tls = tls or tls_context(config)
        self._staged_dir = staged_dir
        # The cloud's offers: they arrive through offer(), installs go back through it.
        self._offers = offers or OfferBoard()
        self._offers.listen(self.offer)
        self._rng = rng
        self.clock = clock or LoopClock()
        self._nodes: dict[str, _Node] = {}
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._changed = asyncio.Event()
        self._commands = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
        self._pending = 0
        self.commands_refused_busy = 0
        self.replies_lost = 0
        self.undeliverable = 0  # outbox items that could never become a message
        self.commands_expired = 0
        self._protocol = aiomqtt.ProtocolVersion.V5
        self.supervision = supervision or Supervision(self.clock)
        self.connected = False
        self.connects = 0
        self.failures = 0  # connection attempts failed since the last success
        self.published_states = 0
        self.identity = IdentityWatch(instance or this_process())

    # ---- in: the state feed (never blocks) -----------------------------------------------------

    def observe(self, address: str, serial: str, state: ControllerState) -> None:
        node = node_id(address, serial)
        entry = self._nodes.setdefault(node, _Node(address, serial))
        previous = entry.state
        entry.state = state
        # The feed also ticks with nothing new (only age_s moved): such a state is not sent
        # again; what a subscriber needs to know about age is in availability.
        if previous is None or previous.model_copy(update={"age_s": None}) != \
                state.model_copy(update={"age_s": None}):
            self._dirty.add(node)
            self._changed.set()

    def record_event(self, serial: str, event: DerivedEvent, at: float | None = None) -> None:
        observed = self.clock.time() if at is None else at
        body = {"event_type": event.type, "observed_at": _iso(observed), **event.data}
        self.writer.submit(NewItem(serial, "event", observed, json.dumps(body)))

    def record_history(self, serial: str, entries: Sequence[DetailedEntry]) -> None:
        for entry in entries:
            dedupe = history_dedupe(entry)
            body = {"event_type": "watering_record", "event_id": f"history:{serial}:{dedupe}",
                    "observed_at": _iso(float(entry.timestamp)), **history_data(entry)}
            self.writer.submit(NewItem(serial, "history", float(entry.timestamp),
                                       json.dumps(body), dedupe=dedupe))

    def forget(self, address: str, serial: str | None) -> None:
        """An unpaired controller: its discovery is removed (empty retained config)."""
        node = node_id(address, serial)
        if self._nodes.pop(node, None) is not None:
            self._removed.add(node)
            self._changed.set()

    def offer(self, address: str, serial: str | None, version: str) -> None:
        """The cloud's release check found ``version`` for this controller."""
        entry = self._nodes.get(node_id(address, serial))
        if entry is not None and (entry.offer is None or entry.offer.source == "cloud"):
            entry.offer = Offer(version, "cloud")
            self._dirty.add(node_id(address, serial))
            self._changed.set()

    def _staged(self, node: str, entry: _Node) -> None:
        """Notice an image staged for this controller (or its removal)."""
        if self._staged_dir is None:
            return
        path = self._staged_dir / f"{node}.bin"
        try:
            stamp = path.stat().st_mtime
        except FileNotFoundError:
            if entry.offer is not None and entry.offer.source == "staged":
                entry.offer = None
            return
        if entry.offer is not None and entry.offer.source == "staged" \
                and entry.offer.stamp == stamp:
            return
        try:
            version = str(parse_image(read_image(path)).version)
        except (GatewayError, ImageFormatError) as exc:
            log.warning("staged_image_unusable", path=str(path), error=str(exc))
            return
        entry.offer = Offer(version, "staged", path, stamp)

    def state(self) -> RelayState:
        if self.connected:
            return RelayState.UP
        return RelayState.DOWN if self.failures or self.connects else RelayState.STARTING

    # ---- the connection supervisor -------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.writer.run(), name="mqtt outbox writer")
            tasks.create_task(self._supervise(), name="mqtt connection")

    async def _supervise(self) -> None:
        failures = 0
        while True:
            try:
                async with self._client() as client:
                    self.connected = True
                    self.connects += 1
                    failures = self.failures = 0
                    log.info("mqtt_connected", host=self.config.host, port=self.config.port)
                    await self._on_connect(client)
                    async with asyncio.TaskGroup() as tasks:
                        tasks.create_task(self._publish_states(client), name="mqtt states")
                        tasks.create_task(self._pump_events(client), name="mqtt events")
                        tasks.create_task(self._listen(client, tasks), name="mqtt commands")
            except* aiomqtt.MqttError as group:
                if self._protocol is aiomqtt.ProtocolVersion.V5 and any(
                        isinstance(exc, aiomqtt.MqttError) and refuses_v5(exc)
                        for exc in group.exceptions):
                    log.info("mqtt_broker_speaks_3_1_1", host=self.config.host,
                             effect="commands expire after COMMAND_TTL_S only")
                    self._protocol = aiomqtt.ProtocolVersion.V311
                    failures = 0  # not a failure of the broker: connect again at once
                    delay = 0.0
                else:
                    failures += 1
                    delay = full_jitter(self._rng, failures, BACKOFF_MIN_S, BACKOFF_MAX_S)
                self.failures = failures
                self.connected = False
                if failures:
                    log.warning("mqtt_disconnected", error=str(group.exceptions[0]),
                                retry_in_s=round(delay, 2))
                await self.clock.sleep(delay)
            finally:
                self.connected = False

    def _client(self) -> aiomqtt.Client:
        """MQTT 5 where the broker speaks it (message expiry), 3.1.1 otherwise; a clean
        session either way, so the broker never holds commands for an absent gateway."""
        cfg = self.config
        session: dict[str, Any] = (
            {"clean_start": True} if self._protocol is aiomqtt.ProtocolVersion.V5
            else {"clean_session": True})
        return aiomqtt.Client(
            cfg.host, cfg.port, identifier=f"awgw-{self.topics.gateway_id}",
            username=cfg.username, password=self._password, keepalive=cfg.keepalive_s,
            tls_context=self._tls, protocol=self._protocol, **session,
            will=aiomqtt.Will(self.topics.gateway_availability, OFFLINE, qos=1, retain=True))

    def identity_clash(self) -> str | None:
        """Another live process using this gateway id on the broker, if one was heard."""
        return self.identity.clash()

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        # Subscribed before the announcement: the broker hands back who announced last, which
        # after this process's first connect is itself unless another shares its id.
        await client.subscribe(self.topics.gateway_instance, qos=1)
        await client.publish(self.topics.gateway_instance, self.identity.payload(), qos=1,
                             retain=True)
        for topic in self.topics.subscriptions:
            await client.subscribe(topic, qos=1)
        await client.subscribe(f"{self.config.discovery_prefix}/status", qos=1)
        await client.publish(self.topics.gateway_availability, ONLINE, qos=1, retain=True)
        await self._publish_all(client)

    async def _publish_all(self, client: aiomqtt.Client) -> None:
        """Discovery, then the current state of everything (also on HA's birth message)."""
        await self._publish_discovery(client)
        await client.publish(self.topics.radio, ONLINE if self._radio_ok() else OFFLINE,
                             qos=1, retain=True)
        await client.publish(self.topics.gateway_state, json.dumps(
            {"outbox_depth": self.outbox.stats().depth, **self._gateway_state()}),
            qos=1, retain=True)
        for entry in self._nodes.values():
            entry.availability, entry.minutes_published = None, False
            entry.update_published = None
        self._dirty.update(self._nodes)
        self._changed.set()

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        style = self.config.discovery
        if style is DiscoveryStyle.OFF:
            return
        prefix = self.config.discovery_prefix
        messages = ha_discovery.gateway_messages(self.topics, prefix, style.value)
        for topic, payload in messages:
            await client.publish(topic, json.dumps(payload), qos=1, retain=True)
        for node, entry in list(self._nodes.items()):
            await self._announce(client, node, entry)

    async def _announce(self, client: aiomqtt.Client, node: str, entry: _Node) -> None:
        style = self.config.discovery
        info = self._info(node, entry)
        entry.announced = info
        if style is DiscoveryStyle.OFF:
            return
        for topic, payload in ha_discovery.controller_messages(
                info, self.topics, self.config.discovery_prefix, style.value):
            await client.publish(topic, json.dumps(payload), qos=1, retain=True)

    def _info(self, node: str, entry: _Node) -> ha_discovery.ControllerInfo:
        state = entry.state
        names = {v.channel: v.name for v in state.valves if v.name} if state else {}
        return ha_discovery.ControllerInfo(
            node=node, address=entry.address, serial=entry.serial,
            firmware_version=state.firmware_version if state else None,
            channels=len(state.valves) if state else 8, channel_names=names,
            has_environment=bool(state and state.environment),
            has_rain=bool(state and state.rain))

    # ---- out: state, availability, events ------------------------------------------------------

    async def _publish_states(self, client: aiomqtt.Client) -> None:
        radio = None
        while True:
            await self.clock.wait(self._changed, TICK_S)
            self._changed.clear()
            up = self._radio_ok()
            if up != radio:
                radio = up
                await client.publish(self.topics.radio, ONLINE if up else OFFLINE, qos=1,
                                     retain=True)
            for node in list(self._removed):
                await self._remove(client, node)
                self._removed.discard(node)
            dirty, self._dirty = self._dirty, set()
            for node in dirty:
                entry = self._nodes.get(node)
                if entry is None or entry.state is None:
                    continue
                if entry.announced != self._info(node, entry):
                    await self._announce(client, node, entry)
                await self._publish_state(client, node, entry)

    async def _publish_state(self, client: aiomqtt.Client, node: str, entry: _Node) -> None:
        state = entry.state
        assert state is not None
        payload = state.model_dump(mode="json")
        payload["updated_at_iso"] = _iso(state.updated_at) if state.updated_at else None
        payload["rssi"] = self._rssi_of(entry.address)
        payload["radio"] = self._radio_of(entry.address)
        await client.publish(self.topics.state(node), json.dumps(payload), qos=1, retain=True)
        # A controller is available only while its state is fresh (reachable and read
        # within the stale limit): stale values are never shown as current.
        availability = ONLINE if state.fresh else OFFLINE
        if availability != entry.availability:
            await client.publish(self.topics.availability(node), availability, qos=1,
                                 retain=True)
            entry.availability = availability
        await self._publish_update(client, node, entry)
        if not entry.minutes_published:
            minutes = entry.minutes or {}
            for channel in range(len(state.valves)):
                await client.publish(self.topics.minutes(node, channel),
                                     str(minutes.get(channel, self.config.default_valve_minutes)),
                                     qos=1, retain=True)
            entry.minutes_published = True
        self.published_states += 1

    async def _publish_update(self, client: aiomqtt.Client, node: str, entry: _Node) -> None:
        self._staged(node, entry)
        installed = entry.state.firmware_version if entry.state else None
        offer = entry.offer
        if offer is not None and installed and version_key(offer.version) == version_key(
                installed):
            offer = None  # already running it
        fields: dict[str, Any] = {
            "installed_version": installed,
            "latest_version": offer.version if offer else installed,
            "title": "AutoWatering firmware", "in_progress": entry.installing,
            "update_percentage": entry.percentage}
        if offer is not None:
            fields["release_summary"] = f"offered by the {offer.source}"
        # Home Assistant refuses a null release_summary; an absent one is fine.
        body = json.dumps(fields)
        if body != entry.update_published:
            await client.publish(self.topics.update(node), body, qos=1, retain=True)
            entry.update_published = body

    async def _remove(self, client: aiomqtt.Client, node: str) -> None:
        prefix = self.config.discovery_prefix
        info = ha_discovery.ControllerInfo(node, "", None, None, 8, {})
        for style in ("device", "entity"):
            for topic, _ in ha_discovery.controller_messages(info, self.topics, prefix, style):
                await client.publish(topic, b"", qos=1, retain=True)
        for topic in (self.topics.state(node), self.topics.availability(node),
                      self.topics.update(node)):
            await client.publish(topic, b"", qos=1, retain=True)

    async def _pump_events(self, client: aiomqtt.Client) -> None:
        while True:
            leased = await asyncio.to_thread(self.outbox.lease, EVENT_LEASE, 256 * 1024)
            if not leased:
                async with self.writer.committed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(IDLE_POLL_S):
                            await self.writer.committed.wait()
                continue
            sent: list[int] = []
            try:
                for item in leased:
                    message = event_message(self.topics, item)
                    if message is None:
                        # It can never go out (a file from an older version, a damaged row):
                        # dropped and counted, not sent again after every reconnect.
                        log.warning("mqtt_event_undeliverable", controller=item.controller[:40],
                                    key=item.key)
                        self.undeliverable += 1
                    else:
                        await client.publish(*message, qos=1, retain=False)
                    sent.append(item.id)
            finally:
                # What the broker acked is done; the rest goes again after the reconnect.
                self.outbox.release(i.id for i in leased if i.id not in sent)
                if sent:
                    await asyncio.to_thread(self.outbox.ack, sent)

    # ---- in: commands ---------------------------------------------------------------------------

    async def _listen(self, client: aiomqtt.Client, tasks: asyncio.TaskGroup) -> None:
        """Each command is a child of the connection's TaskGroup, guarded: its crash is logged
        and answered as an error, never the relay's end. A reply lost with the connection is
        counted (``replies_lost``); a flood past MAX_PENDING_COMMANDS is answered busy."""
        async for message in client.messages:
            topic = message.topic.value
            if topic == self.topics.gateway_instance:
                other = self.identity.heard(_raw(message), first_connect=self.connects == 1)
                if other is not None:
                    log.error("gateway_id_shared", gateway_id=self.topics.gateway_id,
                              other_host=other.host, other_machine=other.machine,
                              other_pid=other.pid, remedy=CLASH_REMEDY)
                continue
            if topic == f"{self.config.discovery_prefix}/status":
                if message.payload in (b"online", "online"):
                    log.info("home_assistant_online")
                    await self._publish_all(client)
                continue
            parsed = self.topics.parse_command_topic(topic)
            if parsed is None:
                continue
            raw = _raw(message)
            if self._pending >= MAX_PENDING_COMMANDS:
                self.commands_refused_busy += 1
                await self._reply(client, parsed[0], CommandReply(
                    ok=False, status=CommandStatus.BUSY,
                    detail=f"{self._pending} commands are waiting; try again shortly"))
                continue
            self._pending += 1
            deadline = self.clock.now() + command_ttl_s(message)
            tasks.create_task(self._command(client, topic, parsed, raw, message.retain,
                                            deadline),
                              name=f"mqtt command {topic}")

    async def _command(self, client: aiomqtt.Client, topic: str,
                       parsed: tuple[str, str, int | None], raw: bytes, retained: bool,
                       deadline: float) -> None:
        node, kind, channel = parsed
        replies: list[CommandReply | None] = []

        async def answer() -> None:
            replies.append(await self._answer(node, kind, channel, raw, retained, deadline))

        try:
            done = await self.supervision.child(PART, f"command {topic}", answer())
        finally:
            self._pending -= 1
        reply = replies[0] if done else CommandReply(
            ok=False, status=CommandStatus.ERROR,
            detail="the gateway failed handling this command; nothing was done")
        if reply is None:
            return
        if not reply.ok:
            log.warning("mqtt_command_refused", node=node, kind=kind, status=reply.status,
                        detail=reply.detail)
        await self._reply(client, node, reply)

    async def _reply(self, client: aiomqtt.Client, node: str, reply: CommandReply) -> None:
        try:
            await client.publish(self.topics.result(node), reply.model_dump_json(), qos=1)
        except aiomqtt.MqttError:
            self.replies_lost += 1  # the link went: the reply goes with it

    async def _answer(self, node: str, kind: str, channel: int | None, raw: bytes,
                      retained: bool, deadline: float) -> CommandReply | None:
        entry = self._nodes.get(node)
        if kind == "minutes":
            return self._set_minutes(node, entry, channel, raw)
        if retained:
            return CommandReply(ok=False, status=CommandStatus.INVALID,
                                detail="a retained command is never executed; publish "
                                       "commands without the retain flag")
        if len(raw) > MAX_COMMAND_BYTES:
            return CommandReply(ok=False, status=CommandStatus.INVALID,
                                detail=f"command of {len(raw)} bytes exceeds "
                                       f"{MAX_COMMAND_BYTES}")
        if entry is None:
            return CommandReply(ok=False, status=CommandStatus.UNKNOWN_CONTROLLER,
                                detail=f"no paired controller is published as {node}")
        if kind == "update":
            return await self._install(node, entry, raw)
        try:
            command_id, request = parse_command(
                kind, channel, raw, address=entry.address, node=node,
                minutes=entry.minutes or {}, default_minutes=self.config.default_valve_minutes)
        except (ValueError, TypeError, ValidationError) as exc:  # UnicodeDecodeError, JSON too
            return CommandReply(ok=False, status=CommandStatus.INVALID, detail=brief(exc))
        if request.op not in self.config.allowed_ops:
            return CommandReply(id=command_id, op=request.op, ok=False,
                                status=CommandStatus.NOT_ALLOWED,
                                detail=f"{request.op} is not in [mqtt] allowed_ops")
        async with self._commands:
            if self.clock.now() > deadline:
                self.commands_expired += 1
                return CommandReply(id=command_id, op=request.op, ok=False,
                                    status=CommandStatus.EXPIRED,
                                    detail="not started before it expired; nothing was done")
            try:
                result = await dispatch_to_controllers(self.ops, request)
            except ControllerBusy as exc:
                return CommandReply(id=command_id, op=request.op, ok=False,
                                    status=CommandStatus.BUSY,
                                    detail=str(exc))
            except GatewayError as exc:
                return CommandReply(id=command_id, op=request.op, ok=False,
                                    status=CommandStatus.REFUSED,
                                    detail=str(exc))
        dumped = result.model_dump(mode="json") if isinstance(result, BaseModel) else None
        ok = bool(getattr(result, "ok", True))
        return CommandReply(id=command_id, op=request.op, ok=ok,
                            status=CommandStatus.DONE if ok else CommandStatus.REFUSED,
                            detail=str(getattr(result, "detail", "") or request.op),
                            result=dumped)

    async def _install(self, node: str, entry: _Node, raw: bytes) -> CommandReply:
        """Home Assistant's update entity: install what is offered, with live progress."""
        op = "update_install"
        if raw.strip() != b"install":
            return CommandReply(op=op, ok=False, status=CommandStatus.INVALID,
                                detail="the update entity's payload is install")
        if op not in self.config.allowed_ops:
            return CommandReply(op=op, ok=False, status=CommandStatus.NOT_ALLOWED,
                                detail=f"{op} is not in [mqtt] allowed_ops")
        self._staged(node, entry)
        offer = entry.offer
        if offer is None:
            return CommandReply(op=op, ok=False, status=CommandStatus.REFUSED,
                                detail="no firmware is offered for this controller")
        if entry.installing:
            return CommandReply(op=op, ok=False, status=CommandStatus.BUSY,
                                detail="already installing")
        entry.installing, entry.percentage = True, 0
        self._dirty.add(node)
        self._changed.set()

        def progress(pct: int) -> None:
            if pct != entry.percentage:
                entry.percentage = max(0, min(100, pct))
                self._dirty.add(node)
                self._changed.set()

        try:
            if offer.source == "staged" and offer.file is not None:
                image = await asyncio.to_thread(read_image, offer.file)
                report = await self.ops.ota(Ota(address=entry.address, image=image),
                                            lambda p: progress(int(p.fraction * 100)))
                ok = report.result == "succeeded"
                detail = report.detail if isinstance(report, OtaReport) else ""
                result: Any = report.model_dump(mode="json") if isinstance(report, BaseModel) \
                    else None
            elif (install := self._offers.installer) is not None:
                outcome = await install(entry.address, lambda pct, _stage: progress(pct))
                ok = outcome.status == "succeeded"
                detail = outcome.reason or outcome.status
                result = {"status": outcome.status, "reason": outcome.reason,
                          "detail": outcome.detail}
            else:
                return CommandReply(op=op, ok=False, status=CommandStatus.REFUSED,
                                    detail="cloud updates are not configured")
        except ControllerBusy as exc:
            return CommandReply(op=op, ok=False, status=CommandStatus.BUSY, detail=str(exc))
        except GatewayError as exc:
            return CommandReply(op=op, ok=False, status=CommandStatus.REFUSED, detail=str(exc))
        finally:
            entry.installing, entry.percentage = False, None
            self._dirty.add(node)
            self._changed.set()
        if ok:
            entry.offer = None if offer.source == "cloud" else entry.offer
        status = CommandStatus.DONE if ok else CommandStatus.REFUSED
        return CommandReply(op=op, ok=ok, status=status, detail=detail or op, result=result)

    def _set_minutes(self, node: str, entry: _Node | None, channel: int | None,
                     raw: bytes) -> CommandReply | None:
        """A zone's run time: a setting, not an action, so a retained value is applied."""
        if entry is None or channel is None:
            return None
        try:
            minutes = parse_minutes(raw)
        except ValueError as exc:
            return CommandReply(ok=False, status=CommandStatus.INVALID, detail=str(exc))
        entry.minutes = {**(entry.minutes or {}), channel: minutes}
        entry.minutes_published = False
        self._dirty.add(node)
        self._changed.set()
        return None


# An event's type as the relays name it (gateway/relay/events.py): one topic level, no wildcard.
_EVENT_TYPE = re.compile(r"\A[a-z][a-z_]{0,63}\Z")
_NODE = re.compile(r"\A(?:[0-9]{6}|[0-9a-f]{12})\Z")


def _raw(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    return bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()


def command_ttl_s(message: aiomqtt.Message) -> float:
    """How long a command may wait to start: its MQTT 5 message expiry (what is left of it,
    as the broker forwards it) when the publisher set one, within COMMAND_TTL_S."""
    expiry = getattr(message.properties, "MessageExpiryInterval", None)
    if isinstance(expiry, int) and expiry >= 0:
        return min(float(expiry), COMMAND_TTL_S)
    return COMMAND_TTL_S


def refuses_v5(exc: aiomqtt.MqttError) -> bool:
    """A broker that answers an MQTT 5 CONNECT with "unacceptable protocol version" (3.1.1's
    code 1, or 5's 0x84)."""
    return isinstance(exc, aiomqtt.MqttCodeError) and getattr(exc.rc, "value", exc.rc) in (1, 0x84)


def event_message(topics: Topics, item: StoredItem) -> tuple[str, str] | None:
    """The topic and payload of an outbox event, or None when it cannot be one: every part of
    the topic is checked here, where a bad one would otherwise end the relay at publish."""
    try:
        body = json.loads(item.body)
    except ValueError:
        return None
    kind = body.get("event_type") if isinstance(body, dict) else None
    if not isinstance(kind, str) or not _EVENT_TYPE.match(kind) or not _NODE.match(
            item.controller):
        return None
    body.setdefault("event_id", item.key)
    return topics.event(item.controller, kind), json.dumps(body)


def _iso(at: float) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+00:00"

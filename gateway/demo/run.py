"""``awgw demo``: the product end to end on the virtual rig, started and stopped by the demo.

It starts the rig (three virtual controllers that water on a schedule), the cloud emulator, a
loopback MQTT broker and the real ``awgw daemon``; through the daemon's control socket it pairs
every controller and claims it for an emulated account; the daemon relays their state to the
cloud and the broker; one valve opens; a firmware release is published and a cloud job updates
one controller, with its progress on screen. ``DemoReport.as_json`` is the summary the README
and the tests rely on: ``paired``, ``connected``, ``cloud_events``, ``mqtt_messages``, and the
update's ``outcome`` and ``seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import structlog
from rich.console import Console
from rich.live import Live

from gateway.control.client import SocketOperations
from gateway.demo.hub import HubConfig, HubProcess
from gateway.demo.view import ViewModel, ota_line, render
from gateway.errors import GatewayError
from gateway.ops.models import Claim, ControllerState, GetState, LinkState, Pair, ValveOpen
from gateway.sim.broker import EmbeddedBroker, MosquittoBroker, free_port, local_broker
from gateway.sim.cloud import EmulatorServer, World
from gateway.sim.cloud.publish import publish_release
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig, RigOptions

log = structlog.get_logger(__name__)

DEMO_USER = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # the emulated account's; no real account is involved
BOARD = "arduino_nano_33_ble"
RELEASE = "3.2.0"
# A 60 kB image: ~2-3 s over the rig's BLE link model, then MCUboot's swap and the confirm.
IMAGE = make_image((3, 2, 0, 0), firmware_body("demo-release", 60_000))
# The rig's scanner sees every advertiser within one BlueZoo scan interval (1 s).
SCAN_WITHIN_S = 15.0
# The valve opens this long after pairing, and the cloud job comes this long after that, so
# the view shows the controllers settle first.
VALVE_AFTER_S = 2.0
JOB_AFTER_S = 4.0
# With --until-updated the demo ends this long after the update finished: the relays deliver
# what the update produced (its events, the new version's snapshot) within a snapshot period.
SETTLE_AFTER_UPDATE_S = 3.0
# The emulator's gatewayJobs poll interval for the demo (the real cloud says 60 s).
POLL_AFTER_S = 2.0
VIEW_EVERY_S = 0.5
STATE_WAIT_S = 2.0


@dataclass
class OtaRecord:
    address: str
    serial: str
    version: str = RELEASE
    outcome: str = "not_started"
    seconds: float | None = None
    progress_pct: int | None = None
    steps: int = 0


@dataclass
class DemoReport:
    paired: int = 0
    controllers: list[ControllerState] = field(default_factory=list)
    mqtt_messages: int = 0
    cloud_events: int = 0
    cloud_snapshots: dict[str, int] = field(default_factory=dict)
    event_types: list[str] = field(default_factory=list)
    duplicates: int = 0
    commands: list[dict[str, Any]] = field(default_factory=list)
    ota: OtaRecord | None = None
    started_at: float = field(default_factory=time.monotonic)
    broker: str = "mosquitto"
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        ota = self.ota
        return {
            "paired": self.paired,
            "connected": sum(1 for c in self.controllers if c.link is LinkState.CONNECTED),
            "fresh": sum(1 for c in self.controllers if c.fresh),
            "cloud_events": self.cloud_events, "cloud_snapshots": self.cloud_snapshots,
            "event_types": self.event_types, "duplicates": self.duplicates,
            "mqtt_messages": self.mqtt_messages, "broker": self.broker,
            "outcome": ota.outcome if ota else "not_started",
            "seconds": ota.seconds if ota else None,
            "ota": None if ota is None else {
                "address": ota.address, "serial": ota.serial, "version": ota.version,
                "outcome": ota.outcome, "seconds": ota.seconds,
                "progress_pct": ota.progress_pct, "progress_reports": ota.steps},
            "commands": self.commands,
            "controllers": [c.model_dump(mode="json") for c in self.controllers],
            "duration_s": round(time.monotonic() - self.started_at, 1),
            "error": self.error,
        }


class Demo:
    def __init__(self, controllers: int, duration: float | None, as_json: bool,
                 broker: str = "auto", until_updated: bool = False) -> None:
        self.count = controllers
        self.until_updated = until_updated
        self.broker_choice = broker
        self.duration = duration
        self.as_json = as_json
        self.report = DemoReport()
        self.view = ViewModel()
        self.world = World()
        self.world.poll_after_s = POLL_AFTER_S
        self.hub: HubProcess | None = None

    async def run(self) -> DemoReport:
        template = ControllerConfig(0, 0, "", schedule_every_s=15.0, time_scale=20.0,
                                    self_confirm_after_s=1.0)
        with tempfile.TemporaryDirectory(prefix="awgw-demo-") as tmp:
            self.view.phase = "starting the rig, the cloud emulator and the broker"
            async with Rig(RigOptions(controllers=self.count, template=template)) as rig, \
                    EmulatorServer(self.world) as cloud, self._broker() as broker:
                self.report.broker = ("amqtt (embedded)" if isinstance(broker, EmbeddedBroker)
                                      else "mosquitto")
                self.hub = HubProcess(Path(tmp), HubConfig(
                    bus_address=rig.bus_address, cloud_url=cloud.url,
                    client_id=self.world.client_id, broker_port=broker.port,
                    metrics_port=free_port(), max_links=max(3, self.count)))
                try:
                    await self._live(rig, cloud.url, broker.port)
                finally:
                    await self.hub.stop()
        return self.report

    def _broker(self) -> MosquittoBroker | EmbeddedBroker:
        if self.broker_choice == "embedded":
            return EmbeddedBroker()
        if self.broker_choice == "mosquitto":
            return MosquittoBroker()
        return local_broker()

    async def _live(self, rig: Rig, cloud_url: str, broker_port: int) -> None:
        console = Console(stderr=self.as_json, width=None if not self.as_json else 80)
        live = None if self.as_json else Live(render(self.view), console=console,
                                              refresh_per_second=4)
        with live if live is not None else contextlib.nullcontext():
            async with asyncio.TaskGroup() as tasks:
                viewer = tasks.create_task(self._refresh_view(live), name="demo view")
                counter = tasks.create_task(self._count_mqtt(broker_port), name="mqtt counter")
                try:
                    await self._script(rig, cloud_url, tasks)
                except (GatewayError, OSError, RuntimeError, httpx.HTTPError) as exc:
                    self.report.error = str(exc)
                    log.warning("demo_failed", error=str(exc))  # the summary says it too
                finally:
                    await self._snapshot()
                    viewer.cancel()
                    counter.cancel()

    async def _script(self, rig: Rig, cloud_url: str, tasks: asyncio.TaskGroup) -> None:
        assert self.hub is not None
        deadline = None if self.duration is None else self.report.started_at + self.duration
        self.world.add_user(DEMO_USER, DEMO_PASSWORD)
        for handle in rig.controllers:
            self.world.add_device(handle.config.serial_number)
        self.view.phase = "linking the gateway to the emulated cloud account"
        await self.hub.link_cloud(DEMO_USER, DEMO_PASSWORD)
        self.view.phase = "starting awgw daemon"
        await self.hub.start()
        ops = self.hub.ops
        self.view.phase = "pairing"
        wanted = {h.address: h.config.serial_number for h in rig.controllers}
        async with asyncio.timeout(SCAN_WITHIN_S):
            while {e.address for e in await ops.scan()} < set(wanted):  # noqa: ASYNC110
                await asyncio.sleep(0.5)
        for address, serial in wanted.items():
            await ops.pair(Pair(address=address))
            self.report.paired += 1
            await ops.claim(Claim(serial=serial))
        self.view.phase = "relaying to the cloud and MQTT"
        addresses = list(wanted)
        first, second = addresses[0], addresses[-1]
        await asyncio.sleep(VALVE_AFTER_S)
        started = time.monotonic()
        result = await ops.valve_open(ValveOpen(address=second, channel=2, minutes=1))
        self.report.commands.append({"address": second, "command": "valve 2 open 1 min",
                                     "status": result.status,
                                     "seconds": round(time.monotonic() - started, 3)})
        await asyncio.sleep(JOB_AFTER_S)
        self.view.phase = f"cloud job: update {first} to {RELEASE}"
        update = tasks.create_task(self._cloud_update(cloud_url, first, wanted[first]),
                                   name="demo cloud update")
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self.until_updated:
            await asyncio.wait({update}, timeout=remaining)
            if update.done():
                # What the update produced (its events, the new version) reaches the relays.
                await asyncio.sleep(SETTLE_AFTER_UPDATE_S)
        elif remaining is None:
            await asyncio.Event().wait()  # until Ctrl-C
        else:
            await asyncio.sleep(remaining)

    async def _cloud_update(self, cloud_url: str, address: str, serial: str) -> None:
        record = OtaRecord(address=address, serial=serial)
        self.report.ota = record
        async with httpx.AsyncClient() as http:
            await publish_release(http, cloud_url, self.world.admin_token, RELEASE, IMAGE,
                                  board=BOARD)
        user = next(iter(self.world.users.values()))
        job = self.world.create_job(user, {"serial": serial, "type": "ota_update",
                                           "ota": {"version": RELEASE, "board": BOARD}})
        started = time.monotonic()
        record.outcome = "queued"
        while True:
            current = self.world.jobs[job.job_id]
            record.outcome = current.status
            record.progress_pct = current.progress_pct
            record.steps = len(self.world.progress.get(job.job_id, []))
            record.seconds = round(time.monotonic() - started, 1)
            if current.status in ("succeeded", "failed", "rejected", "cancelled"):
                self.view.phase = f"update {current.status} in {record.seconds} s"
                return
            await asyncio.sleep(0.25)

    async def _count_mqtt(self, port: int) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="awgw-demo-view") as c:
                    await c.subscribe("#")
                    async for _message in c.messages:
                        self.report.mqtt_messages += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(1.0)

    async def _refresh_view(self, live: Live | None) -> None:
        while True:
            await self._snapshot()
            if live is not None:
                live.update(render(self.view))
            await asyncio.sleep(VIEW_EVERY_S)

    async def _snapshot(self) -> None:
        """The view and the report from the daemon (status, each controller's state) and from
        what the emulated cloud applied."""
        applied = self.world.applied
        self.report.cloud_events = len(applied.events)
        self.report.cloud_snapshots = {s: len(v) for s, v in applied.snapshots.items()}
        self.report.event_types = sorted({e["type"] for e in applied.events})
        self.report.duplicates = applied.duplicate_events
        self.view.cloud_events = self.report.cloud_events
        self.view.mqtt_messages = self.report.mqtt_messages
        hub = self.hub
        if hub is None or not hub.socket_path.is_socket():
            return
        ops = SocketOperations(hub.socket_path)
        try:
            status = await ops.status()
            devices = await ops.devices()
        except GatewayError:
            return
        self.view.status = status
        known = {c.address: c for c in self.report.controllers}
        states = []
        for device in devices:
            try:
                # A controller not yet fresh gets an urgent visit first: the view does not
                # wait for it, and shows what it had.
                async with asyncio.timeout(STATE_WAIT_S):
                    states.append(await ops.state(GetState(address=device.address)))
            except (GatewayError, TimeoutError):
                if device.address in known:  # busy with its update: the update line shows it
                    states.append(known[device.address].model_copy(
                        update={"link": device.link or known[device.address].link}))
        self.report.controllers = self.view.controllers = states
        if status.updates:
            u = status.updates[0]
            self.view.ota_line = ota_line(u.address, u.phase, u.offset, u.total,
                                          u.rate_bytes_per_s)
        elif self.report.ota is not None and self.report.ota.seconds is not None:
            ota = self.report.ota
            self.view.ota_line = (f"update {ota.address[-8:]} to {ota.version}: {ota.outcome}"
                                  f" after {ota.seconds} s")


async def run_demo(controllers: int, duration: float | None, as_json: bool,
                   broker: str = "auto", until_updated: bool = False) -> DemoReport:
    return await Demo(controllers, duration, as_json, broker, until_updated).run()


def print_report(report: DemoReport) -> None:
    print(json.dumps(report.as_json()), flush=True)


"""``awgw demo``: the gateway's main job on the virtual rig, shown live.

Starts the rig (virtual controllers that water on a schedule) and the cloud emulator, scans and
pairs every controller through the gateway's own agent, links the gateway to an emulated
account and claims the controllers, runs the real connection manager (supervisors, slot
scheduler, sessions) and the cloud relay in this process, sends one valve command, and shows
the state store as a live table. ``DemoReport`` is the JSON summary the README and the tests
rely on; its ``cloud`` part is what the emulated cloud applied.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cloud_client import CloudClient, CognitoAuth, CognitoSettings, sign_in
from firmware_bridge.link.outcome import CommandOutcome
from firmware_bridge.link.state import DecodeProblem, Source, StateEvent
from gateway.config import CloudConfig, GatewayConfig, LinkPolicy, LinkSettings
from gateway.link.manager import ConnectionManager
from gateway.link.scanner import discover
from gateway.ops.daemon import SupervisedHistory
from gateway.ops.models import ControllerState, LinkState
from gateway.ops.radio import pair_on_radio
from gateway.relay.cloud import OUTBOX_FILE, CloudRelay
from gateway.relay.feed import StateFeed
from gateway.sim.cloud import EmulatorServer, World
from gateway.sim.controller.device import ControllerConfig
from gateway.sim.rig import Rig, RigOptions
from gateway.store.credentials import FileTokenStore, gateway_id
from gateway.store.outbox import Outbox
from gateway.store.registry import Registry

log = structlog.get_logger(__name__)

ADAPTER = "hci0"
# Scanning on the rig sees every advertiser within one BlueZoo scan interval (1 s).
SCAN_TIMEOUT_S = 5.0
# The demo's valve command goes out once the links are up, to show a confirmed command.
COMMAND_AFTER_S = 4.0
REFRESH_PERIOD_S = 10.0
# The demo's cloud: a snapshot per controller every few seconds, so the summary shows them.
CLOUD_SNAPSHOT_PERIOD_S = 3.0
DEMO_USER = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # the emulated account's; no real account is involved


class DemoController(BaseModel):
    """One controller as the demo shows it: the typed state every caller reads, and what the
    demo counted of it."""

    state: ControllerState
    notifications: int

    @property
    def connected(self) -> bool:
        return self.state.link is LinkState.CONNECTED


class DemoCommand(BaseModel):
    address: str
    command: str
    status: str
    seconds: float


@dataclass
class DemoReport:
    manager: ConnectionManager | None = None
    notifications: dict[str, int] = field(default_factory=dict)
    commands: list[DemoCommand] = field(default_factory=list)
    final: dict[str, Any] | None = None  # taken just before shutdown
    world: World | None = None
    relay: CloudRelay | None = None

    def controllers(self) -> list[DemoController]:
        manager = self.manager
        if manager is None:
            return []
        return [DemoController(state=manager.store.snapshot(address).model_copy(
                    update={"policy": supervisor.policy}),
                    notifications=self.notifications.get(address, 0))
                for address, supervisor in sorted(manager.supervisors.items())]

    def as_json(self) -> dict[str, Any]:
        """The summary `awgw demo --json` prints: counts, the commands, and per controller its
        ControllerState with ``notifications`` and ``connected`` added."""
        if self.final is not None:
            return self.final
        controllers = self.controllers()
        details = [{**c.state.model_dump(mode="json"), "notifications": c.notifications,
                    "connected": c.connected} for c in controllers]
        return {"controllers": len(controllers),
                "connected": sum(1 for c in controllers if c.connected),
                "fresh": sum(1 for c in controllers if c.state.fresh),
                "commands": [c.model_dump(mode="json") for c in self.commands],
                "cloud": self.cloud_summary(),
                "details": details}

    def cloud_summary(self) -> dict[str, Any] | None:
        if self.world is None or self.relay is None:
            return None
        applied = self.world.applied
        types = sorted({e["type"] for e in applied.events})
        return {"mode": self.relay.mode.value if self.relay.mode else None,
                "delivered": self.relay.counters.delivered,
                "snapshots": {s: len(v) for s, v in applied.snapshots.items()},
                "events": len(applied.events), "event_types": types,
                "duplicates": applied.duplicate_events,
                "outbox_depth": self.relay.outbox.stats().depth}


def _table(report: DemoReport) -> Table:
    table = Table(title="AutoWatering gateway on the virtual rig")
    for col in ("address", "fw", "link", "fresh", "valves open", "status", "flow l/min",
                "task", "alarm", "notifs"):
        table.add_column(col)
    for controller in report.controllers():
        state = controller.state
        open_ = ",".join(str(v.channel) for v in state.valves if v.open) or "-"
        task = state.current_task
        task_text = "idle" if task is None else (
            f"ch{task.channel} {task.status} {task.current}/{task.target}")
        table.add_row(state.address, state.firmware_version or "?", state.link.value,
                      "yes" if state.fresh else "no", open_,
                      state.system_status.name if state.system_status else "?",
                      str(state.flow.litres_per_minute) if state.flow else "-", task_text,
                      state.alarm.name if state.alarm else "?", str(controller.notifications))
    return table


async def _count(report: DemoReport, queue: asyncio.Queue[StateEvent]) -> None:
    while True:
        event = await queue.get()
        if not isinstance(event, DecodeProblem) and event.source is Source.NOTIFY:
            report.notifications[event.address] = report.notifications.get(event.address, 0) + 1


async def _command(report: DemoReport, manager: ConnectionManager, address: str) -> None:
    await asyncio.sleep(COMMAND_AFTER_S)
    started = time.monotonic()
    outcome: CommandOutcome = await manager.command(
        address, "demo: water zone 6 for 1 min", lambda s: s.open_valve(6, 1))
    report.commands.append(DemoCommand(address=address, command="valve 6 open 1 min",
                                       status=outcome.status.value,
                                       seconds=round(time.monotonic() - started, 3)))


async def run_demo(controllers: int, duration: float | None, as_json: bool) -> DemoReport:
    template = ControllerConfig(0, 0, "", schedule_every_s=15.0, time_scale=20.0)
    report = DemoReport()
    with tempfile.TemporaryDirectory(prefix="awgw-demo-") as state_dir:
        async with Rig(RigOptions(controllers=controllers, template=template)) as rig:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = rig.bus_address
            config = GatewayConfig(state_dir=Path(state_dir), link=LinkSettings(
                adapter=ADAPTER, max_links=max(3, controllers),
                default_policy=LinkPolicy.KEEP, refresh_period_s=REFRESH_PERIOD_S))
            registry = Registry(config.registry_path)
            for sighting in await discover(ADAPTER, SCAN_TIMEOUT_S):
                await pair_on_radio(config, registry, sighting.address, None)
            manager = ConnectionManager(config, registry)
            report.manager = manager
            console = Console(stderr=as_json)
            world = World()
            async with EmulatorServer(world) as server, asyncio.TaskGroup() as group:
                relay, feed = await _link_cloud(config, registry, manager, world, server.url)
                report.world, report.relay = world, relay
                tasks = [group.create_task(manager.run(), name="connection manager"),
                         group.create_task(_count(report, manager.store.subscribe()),
                                           name="count notifications"),
                         group.create_task(relay.run(), name="cloud relay"),
                         group.create_task(feed.run(), name="state feed")]
                if registry.all():
                    tasks.append(group.create_task(
                        _command(report, manager, registry.all()[0].address),
                        name="demo command"))
                try:
                    if as_json:
                        await _sleep(duration)
                    else:
                        with Live(_table(report), console=console,
                                  refresh_per_second=4) as live:
                            deadline = None if duration is None else time.monotonic() + duration
                            while deadline is None or time.monotonic() < deadline:
                                live.update(_table(report))
                                await asyncio.sleep(0.25)
                finally:
                    report.final = report.as_json()
                    for task in tasks:
                        task.cancel()
    return report


async def _link_cloud(config: GatewayConfig, registry: Registry, manager: ConnectionManager,
                      world: World, url: str) -> tuple[CloudRelay, StateFeed]:
    """An emulated account with the rig's controllers provisioned; the gateway signs in and
    claims them, as `awgw cloud link` and `awgw claim` would."""
    world.add_user(DEMO_USER, DEMO_PASSWORD)
    for record in registry.all():
        if record.serial:
            world.add_device(record.serial)
    store = FileTokenStore(config.cloud_dir)
    settings = CognitoSettings(url + "/_cognito/", world.client_id)
    auth = CognitoAuth(settings, store)
    client = CloudClient(url, auth)
    auth.link(await sign_in(client.http, settings, DEMO_USER, DEMO_PASSWORD))
    for record in registry.all():
        if record.serial:
            await client.claim_device(record.serial)
    cloud = CloudConfig(enabled=True, base_url=url, cognito_endpoint=url + "/_cognito/",
                        client_id=world.client_id, snapshot_period_s=CLOUD_SNAPSHOT_PERIOD_S)
    gid = gateway_id(config.cloud_dir)
    relay = CloudRelay(cloud, gid, Outbox(config.state_dir / OUTBOX_FILE, gid), client, auth,
                       serials=lambda: [r.serial for r in registry.all() if r.serial])
    feed = StateFeed(manager.store, registry, [relay], SupervisedHistory(manager),
                     cloud.history_period_s)
    return relay, feed


async def _sleep(duration: float | None) -> None:
    """Run for ``duration`` seconds, or until cancelled (Ctrl-C) when there is none."""
    if duration is None:
        await asyncio.Event().wait()
    else:
        await asyncio.sleep(duration)


def print_report(report: DemoReport) -> None:
    print(json.dumps(report.as_json()), flush=True)

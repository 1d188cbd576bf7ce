"""``awgw demo``: the virtual rig, discovered and watched by real bleak, shown live.

First version: scan for AutoWatering controllers on hci0, connect to each, read DIS and the
Bulk Sync snapshot, subscribe to the P0 notifications and keep a live table. Later issues swap
the per-controller watcher for the gateway's own device sessions and add relay and OTA views;
``DemoReport`` is the JSON the CI and the README rely on.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from firmware_bridge.errors import DecodeError
from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import (
    AlarmStatus,
    BulkSync,
    CurrentTask,
    FlowSensor,
    SystemStatus,
    ValveControl,
)
from gateway.sim.controller.device import ControllerConfig
from gateway.sim.rig import Rig, RigOptions

log = structlog.get_logger(__name__)

ADAPTER = "hci0"
# Scanning on the rig sees every advertiser within one BlueZoo scan interval (1 s).
SCAN_TIMEOUT_S = 5.0
# bleak's own default; connecting to a live virtual controller takes ~50 ms.
CONNECT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 2.0


@dataclass
class ControllerView:
    address: str
    firmware: str = "?"
    connected: bool = False
    valves: int = 0
    status: str = "?"
    flow_pps: int = 0
    task: str = "idle"
    alarm: str = "none"
    notifications: int = 0
    decode_errors: int = 0
    last_update: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address, "firmware_version": self.firmware,
            "connected": self.connected,
            "valves": [{"channel": ch, "open": bool(self.valves >> ch & 1)} for ch in range(8)],
            "system_status": self.status, "flow_pps": self.flow_pps, "task": self.task,
            "alarm": self.alarm, "notifications": self.notifications,
            "decode_errors": self.decode_errors,
        }


@dataclass
class DemoReport:
    controllers: list[ControllerView] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "controllers": len(self.controllers),
            "connected": sum(1 for c in self.controllers if c.connected),
            "details": [c.as_json() for c in self.controllers],
        }


class Watcher:
    """Keeps one controller connected and its view fresh."""

    def __init__(self, view: ControllerView) -> None:
        self.view = view

    def _on_notify(self, uuid: str, data: bytes) -> None:
        view = self.view
        view.notifications += 1
        view.last_update = time.time()
        try:
            if uuid == uuids.VALVE_CONTROL:
                valve = ValveControl.decode(data)
                if not valve.is_master:
                    bit = 1 << valve.channel_id
                    view.valves = view.valves | bit if valve.is_open else view.valves & ~bit
            elif uuid == uuids.SYSTEM_STATUS:
                view.status = _name(SystemStatus.decode(data).code)
            elif uuid == uuids.FLOW_SENSOR:
                view.flow_pps = FlowSensor.decode(data).pulses_per_second
            elif uuid == uuids.CURRENT_TASK:
                view.task = _task_text(CurrentTask.decode(data))
            elif uuid == uuids.ALARM_STATUS:
                view.alarm = _name(AlarmStatus.decode(data).code)
        except DecodeError as exc:
            view.decode_errors += 1
            log.warning("notification_decode_failed", address=view.address, uuid=uuid,
                        error=str(exc))

    def _handler(self, uuid: str) -> Callable[[Any, bytearray], None]:
        def handle(_char: Any, data: bytearray) -> None:
            self._on_notify(uuid, bytes(data))
        return handle

    async def run(self) -> None:
        view = self.view
        while True:
            try:
                async with BleakClient(view.address, bluez={"adapter": ADAPTER},
                                       timeout=CONNECT_TIMEOUT_S) as client:
                    await self._session(client)
            except (BleakError, TimeoutError, EOFError) as exc:
                log.info("controller_link_lost", address=view.address, error=str(exc))
            view.connected = False
            await asyncio.sleep(1.0)

    async def _session(self, client: BleakClient) -> None:
        view = self.view
        view.firmware = (await client.read_gatt_char(uuids.DIS_FIRMWARE_REVISION)).decode(
            errors="replace")
        for uuid in (uuids.ALARM_STATUS, uuids.SYSTEM_STATUS, uuids.CURRENT_TASK,
                     uuids.VALVE_CONTROL, uuids.FLOW_SENSOR):
            await client.start_notify(uuid, self._handler(uuid))
        view.connected = True
        while client.is_connected:
            bulk = BulkSync.decode(await client.read_gatt_char(uuids.BULK_SYNC))
            view.valves = bulk.valve_states
            view.flow_pps = bulk.flow_rate_raw
            view.status = _name(SystemStatus.decode(
                await client.read_gatt_char(uuids.SYSTEM_STATUS)).code)
            view.task = _task_text(CurrentTask.decode(
                await client.read_gatt_char(uuids.CURRENT_TASK)))
            view.last_update = time.time()
            await asyncio.sleep(POLL_INTERVAL_S)


def _name(value: object) -> str:
    return getattr(value, "name", str(value))


def _task_text(task: CurrentTask) -> str:
    if task.idle:
        return "idle"
    state = _name(task.status).lower()
    return f"ch{task.channel_id} {state} {task.current_value}/{task.target_value}"


def _table(report: DemoReport) -> Table:
    table = Table(title="AutoWatering controllers (virtual rig)")
    for col in ("address", "fw", "link", "valves open", "status", "flow pps", "task", "alarm",
                "notifs"):
        table.add_column(col)
    for c in report.controllers:
        open_ = ",".join(str(ch) for ch in range(8) if c.valves >> ch & 1) or "-"
        table.add_row(c.address, c.firmware, "up" if c.connected else "down", open_, c.status,
                      str(c.flow_pps), c.task, c.alarm, str(c.notifications))
    return table


async def run_demo(controllers: int, duration: float | None, as_json: bool) -> DemoReport:
    template = ControllerConfig(0, 0, "", schedule_every_s=15.0, time_scale=20.0)
    report = DemoReport()
    async with Rig(RigOptions(controllers=controllers, template=template)) as rig:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = rig.bus_address
        found = await BleakScanner.discover(timeout=SCAN_TIMEOUT_S, return_adv=True,
                                            service_uuids=[uuids.IRRIGATION_SERVICE],
                                            bluez={"adapter": ADAPTER})
        addresses = sorted(a for a, (_d, adv) in found.items()
                           if (adv.local_name or "").startswith(uuids.NAME_PREFIX))
        report.controllers = [ControllerView(a) for a in addresses]
        console = Console(stderr=as_json)
        async with asyncio.TaskGroup() as group:
            watchers = [group.create_task(Watcher(v).run(), name=f"watch-{v.address}")
                        for v in report.controllers]
            try:
                if as_json:
                    await _sleep(duration)
                else:
                    with Live(_table(report), console=console, refresh_per_second=4) as live:
                        deadline = None if duration is None else time.monotonic() + duration
                        while deadline is None or time.monotonic() < deadline:
                            live.update(_table(report))
                            await asyncio.sleep(0.25)
            finally:
                for task in watchers:
                    task.cancel()
    return report


async def _sleep(duration: float | None) -> None:
    """Run for ``duration`` seconds, or until cancelled (Ctrl-C) when there is none."""
    if duration is None:
        await asyncio.Event().wait()
    else:
        await asyncio.sleep(duration)


def print_report(report: DemoReport) -> None:
    print(json.dumps(report.as_json()), flush=True)

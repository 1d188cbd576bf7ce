"""The connection manager: scanner, slot scheduler, state store and one supervisor per paired
controller, run as one structured task group."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from firmware_bridge.errors import PeerNotFound
from firmware_bridge.link.gatt_link import BleakGattLink, GattLink
from firmware_bridge.link.outcome import CommandOutcome
from gateway import bluez
from gateway.clock import Clock, LoopClock
from gateway.config import GatewayConfig
from gateway.errors import UnknownController
from gateway.link.scanner import Scanner
from gateway.link.scheduler import ScanGate, SlotScheduler
from gateway.link.supervisor import CommandFn, Connector, Repairer, Supervisor
from gateway.ops.models import LinkState
from gateway.store.registry import ControllerRecord, Registry, normalise_address
from gateway.store.state import StateStore
from gateway.supervise import Supervision

log = structlog.get_logger(__name__)


class ConnectionManager:
    def __init__(self, config: GatewayConfig, registry: Registry, *,
                 connector: Connector | None = None, repairer: Repairer | None = None,
                 scanner: Scanner | None = None, supervision: Supervision | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.settings = config.link
        self.registry = registry
        self.gate = ScanGate()
        self.scheduler = SlotScheduler(self.settings.max_links, self.gate)
        self.store = StateStore(stale_after_s=2 * self.settings.refresh_period_s)
        self.scanner = scanner or Scanner(self.settings.adapter, self.gate,
                                          watchdog_s=self.settings.scan_watchdog_s,
                                          expecting=self._expecting, on_seen=self._sighted)
        self.connector = connector or self._bleak_connect
        self.repairer = repairer
        self.supervisors: dict[str, Supervisor] = {}
        # Each supervisor is a guarded part of its own: a bug in one costs that controller a
        # restart with backoff, never the other controllers or the daemon.
        self.clock = clock or LoopClock()
        self.supervision = supervision or Supervision(self.clock)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()

    async def _bleak_connect(self, address: str, timeout_s: float,
                             on_disconnect: Callable[[], None]) -> GattLink:
        device = self.scanner.device(address)
        if device is None:
            # Not advertising: perhaps because BlueZ still holds a link an earlier run of the
            # daemon made (the supervisor asking holds none). Released, it advertises again.
            await bluez.release_orphan(self.settings.adapter, address, self.clock)
        if device is not None:
            try:
                return await BleakGattLink.connect(device, adapter=self.settings.adapter,
                                                   timeout_s=timeout_s,
                                                   on_disconnect=on_disconnect)
            except PeerNotFound:
                self.scanner.forget(address)  # BlueZ removed the object since the sighting
        return await BleakGattLink.connect(address, adapter=self.settings.adapter,
                                           timeout_s=timeout_s, on_disconnect=on_disconnect)

    def _sighted(self, address: str) -> None:
        supervisor = self.supervisors.get(address)
        if supervisor is not None:
            supervisor.sighted()

    def _expecting(self) -> bool:
        """The watchdog only cares while some controller is wanted but not connected."""
        return any(s.state is not LinkState.CONNECTED for s in self.supervisors.values())

    async def run(self) -> None:
        """The scanner and every supervisor; restartable: a restart after a crash starts the
        supervisors it already had again, with the state they kept."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self.scanner.run(), name="scanner")
                for record in self.registry.all():
                    self.add(record)
                for supervisor in self.supervisors.values():
                    self._start(supervisor)
                self.ready.set()
                await asyncio.Event().wait()  # until cancelled by the daemon's shutdown
        finally:
            self._group = None
            self._tasks.clear()

    def add(self, record: ControllerRecord) -> Supervisor:
        if record.address in self.supervisors:
            return self.supervisors[record.address]
        supervisor = Supervisor(
            record.address, settings=self.settings,
            policy=record.policy or self.settings.default_policy, scheduler=self.scheduler,
            store=self.store, registry=self.registry, connector=self.connector,
            repairer=self.repairer, clock=self.clock)
        self.supervisors[record.address] = supervisor
        self._start(supervisor)
        return supervisor

    def _start(self, supervisor: Supervisor) -> None:
        address = supervisor.address
        if self._group is None or address in self._tasks:
            return
        self._tasks[address] = self._group.create_task(
            self.supervision.guard(f"supervisor {address}", supervisor.run,
                                   on_crash=supervisor.crashed),
            name=f"supervisor {address}")

    async def remove(self, address: str) -> None:
        address = normalise_address(address)
        self.scanner.forget(address)
        self.supervisors.pop(address, None)
        task = self._tasks.pop(address, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.supervision.forget(f"supervisor {address}")

    def supervisor(self, address: str) -> Supervisor:
        address = normalise_address(address)
        supervisor = self.supervisors.get(address)
        if supervisor is None:
            raise UnknownController(f"{address} is not a paired controller "
                                    f"(pair it first: awgw pair {address})")
        return supervisor

    async def command(self, address: str, name: str, run: CommandFn) -> CommandOutcome:
        return await self.supervisor(address).submit(name, run)

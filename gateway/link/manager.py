"""The connection manager: scanner, slot scheduler, state store and one supervisor per paired
controller, run as one structured task group."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from habluetooth import BluetoothManager

from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.link.outcome import CommandOutcome
from gateway.bluez.probe import AdapterProbe
from gateway.clock import Clock, LoopClock
from gateway.config import GatewayConfig
from gateway.errors import UnknownController
from gateway.link.radios.adapter import AdapterRadio
from gateway.link.radios.base import Radio
from gateway.link.radios.esphome import EsphomeRadio
from gateway.link.radios.fleet import RadioSet
from gateway.link.radios.stack import ProxyStack
from gateway.link.scanner import Scanner
from gateway.link.scheduler import ScanGate
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
        """``scanner`` and ``connector`` replace the first adapter's BlueZ scanner and every
        radio's connect (tests); the path choice still runs over them."""
        self.config = config
        self.settings = config.link
        self.registry = registry
        self.store = StateStore(stale_after_s=2 * self.settings.refresh_period_s)
        # Each supervisor is a guarded part of its own: a bug in one costs that controller a
        # restart with backoff, never the other controllers or the daemon.
        self.clock = clock or LoopClock()
        self.supervision = supervision or Supervision(self.clock)
        adapters = self.settings.local_adapters
        self.gate = ScanGate()
        self.scanner = scanner or self._scanner(adapters[0].name, self.gate)
        # With other radios to fail over to, each adapter watches that BlueZ still has it;
        # a hub with one adapter has the daemon's radio watchdog (gateway/daemon/health.py).
        several = len(adapters) + len(config.radios.esphome) > 1

        def probe(adapter: str) -> AdapterProbe | None:
            return AdapterProbe(adapter) if several else None

        radios: list[Radio] = [AdapterRadio(adapters[0], self.scanner, self.gate, self.clock,
                                            probe(adapters[0].name))]
        for adapter in adapters[1:]:
            gate = ScanGate()
            radios.append(AdapterRadio(adapter, self._scanner(adapter.name, gate), gate,
                                       self.clock, probe(adapter.name)))
        self.stack = ProxyStack(self._sighted) if config.radios.esphome else None
        for proxy in config.radios.esphome:
            radios.append(EsphomeRadio(proxy, self._proxy_manager, self.clock))
        self.radios = RadioSet(radios, registry, self.clock)
        # What supervisors wait on and connect through: each radio's slots, the chosen path.
        self.scheduler = self.radios
        self.connector: Connector = self.radios.connect
        if connector is not None:
            radio_set, fake = self.radios, connector

            async def through(address: str, timeout_s: float,
                              on_disconnect: Callable[[], None]) -> GattLink:
                return await radio_set.through(radio_set.radio_of(address), address,
                                               lambda: fake(address, timeout_s, on_disconnect))

            self.connector = through
        self.repairer = repairer
        self.supervisors: dict[str, Supervisor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()

    def _scanner(self, adapter: str, gate: ScanGate) -> Scanner:
        return Scanner(adapter, gate, watchdog_s=self.settings.scan_watchdog_s,
                       expecting=self._expecting, on_seen=self._sighted)

    def _proxy_manager(self) -> BluetoothManager:
        assert self.stack is not None  # proxies exist only with their stack
        return self.stack.manager

    def _sighted(self, address: str) -> None:
        supervisor = self.supervisors.get(address)
        if supervisor is not None:
            supervisor.sighted()

    async def _watch_paths(self) -> None:
        supervisors = self.supervisors
        await self.radios.watch_paths(
            lambda: [a for a, s in supervisors.items() if s.waiting_for_path],
            self._sighted)

    def _expecting(self) -> bool:
        """The watchdog only cares while some controller is wanted but not connected."""
        return any(s.state is not LinkState.CONNECTED for s in self.supervisors.values())

    async def run(self) -> None:
        """Every radio and every supervisor; restartable: a restart after a crash starts the
        supervisors it already had again, with the state they kept."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.stack is not None:
                    await stack.enter_async_context(self.stack.running())
                group = await stack.enter_async_context(asyncio.TaskGroup())
                self._group = group
                for radio in self.radios.radios.values():
                    # A radio's loop ending in a bug costs that radio a restart, never the
                    # others (issue 19: every other radio keeps serving).
                    group.create_task(self.supervision.guard(f"radio {radio.name}", radio.run),
                                      name=f"radio {radio.name}")
                group.create_task(self.supervision.guard("path watch", self._watch_paths),
                                  name="path watch")
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
            repairer=self.repairer, clock=self.clock, on_stranded=self.radios.stranded)
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

    async def command(self, address: str, name: str, run: CommandFn, *,
                      rerun: CommandFn | None = None) -> CommandOutcome:
        """``rerun``: what to run on the next link if the link ends after ``run``'s write
        was sent (see ``Supervisor.submit``)."""
        return await self.supervisor(address).submit(name, run, rerun=rerun)

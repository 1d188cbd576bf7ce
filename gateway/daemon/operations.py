"""The operations answered by the running daemon, through its supervisors, so the daemon stays
the only owner of the radio: ``ControllerOperations`` (what the relays use too) and
``HubOperations`` (everything the control socket answers)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from firmware_bridge.gatt.history import DetailedEntry, HistoryRateLimited
from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.link.outcome import CommandOutcome, OutcomeStatus
from firmware_bridge.link.session import ControllerSession
from firmware_bridge.ota.outcome import Progress
from firmware_bridge.smp.transport import FrameTransport
from gateway.config import GatewayConfig
from gateway.errors import PairingError
from gateway.link.decision import Action
from gateway.link.manager import ConnectionManager
from gateway.link.radio import (
    list_devices,
    pair_on_radio,
    pair_through_proxy,
    pin_kind,
    repair_on_radio,
    result_of,
    unpair_on_radio,
    valve_command,
    valve_rerun,
)
from gateway.link.scanner import SCAN_TIMEOUT_S
from gateway.link.scheduler import Lease, Priority
from gateway.ops.health import CloudStatus, HubStatus, RadioKind
from gateway.ops.models import (
    Claim,
    ClaimResult,
    CommandResult,
    ControllerState,
    DeviceEntry,
    GetState,
    Ota,
    OtaReport,
    Pair,
    Refresh,
    ScanEntry,
    Unclaim,
    Unpair,
    ValveClose,
    ValveOpen,
)
from gateway.ops.protocol import ProgressFn
from gateway.ota.service import OtaService
from gateway.relay import account
from gateway.relay.account import CloudAccount
from gateway.relay.cloud import CloudRelay
from gateway.relay.mqtt.relay import MqttRelay
from gateway.store.registry import Registry, normalise_address


@dataclass(frozen=True)
class WaysOut:
    """The relays that carry state out of the house, as the composition root built them."""

    cloud: CloudRelay | None = None
    account: CloudAccount | None = None
    mqtt: MqttRelay | None = None


class ControllerOperations:
    """What the daemon does to its controllers, through their supervisors: the part of the
    operations the relays use too (MQTT commands, cloud jobs)."""

    def __init__(self, config: GatewayConfig, registry: Registry,
                 manager: ConnectionManager) -> None:
        self.config = config
        self.registry = registry
        self.manager = manager
        self.ota_service = OtaService(config, registry)
        # Updates running now (their last progress), and what updates have done so far.
        self.updates: dict[str, Progress] = {}
        self.ota_bytes = 0
        self.ota_outcomes: collections.Counter[str] = collections.Counter()

    async def scan(self) -> list[ScanEntry]:
        paired = {r.address for r in self.registry.all()}
        if not self.manager.scanner.present():
            await asyncio.sleep(SCAN_TIMEOUT_S)  # the scanner runs anyway: give it one window
        return [ScanEntry(address=s.address, name=s.name, rssi=s.rssi,
                          paired=s.address in paired) for s in self.manager.scanner.present()]

    async def pair(self, request: Pair) -> DeviceEntry:
        address = normalise_address(request.address)
        kind = pin_kind(self.config, request.radio, request.passkey)
        radios = self.manager.radios
        radio = radios.radios[request.radio] if request.radio else radios.local
        async with radio.scheduler.slot(address, Priority.URGENT, kept=False) as lease, \
                radio.scheduler.connect_turn(lease):  # a person waits: before the background
            if kind is RadioKind.PROXY:
                entry = await pair_through_proxy(self.config, self.registry, radio, address,
                                                 board=request.board,
                                                 ota_policy=request.ota_policy)
            else:
                entry = await pair_on_radio(self.config, self.registry, address,
                                            request.passkey, board=request.board,
                                            ota_policy=request.ota_policy, adapter=radio.name,
                                            pin=request.radio)
        record = self.registry.get(address)
        supervisor = self.manager.add(record)
        supervisor.bond_reset()
        return entry

    async def repair(self, address: str, action: Action = Action.REPAIR_BOND) -> None:
        """The supervisor's one automatic attempt after an authentication failure, and the GATT
        cache reset: the radio of the last connect forgets the bond (or the cached services);
        a hub adapter's BlueZ device is removed and paired again (Just Works) through it. The
        pin stays; a passkey needs a person."""
        record = self.registry.get(address)
        if record.passkey:
            raise PairingError(f"{address} was bonded with a passkey, which only a person can "
                               f"enter: awgw pair {address} --passkey NNNNNN")
        adapter = await self.manager.radios.reset(address, action)
        if adapter is None:
            return
        async with adapter.scheduler.connect_turn():
            await repair_on_radio(self.config, self.registry, address, adapter=adapter.name,
                                  pin=record.radio)

    async def unpair(self, request: Unpair) -> DeviceEntry:
        address = normalise_address(request.address)
        await self.manager.remove(address)
        entry = await unpair_on_radio(self.config, self.registry, address)
        await self.manager.radios.unpair(address)
        return entry

    async def devices(self) -> list[DeviceEntry]:
        links = {a: s.state for a, s in self.manager.supervisors.items()}
        return await list_devices(self.config, self.registry, links)

    async def state(self, request: GetState) -> ControllerState:
        return await self.current_state(request.address, force=False)

    async def refresh(self, request: Refresh) -> ControllerState:
        return await self.current_state(request.address, force=True)

    async def current_state(self, address: str, *, force: bool) -> ControllerState:
        address = normalise_address(address)
        record = self.registry.get(address)
        supervisor = self.manager.supervisor(address)
        if force or not self.manager.store.fresh(address):
            # Nothing fresh to show: ask for an urgent visit rather than print old values.
            await supervisor.submit("refresh", _refresh)
        radios = self.manager.radios
        state = self.manager.store.snapshot(address, record.firmware_version).model_copy(
            update={"radio": radios.serving(address),
                    "rssi_by_radio": dict(radios.rssi_by_radio(address))})
        return state.model_copy(update={"policy": supervisor.policy})

    async def valve_open(self, request: ValveOpen) -> CommandResult:
        return await self._valve(request)

    async def valve_close(self, request: ValveClose) -> CommandResult:
        return await self._valve(request)

    async def _valve(self, request: ValveOpen | ValveClose) -> CommandResult:
        address = normalise_address(request.address)
        self.registry.get(address)
        outcome = await self.manager.command(address, request.name, valve_command(request),
                                             rerun=valve_rerun(request))
        return result_of(address, request.name, outcome)

    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport:
        """Whoever asked (the CLI, MQTT, a cloud job), the update's progress is kept for
        `awgw status` and the metrics while it runs."""
        address = normalise_address(request.address)

        def progress(p: Progress) -> None:
            self.updates[address] = p
            if on_progress is not None:
                on_progress(p)

        try:
            report = await self.ota_service.update(request, SupervisedAccess(self), progress)
        finally:
            self.updates.pop(address, None)
        self.ota_bytes += report.uploaded_bytes
        self.ota_outcomes[report.result] += 1
        return report

class HubOperations:
    """Every operation the control socket answers: the controllers' (delegated), and what only
    the hub as a whole knows (its status, the cloud link, claims)."""

    def __init__(self, controllers: ControllerOperations, ways_out: WaysOut,
                 status: Callable[[], HubStatus]) -> None:
        self.controllers = controllers
        self.config = controllers.config
        self.cloud, self.account, self.mqtt = ways_out.cloud, ways_out.account, ways_out.mqtt
        self.status_now = status

    async def scan(self) -> list[ScanEntry]:
        return await self.controllers.scan()

    async def pair(self, request: Pair) -> DeviceEntry:
        return await self.controllers.pair(request)

    async def unpair(self, request: Unpair) -> DeviceEntry:
        serial = self.controllers.registry.get(normalise_address(request.address)).serial
        entry = await self.controllers.unpair(request)
        if self.mqtt is not None:
            self.mqtt.forget(entry.address, serial)
        return entry

    async def devices(self) -> list[DeviceEntry]:
        return await self.controllers.devices()

    async def state(self, request: GetState) -> ControllerState:
        return await self.controllers.state(request)

    async def refresh(self, request: Refresh) -> ControllerState:
        return await self.controllers.refresh(request)

    async def valve_open(self, request: ValveOpen) -> CommandResult:
        return await self.controllers.valve_open(request)

    async def valve_close(self, request: ValveClose) -> CommandResult:
        return await self.controllers.valve_close(request)

    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport:
        return await self.controllers.ota(request, on_progress)

    async def status(self) -> HubStatus:
        return self.status_now()

    async def cloud_status(self) -> CloudStatus:
        if self.cloud is None or self.account is None:
            return account.disabled_status(self.config)
        return self.cloud.status().model_copy(update={"user": self.account.user()})

    async def claim(self, request: Claim) -> ClaimResult:
        if self.account is None:
            return await account.claim(self.config, request.serial)
        result = await self.account.claim(request.serial)
        if self.cloud is not None:
            self.cloud.serials_changed()
        return result

    async def unclaim(self, request: Unclaim) -> ClaimResult:
        if self.account is None:
            return await account.unclaim(self.config, request.serial, request.reason)
        result = await self.account.unclaim(request.serial, request.reason)
        if self.cloud is not None:
            self.cloud.serials_changed()
        return result


class SupervisedAccess:
    """The OTA service's way to a controller in the daemon: the supervisor hands it over and
    commands answer busy until the update ends; every connect takes the scheduler's turn."""

    def __init__(self, ops: ControllerOperations) -> None:
        self.ops = ops
        self.manager = ops.manager
        self._leases: dict[str, Lease] = {}  # the slot each update holds, by controller

    async def current_state(self, address: str) -> ControllerState:
        return await self.ops.current_state(address, force=False)

    @contextlib.asynccontextmanager
    async def hold(self, address: str) -> AsyncIterator[None]:
        supervisor = self.manager.supervisor(address)
        radios = self.manager.radios
        # One update per radio at a time: an upload fills its radio's air time.
        async with supervisor.firmware_update(), radios.slot(
                address, Priority.URGENT, kept=False) as lease, radios.update_turn(
                lease.radio or radios.local.name):
            self._leases[address] = lease
            try:
                yield
            finally:
                self._leases.pop(address, None)

    async def connect_smp(self, address: str) -> FrameTransport:
        radios = self.manager.radios
        lease = self._leases.get(address)
        radio = radios.radio_of(address)
        transport = radio.smp_transport(address)
        async with radios.connect_turn(lease):
            await transport.connect(self.ops.config.link.connect_timeout_s)
        return transport

    async def connect_gatt(self, address: str) -> GattLink:
        # The manager's own connector, through the radio of the update's lease.
        async with self.manager.radios.connect_turn(self._leases.get(address)):
            return await self.manager.connector(address, self.ops.config.link.connect_timeout_s,
                                                lambda: None)

    async def refresh_gatt_cache(self, address: str) -> None:
        # Through a proxy the cache is bleak-esphome's (and the ESP32's), not BlueZ's.
        if not await self.manager.radios.radio_of(address).refresh_services(address):
            await self.ops.repair(address, Action.CLEAR_GATT_CACHE)


async def _refresh(session: ControllerSession) -> CommandOutcome:
    await session.refresh()
    return CommandOutcome(OutcomeStatus.CONFIRMED, "refreshed")


class SupervisedHistory:
    """``relay.feed.HistoryReader`` through the controller's supervisor: a background visit
    that reads the detailed history of each channel asked for."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager

    async def read(self, address: str, channels: Sequence[int]) -> list[DetailedEntry]:
        entries: list[DetailedEntry] = []

        async def visit(session: ControllerSession) -> CommandOutcome:
            for channel in channels:
                try:
                    result = await session.history(channel)
                except HistoryRateLimited:
                    continue  # the firmware's own limit: the next visit reads it
                entries.extend(e for e in result.entries if isinstance(e, DetailedEntry))
            return CommandOutcome(OutcomeStatus.CONFIRMED, f"history of {len(channels)} channels")

        await self.manager.supervisor(address).submit("history", visit)
        return entries

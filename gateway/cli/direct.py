"""The operations answered in this process, on the radio, when no daemon runs (`awgw` without
a daemon): each one connects, does its work and lets go."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from firmware_bridge.errors import BridgeError, PeerNotFound
from firmware_bridge.link.gatt_link import BleakGattLink, GattLink
from firmware_bridge.link.session import ControllerSession, PollPlan
from firmware_bridge.link.state import Field
from firmware_bridge.smp.ble import BleSmpTransport
from firmware_bridge.smp.transport import FrameTransport
from gateway import bluez
from gateway.clock import LoopClock
from gateway.config import GatewayConfig
from gateway.errors import CommandFailed, ControlError, PairingError
from gateway.link.failures import classify
from gateway.link.radio import (
    list_devices,
    pair_on_radio,
    pin_kind,
    repair_on_radio,
    result_of,
    unpair_on_radio,
    valve_command,
)
from gateway.link.scanner import SCAN_TIMEOUT_S, discover
from gateway.ops.health import CloudStatus, HubStatus, RadioKind
from gateway.ops.models import (
    Claim,
    ClaimResult,
    CommandResult,
    ControllerState,
    DeviceEntry,
    GetState,
    LinkState,
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
from gateway.store.registry import Registry, normalise_address
from gateway.store.state import StateStore

T = TypeVar("T")


async def after_orphans(adapter: str, address: str, connect: Callable[[], Awaitable[T]]) -> T:
    """``connect()``; when the controller cannot be found, a link an unclean stop left in
    BlueZ (a killed daemon, an `awgw ota` killed mid-upload) is released and the connect tried
    once more, so an interrupted update resumes instead of failing `not_found` for good."""
    try:
        return await connect()
    except PeerNotFound:
        if not await bluez.release_orphan(adapter, address, LoopClock()):
            raise
    return await connect()


class DirectOperations:
    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.ota_service = OtaService(config, registry)

    async def scan(self) -> list[ScanEntry]:
        paired = {r.address for r in self.registry.all()}
        found = await discover(self.config.link.adapter, SCAN_TIMEOUT_S)
        return [ScanEntry(address=s.address, name=s.name, rssi=s.rssi,
                          paired=s.address in paired) for s in found]

    async def pair(self, request: Pair) -> DeviceEntry:
        if pin_kind(self.config, request.radio, request.passkey) is RadioKind.PROXY:
            raise PairingError(f"pairing through proxy {request.radio} needs the daemon (it "
                               f"holds the proxy's connection): sudo systemctl start awgw")
        return await pair_on_radio(self.config, self.registry, request.address, request.passkey,
                                   board=request.board, ota_policy=request.ota_policy,
                                   adapter=request.radio, pin=request.radio)

    async def unpair(self, request: Unpair) -> DeviceEntry:
        return await unpair_on_radio(self.config, self.registry, request.address)

    async def devices(self) -> list[DeviceEntry]:
        return await list_devices(self.config, self.registry)

    async def state(self, request: GetState) -> ControllerState:
        return await self.read_state(request.address)

    async def refresh(self, request: Refresh) -> ControllerState:
        return await self.read_state(request.address)

    async def valve_open(self, request: ValveOpen) -> CommandResult:
        return await self._valve(request)

    async def valve_close(self, request: ValveClose) -> CommandResult:
        return await self._valve(request)

    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport:
        return await self.ota_service.update(request, DirectAccess(self), on_progress)

    # ---- on the radio --------------------------------------------------------------------

    async def cloud_status(self) -> CloudStatus:
        return await account.offline_status(self.config)

    async def claim(self, request: Claim) -> ClaimResult:
        return await account.claim(self.config, request.serial)

    async def unclaim(self, request: Unclaim) -> ClaimResult:
        return await account.unclaim(self.config, request.serial, request.reason)

    async def status(self) -> HubStatus:
        raise ControlError(f"the daemon is not running (no control socket at "
                           f"{self.config.socket_path}): `awgw status` shows the running "
                           f"daemon's health; start it with `sudo systemctl start awgw`")

    async def connect(self, address: str) -> BleakGattLink:
        address = normalise_address(address)
        self.registry.get(address)
        try:
            return await after_orphans(self.config.link.adapter, address, lambda: (
                BleakGattLink.connect(address, adapter=self.config.link.adapter,
                                      timeout_s=self.config.link.connect_timeout_s)))
        except BridgeError as exc:
            raise CommandFailed(f"cannot reach {address} "
                                f"({classify(exc).kind.value}): {exc}") from exc

    async def read_state(self, address: str) -> ControllerState:
        link = await self.connect(address)
        session = ControllerSession(link, plan=PollPlan(read_channel_names=False))
        store = StateStore(stale_after_s=2 * self.config.link.refresh_period_s)
        try:
            await session.bring_up()
        except BridgeError as exc:
            raise CommandFailed(f"reading {link.address} failed ({classify(exc).kind.value}): "
                                f"{exc}") from exc
        finally:
            await link.disconnect()
        while not session.events.empty():
            store.apply(session.events.get_nowait())
        version = session.latest.get(Field.FIRMWARE_VERSION)
        self.registry.seen(link.address, firmware_version=version.value
                           if version is not None and isinstance(version.value, str) else None)
        record = self.registry.get(link.address)
        return store.snapshot(link.address).model_copy(update={
            "link": LinkState.IDLE, "policy": record.policy or self.config.link.default_policy})

    async def _valve(self, request: ValveOpen | ValveClose) -> CommandResult:
        run = valve_command(request)
        link = await self.connect(request.address)
        session = ControllerSession(link, plan=PollPlan(read_channel_names=False))
        try:
            await session.bring_up()
            outcome = await run(session)
        except BridgeError as exc:
            raise CommandFailed(f"{request.name} on {link.address} failed "
                                f"({classify(exc).kind.value}): {exc}") from exc
        finally:
            await link.disconnect()
        return result_of(link.address, request.name, outcome)


class DirectAccess:
    """The OTA service's way to a controller when this process owns the radio."""

    def __init__(self, ops: DirectOperations) -> None:
        self.ops = ops

    async def current_state(self, address: str) -> ControllerState:
        return await self.ops.read_state(address)

    @contextlib.asynccontextmanager
    async def hold(self, address: str) -> AsyncIterator[None]:
        yield  # no supervisor to hand the controller over from

    async def connect_smp(self, address: str) -> FrameTransport:
        link = self.ops.config.link

        async def connect() -> FrameTransport:
            transport = BleSmpTransport(address, adapter=link.adapter)
            await transport.connect(link.connect_timeout_s)
            return transport

        return await after_orphans(link.adapter, address, connect)

    async def connect_gatt(self, address: str) -> GattLink:
        link = self.ops.config.link
        return await after_orphans(link.adapter, address, lambda: BleakGattLink.connect(
            address, adapter=link.adapter, timeout_s=link.connect_timeout_s))

    async def refresh_gatt_cache(self, address: str) -> None:
        record = self.ops.registry.get(address)
        await repair_on_radio(self.ops.config, self.ops.registry, address,
                              adapter=self.ops.config.link.adapter, pin=record.radio)

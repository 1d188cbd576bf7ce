"""What the CLI can ask for, answered either by the running daemon (through its supervisors)
or directly on the radio when no daemon runs. Both return the same pydantic models."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from bleak.backends.device import BLEDevice
from pydantic import BaseModel

from firmware_bridge.errors import BridgeError
from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import CHANNELS, NO_CHANNEL
from firmware_bridge.link.gatt_link import BleakGattLink
from firmware_bridge.link.outcome import CommandOutcome
from firmware_bridge.link.session import ControllerSession, PollPlan
from firmware_bridge.link.state import Field
from gateway import bluez
from gateway.config import GatewayConfig
from gateway.errors import CommandFailed, GatewayError, PairingError
from gateway.link.failures import classify
from gateway.link.scanner import discover
from gateway.store.registry import Registry, normalise_address
from gateway.store.state import StateStore

log = structlog.get_logger(__name__)

# The CLI's one-shot scan: the controller advertises every 20-30 ms, so 5 s sees everything in
# range several times even through a busy radio.
SCAN_TIMEOUT_S = 5.0
MAX_MINUTES = 1440


class ScanEntry(BaseModel):
    address: str
    name: str | None
    rssi: int
    paired: bool


class DeviceEntry(BaseModel):
    address: str
    name: str
    serial: str | None
    firmware_version: str | None
    bonded: bool
    policy: str
    last_seen: float | None
    link: str | None = None


class CommandResult(BaseModel):
    address: str
    command: str
    ok: bool
    status: str
    detail: str
    att_code: int | None = None
    queue_error: int | None = None


ValveAction = Literal["open", "close"]


class Operations(Protocol):
    async def scan(self) -> list[ScanEntry]: ...
    async def pair(self, address: str, passkey: int | None) -> DeviceEntry: ...
    async def unpair(self, address: str) -> DeviceEntry: ...
    async def devices(self) -> list[DeviceEntry]: ...
    async def state(self, address: str) -> dict[str, Any]: ...
    async def valve(self, address: str, channel: int, action: ValveAction,
                    minutes: int | None) -> CommandResult: ...


def valve_command(channel: int, action: ValveAction, minutes: int | None
                  ) -> tuple[str, Callable[[ControllerSession], Awaitable[CommandOutcome]]]:
    """Validate before anything touches the radio; the name is what logs and errors show."""
    if not (0 <= channel < CHANNELS or channel == NO_CHANNEL):
        raise CommandFailed(f"channel {channel} is out of range (0..7, or 255 for the master "
                            "valve)")
    if action == "open":
        if channel == NO_CHANNEL:
            raise CommandFailed("the master valve opens with the zones; open a zone instead")
        if minutes is None or not 1 <= minutes <= MAX_MINUTES:
            raise CommandFailed(f"--minutes must be 1..{MAX_MINUTES}, got {minutes}")
        return (f"valve {channel} open {minutes} min",
                lambda session: session.open_valve(channel, minutes))
    return f"valve {channel} close", lambda session: session.close_valve(channel)


def result_of(address: str, name: str, outcome: CommandOutcome) -> CommandResult:
    return CommandResult(address=address, command=name, ok=outcome.ok,
                         status=outcome.status.value, detail=outcome.detail,
                         att_code=outcome.att_code,
                         queue_error=None if outcome.queue_error is None
                         else int(outcome.queue_error))


def device_entry(registry: Registry, config: GatewayConfig, address: str,
                 link: str | None = None) -> DeviceEntry:
    record = registry.get(address)
    return DeviceEntry(address=record.address, name=record.name, serial=record.serial,
                       firmware_version=record.firmware_version, bonded=record.bonded,
                       policy=(record.policy or config.link.default_policy).value,
                       last_seen=record.last_seen, link=link)


async def pair_on_radio(config: GatewayConfig, registry: Registry, address: str,
                        passkey: int | None, device: BLEDevice | None = None) -> DeviceEntry:
    """Bond with the controller inside a bounded pairing window, prove encrypted access by
    reading System Status (device-ble.md 3.1), record it."""
    address = normalise_address(address)
    adapter = config.link.adapter
    try:
        async with asyncio.timeout(config.pairing_window_s), bluez.pairing_window(
                adapter, address, passkey, config.pairing_window_s):
            link = await BleakGattLink.connect(device or address, adapter=adapter,
                                               timeout_s=config.link.connect_timeout_s)
            try:
                await link.pair()
                await link.read(uuids.SYSTEM_STATUS)
                firmware = (await link.read(uuids.DIS_FIRMWARE_REVISION)).decode(
                    "utf-8", "replace")
                serial = ((await link.read(uuids.DIS_SERIAL_NUMBER)).decode("utf-8", "replace")
                          if link.has(uuids.DIS_SERIAL_NUMBER) else None)
            finally:
                await link.disconnect()
    except TimeoutError:
        raise PairingError(f"pairing window of {config.pairing_window_s:.0f} s closed before "
                           f"{address} paired") from None
    except BridgeError as exc:
        failure = classify(exc)
        raise PairingError(f"pairing {address} failed ({failure.kind.value}): {exc}") from exc
    registry.add(address, name=uuids.ADVERTISED_NAME, bonded=True, serial=serial,
                 firmware_version=firmware)
    log.info("controller_paired", address=address, firmware_version=firmware)
    return device_entry(registry, config, address)


async def unpair_on_radio(config: GatewayConfig, registry: Registry, address: str
                          ) -> DeviceEntry:
    address = normalise_address(address)
    entry = device_entry(registry, config, address)
    await bluez.remove_bond(config.link.adapter, address)
    registry.remove(address)
    log.info("controller_unpaired", address=address)
    return entry.model_copy(update={"bonded": False, "link": "removed"})


async def list_devices(config: GatewayConfig, registry: Registry,
                       links: dict[str, str] | None = None) -> list[DeviceEntry]:
    """The registry joined with BlueZ's bond inventory: ``bonded`` is what BlueZ holds now."""
    try:
        held = {b.address for b in await bluez.bonds(config.link.adapter)}
    except (GatewayError, OSError) as exc:
        log.warning("bond_inventory_unavailable", error=str(exc))
        held = None
    entries = []
    for record in registry.all():
        entry = device_entry(registry, config, record.address, (links or {}).get(
            record.address))
        if held is not None:
            entry = entry.model_copy(update={"bonded": record.address in held})
        entries.append(entry)
    return entries


class DirectOperations:
    """No daemon: act on the radio from this process."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry

    async def scan(self) -> list[ScanEntry]:
        paired = {r.address for r in self.registry.all()}
        found = await discover(self.config.link.adapter, SCAN_TIMEOUT_S)
        return [ScanEntry(address=s.address, name=s.name, rssi=s.rssi,
                          paired=s.address in paired) for s in found]

    async def pair(self, address: str, passkey: int | None) -> DeviceEntry:
        return await pair_on_radio(self.config, self.registry, address, passkey)

    async def unpair(self, address: str) -> DeviceEntry:
        return await unpair_on_radio(self.config, self.registry, address)

    async def devices(self) -> list[DeviceEntry]:
        return await list_devices(self.config, self.registry)

    async def _session(self, address: str) -> ControllerSession:
        address = normalise_address(address)
        self.registry.get(address)
        try:
            link = await BleakGattLink.connect(address, adapter=self.config.link.adapter,
                                               timeout_s=self.config.link.connect_timeout_s)
        except BridgeError as exc:
            raise CommandFailed(f"cannot reach {address} "
                                f"({classify(exc).kind.value}): {exc}") from exc
        return ControllerSession(link, plan=PollPlan(read_channel_names=False))

    async def state(self, address: str) -> dict[str, Any]:
        session = await self._session(address)
        store = StateStore(stale_after_s=2 * self.config.link.refresh_period_s)
        try:
            await session.bring_up()
        except BridgeError as exc:
            raise CommandFailed(f"reading {address} failed ({classify(exc).kind.value}): "
                                f"{exc}") from exc
        finally:
            await session.link.disconnect()
        store.set_link(session.link.address, "disconnected")
        while not session.events.empty():
            store.apply(session.events.get_nowait())
        version = session.latest.get(Field.FIRMWARE_VERSION)
        self.registry.seen(session.link.address, firmware_version=version.value
                           if version is not None and isinstance(version.value, str) else None)
        return store.as_json(session.link.address)

    async def valve(self, address: str, channel: int, action: ValveAction,
                    minutes: int | None) -> CommandResult:
        name, run = valve_command(channel, action, minutes)
        session = await self._session(address)
        try:
            await session.bring_up()
            outcome = await run(session)
        except BridgeError as exc:
            raise CommandFailed(f"{name} on {address} failed ({classify(exc).kind.value}): "
                                f"{exc}") from exc
        finally:
            await session.link.disconnect()
        return result_of(session.link.address, name, outcome)


def read_image(path: Path) -> tuple[str, bytes]:
    try:
        return str(path.resolve()), path.read_bytes()
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror}") from exc

"""Radio procedures both ways of answering share: pairing inside a bounded window, unpairing,
the device inventory, and turning a valve request into the session call that carries it out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from bleak.backends.device import BLEDevice

from firmware_bridge.errors import BridgeError
from firmware_bridge.gatt import uuids
from firmware_bridge.link.gatt_link import BleakGattLink
from firmware_bridge.link.outcome import CommandOutcome
from firmware_bridge.link.session import ControllerSession
from gateway import bluez
from gateway.config import GatewayConfig, OtaPolicy
from gateway.errors import GatewayError, PairingError
from gateway.link.failures import classify
from gateway.ops.models import CommandResult, DeviceEntry, LinkState, ValveClose, ValveOpen
from gateway.store.registry import Registry, normalise_address

log = structlog.get_logger(__name__)

CommandFn = Callable[[ControllerSession], Awaitable[CommandOutcome]]


def valve_command(request: ValveOpen | ValveClose) -> CommandFn:
    """The session call for a validated valve request (the models did the range checks)."""
    if isinstance(request, ValveOpen):
        return lambda session: session.open_valve(request.channel, request.minutes)
    return lambda session: session.close_valve(request.channel)


def result_of(address: str, name: str, outcome: CommandOutcome) -> CommandResult:
    return CommandResult(address=address, command=name, ok=outcome.ok,
                         status=outcome.status.value, detail=outcome.detail,
                         att_code=outcome.att_code,
                         queue_error=None if outcome.queue_error is None
                         else int(outcome.queue_error))


def device_entry(registry: Registry, config: GatewayConfig, address: str,
                 link: LinkState | None = None) -> DeviceEntry:
    record = registry.get(address)
    return DeviceEntry(address=record.address, name=record.name, serial=record.serial,
                       firmware_version=record.firmware_version, bonded=record.bonded,
                       policy=record.policy or config.link.default_policy,
                       last_seen=record.last_seen, link=link, board=record.board,
                       ota_policy=record.ota_policy)


async def pair_on_radio(config: GatewayConfig, registry: Registry, address: str,
                        passkey: int | None, device: BLEDevice | None = None, *,
                        board: str | None = None,
                        ota_policy: OtaPolicy | None = None) -> DeviceEntry:
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
                 firmware_version=firmware, board=board, ota_policy=ota_policy)
    log.info("controller_paired", address=address, firmware_version=firmware)
    return device_entry(registry, config, address)


async def repair_on_radio(config: GatewayConfig, registry: Registry, address: str) -> None:
    """Forget our half of the bond (and with it BlueZ's GATT cache) and pair again (Just
    Works): the one automatic answer to a lost bond or a stale cache."""
    await bluez.remove_bond(config.link.adapter, address)
    await pair_on_radio(config, registry, address, None)


async def unpair_on_radio(config: GatewayConfig, registry: Registry, address: str
                          ) -> DeviceEntry:
    address = normalise_address(address)
    entry = device_entry(registry, config, address)
    await bluez.remove_bond(config.link.adapter, address)
    registry.remove(address)
    log.info("controller_unpaired", address=address)
    return entry.model_copy(update={"bonded": False, "link": None})


async def list_devices(config: GatewayConfig, registry: Registry,
                       links: dict[str, LinkState] | None = None) -> list[DeviceEntry]:
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

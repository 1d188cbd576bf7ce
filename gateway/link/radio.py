"""Radio procedures both ways of answering share: pairing inside a bounded window, unpairing,
the device inventory, and turning a valve request into the session call that carries it out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from bleak.backends.device import BLEDevice

from firmware_bridge.errors import BridgeError
from firmware_bridge.gatt import uuids
from firmware_bridge.link.gatt_link import BleakGattLink, GattLink
from firmware_bridge.link.outcome import CommandOutcome
from firmware_bridge.link.session import ControllerSession
from gateway import bluez
from gateway.config import GatewayConfig, OtaPolicy
from gateway.errors import GatewayError, PairingError
from gateway.link.failures import classify
from gateway.link.radios.base import Radio
from gateway.ops.health import RadioKind
from gateway.ops.models import CommandResult, DeviceEntry, LinkState, ValveClose, ValveOpen
from gateway.store.registry import Registry, normalise_address

log = structlog.get_logger(__name__)

CommandFn = Callable[[ControllerSession], Awaitable[CommandOutcome]]


def valve_command(request: ValveOpen | ValveClose) -> CommandFn:
    """The session call for a validated valve request (the models did the range checks)."""
    if isinstance(request, ValveOpen):
        return lambda session: session.open_valve(request.channel, request.minutes)
    return lambda session: session.close_valve(request.channel)


def valve_rerun(request: ValveOpen | ValveClose) -> CommandFn:
    """The same request on a new link after one that ended once its write was sent: an open
    checks whether it took (``open_valve_again``); a close reads the running task before it
    writes anyway, so it is simply sent again."""
    if isinstance(request, ValveOpen):
        return lambda session: session.open_valve_again(request.channel, request.minutes)
    return valve_command(request)


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
                        board: str | None = None, ota_policy: OtaPolicy | None = None,
                        adapter: str | None = None, pin: str | None = None) -> DeviceEntry:
    """Bond with the controller inside a bounded pairing window, prove encrypted access by
    reading System Status (device-ble.md 3.1), record it. ``adapter``: one of the hub's own
    (default the first); ``pin``: the radio a person chose to serve it (awgw pair --radio)."""
    address = normalise_address(address)
    adapter = adapter or config.link.adapter
    try:
        async with asyncio.timeout(config.pairing_window_s), bluez.pairing_window(
                adapter, address, passkey, config.pairing_window_s):
            link = await BleakGattLink.connect(device or address, adapter=adapter,
                                               timeout_s=config.link.connect_timeout_s)
            try:
                await link.pair()
                firmware, serial = await identify(link)
            finally:
                await link.disconnect()
    except TimeoutError:
        raise PairingError(f"pairing window of {config.pairing_window_s:.0f} s closed before "
                           f"{address} paired") from None
    except BridgeError as exc:
        failure = classify(exc)
        raise PairingError(f"pairing {address} failed ({failure.kind.value}): {exc}") from exc
    registry.add(address, name=uuids.ADVERTISED_NAME, bonded=True, serial=serial,
                 firmware_version=firmware, board=board, ota_policy=ota_policy, radio=pin,
                 passkey=passkey is not None)
    log.info("controller_paired", address=address, firmware_version=firmware, radio=pin)
    return device_entry(registry, config, address)


async def pair_through_proxy(config: GatewayConfig, registry: Registry, radio: Radio,
                             address: str, *, board: str | None = None,
                             ota_policy: OtaPolicy | None = None) -> DeviceEntry:
    """Through a proxy the ESP32 holds the bond: it answers the controller's security request
    itself (Just Works) on the first connect. Pairing proves access by reading through it, and
    pins the controller to it."""
    address = normalise_address(address)
    if radio.heard(address) is None:
        why = radio.reason or "out of its range, or connected to another central"
        raise PairingError(f"proxy {radio.name} does not hear {address} ({why}): move the "
                           f"proxy closer, or pin another radio")
    try:
        link = await radio.connect(address, config.link.connect_timeout_s, lambda: None)
        try:
            firmware, serial = await identify(link)
        finally:
            await link.disconnect()
    except BridgeError as exc:
        raise PairingError(f"pairing {address} through proxy {radio.name} failed "
                           f"({classify(exc).kind.value}): {exc}") from exc
    registry.add(address, name=uuids.ADVERTISED_NAME, bonded=False, serial=serial,
                 firmware_version=firmware, board=board, ota_policy=ota_policy, radio=radio.name)
    log.info("controller_paired", address=address, firmware_version=firmware, radio=radio.name)
    return device_entry(registry, config, address)


def pin_kind(config: GatewayConfig, radio: str | None, passkey: int | None) -> RadioKind | None:
    """What kind of radio a pair request pins to (None: no pin), or a typed refusal."""
    if radio is None:
        return None
    adapters = [a.name for a in config.link.local_adapters]
    proxies = [p.name for p in config.radios.esphome]
    if radio in adapters:
        return RadioKind.ADAPTER
    if radio not in proxies:
        raise PairingError(f"no radio is named {radio!r} (radios: "
                           f"{', '.join(adapters + proxies)}); add it to [link] adapters or "
                           f"[[radios.esphome]] in the config, or pick one of those")
    if passkey is not None:
        raise PairingError(f"a passkey controller can only be served by the hub's own "
                           f"adapters (the proxy API has no passkey entry): pin it to one of "
                           f"{', '.join(adapters)}")
    return RadioKind.PROXY


async def identify(link: GattLink) -> tuple[str, str | None]:
    """Read System Status (encrypted: proves the bond works on this link), then the firmware
    revision and serial number."""
    await link.read(uuids.SYSTEM_STATUS)
    firmware = (await link.read(uuids.DIS_FIRMWARE_REVISION)).decode("utf-8", "replace")
    serial = ((await link.read(uuids.DIS_SERIAL_NUMBER)).decode("utf-8", "replace")
              if link.has(uuids.DIS_SERIAL_NUMBER) else None)
    return firmware, serial


async def repair_on_radio(config: GatewayConfig, registry: Registry, address: str, *,
                          adapter: str, pin: str | None) -> None:
    """Forget the bond ``adapter`` holds (and with it BlueZ's GATT cache) and pair again
    through it (Just Works): the one automatic answer to a lost bond or a stale cache.
    ``pin``: the radio the controller is pinned to, kept."""
    await bluez.remove_bond(adapter, address)
    await pair_on_radio(config, registry, address, None, adapter=adapter, pin=pin)


async def unpair_on_radio(config: GatewayConfig, registry: Registry, address: str
                          ) -> DeviceEntry:
    address = normalise_address(address)
    entry = device_entry(registry, config, address)
    # Every hub adapter that served it holds a bond of its own (its first connect paired).
    for adapter in config.link.local_adapters:
        try:
            await bluez.remove_bond(adapter.name, address)
        except PairingError as exc:
            if adapter.name == config.link.adapter:
                raise
            # An extra adapter unplugged now: its stale bond costs one automatic re-pair.
            log.warning("bond_not_removed", address=address, adapter=adapter.name,
                        error=str(exc), remedy=f"bluetoothctl: select the adapter "
                                               f"{adapter.name}, then remove {address}")
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

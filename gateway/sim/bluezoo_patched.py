"""Launch BlueZoo 1.0.2 (a BlueZ D-Bus mock) with the defects of notes/ble-test-rig.md fixed.

Run as ``python -m gateway.sim.bluezoo_patched --central 0 -a ADDR -a ADDR ...`` with
``DBUS_SYSTEM_BUS_ADDRESS`` pointing at a private bus. BlueZoo is pinned exactly because this
module reaches into its internals.

Fixes:
1. ManufacturerData is declared ``a{sv}``; BlueZ says ``a{qv}`` and bleak drops the device.
2. A re-scan never re-reports a known device and RSSI is always 0: every scan now emits a
   fresh, jittered RSSI, as real BlueZ does, so ``find_device_by_address`` works.
3. Disconnect leaves link objects exported (the next Connect fails) and only the caller's side
   sees ``Connected=False``: links are now torn down, notifications stopped and both sides
   updated; a vanished GATT application or a removed adapter drops its links.
4. Every adapter claims the central role: only the gateway's adapter does now.
5. A controller that does not advertise (connected elsewhere, busy with the phone app) cannot
   be connected to: Connect waits for it to advertise, then fails like BlueZ's
   ``le-connection-abort-by-local``.
6. Pairing supports only a NoInputNoOutput agent (anything else raises NotImplementedError)
   and fails with no agent: Just Works now pairs with any agent or none, and a controller
   started with ``--passkey ADDR=NNNNNN`` asks the central's agent for the passkey
   (RequestPasskey) and fails with AuthenticationFailed on a wrong or missing one. Each
   pairing also sets ``Paired`` on the controller's side, where the controller watches it.
7. Every adapter is listed under ``org.bluez``, so a client that takes the first adapter may
   take a controller's: the controllers' adapters (and what lives under them) are served from
   a second connection named ``gateway.sim.radios.PERIPHERAL_RADIOS_BUS_NAME``.
8. A Connect that arrives while the same link is being torn down returns at once (the device
   still says Connected) and the client resolves services that are disappearing: connects and
   disconnects of one link now run one after the other, as BlueZ runs them.
9. A link that ends without its StopNotify (its central's adapter removed while a subscribe
   was under way) leaves the controller's characteristic notifying, and StartNotify on any
   later link then asks for AcquireNotify, which the characteristic does not have: a new
   link now starts with the notifications of the one before it stopped, as BlueZ's server
   clears a CCCD when its link ends.

And one addition, the garden (``--position ADDR=X,Y``): where both ends of a link have a
position, RSSI follows a log-distance path loss and a peer below the receiver's sensitivity is
neither seen nor connectable, so each radio hears the controllers near it.

tests/gateway/sim/test_rig_ble.py shows each fix from the client side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import re
import signal
from typing import Any

import bluezoo.adapter as bz_adapter
import bluezoo.bluezoo as bz_main
import bluezoo.device as bz_device
import bluezoo.gatt.manager as bz_gatt_manager
import bluezoo.interfaces.LEAdvertisement as bz_adv_iface
import sdbus
from bluezoo.exceptions import DBusBluezAuthenticationFailedError, DBusBluezFailedError
from bluezoo.gatt import GattCharacteristicClient, GattCharacteristicClientLink

from gateway.sim.radios import PERIPHERAL_RADIOS_BUS_NAME

# How long a Connect to a silent (non-advertising) controller takes to fail. BlueZ's own LE
# connect attempt runs until the client gives up (bleak: 10 s); a short value keeps tests fast
# while still making the attempt cost real time.
CONNECT_FAIL_DELAY_S = 2.0

_central_ids: set[int] = {0}
_passkeys: dict[str, int] = {}
_connect_fail_delay = CONNECT_FAIL_DELAY_S
# The second connection and its object manager that serve the controllers' adapters.
_peripheral_side: tuple[Any, Any] | None = None
_ADAPTER_PATH = re.compile(r"^/org/bluez/hci(\d+)(?:/|$)")
# One lock per central-side device object: its connects and teardowns never overlap.
_link_locks: dict[int, asyncio.Lock] = {}


def _link_lock(central_side: Any) -> asyncio.Lock:
    return _link_locks.setdefault(id(central_side), asyncio.Lock())


def _fix_manufacturer_data_signature() -> None:
    for cls in (bz_device.Device, bz_adv_iface.LEAdvertisementInterface):
        for name in ("ManufacturerData", "ScanResponseManufacturerData"):
            prop = cls.__dict__.get(name)
            if prop is not None:
                prop.property_signature = "a{qv}"


def _jittered_rssi() -> int:
    return random.randint(-75, -45)


# The garden: adapter address -> position in metres. Where both ends of a link have one, the
# RSSI follows a log-distance path loss, and a peer beyond the receiver's sensitivity is
# neither seen nor connectable (a garden radio reaches a few tens of metres).
_positions: dict[str, tuple[float, float]] = {}
RSSI_AT_1M = -45.0
# Exponent 3: a garden with hedges, sheds and people, between free space (2) and indoors (4).
PATH_LOSS_EXPONENT = 3.0
# Below this a receiver hears nothing: an nRF52840 or an ESP32 decodes LE 1M down to ~-95 dBm.
SENSITIVITY_DBM = -95.0
RSSI_JITTER_DB = 3.0


def rssi_between(receiver: str, sender: str) -> int | None:
    """What ``receiver`` hears of ``sender``, or None when it does not hear it at all."""
    a, b = _positions.get(receiver.upper()), _positions.get(sender.upper())
    if a is None or b is None:
        return _jittered_rssi()
    distance = max(1.0, math.hypot(a[0] - b[0], a[1] - b[1]))
    level = RSSI_AT_1M - 10 * PATH_LOSS_EXPONENT * math.log10(distance)
    if level < SENSITIVITY_DBM:
        return None
    return round(max(SENSITIVITY_DBM, level + random.uniform(-RSSI_JITTER_DB, RSSI_JITTER_DB)))


def _fix_rescan_rssi() -> None:
    rssi = bz_device.Device.__dict__["RSSI"]

    def set_rssi(self: Any, value: int) -> None:
        self.rssi = value

    rssi.property_setter = set_rssi
    rssi.property_setter_is_public = False
    original_add = bz_adapter.Adapter.add_device

    async def add_device(self: Any, device: Any) -> None:
        path = "/".join((self.get_object_path(), f"dev_{device.address.replace(':', '_')}"))
        known = self.devices.get(path)
        rssi = rssi_between(self.address, device.address)
        if rssi is None:
            return  # out of this receiver's range
        if known is None:
            device.rssi = rssi
            await original_add(self, device)
            return
        await original_add(self, device)
        if device.is_le and not known.connected:
            await known.RSSI.set_async(rssi)

    bz_adapter.Adapter.add_device = add_device


def _counterpart(device: Any) -> Any | None:
    """The exported object, on the peer's adapter, that represents this device's adapter."""
    if device.adapter is None:
        return None
    path = "/".join((device.peer_adapter.get_object_path(),
                     f"dev_{device.adapter.address.replace(':', '_')}"))
    return device.peer_adapter.devices.get(path)


async def _teardown_links(device: Any) -> None:
    mock = device.peer_adapter.mock
    for link in list(device.services.values()):
        if isinstance(link, GattCharacteristicClientLink):
            link.client_props_changed_subscription.unsubscribe()
            if link.client.Notifying.get(False):
                try:
                    await link.client.StopNotify()
                except Exception:  # the peripheral process may already be gone
                    logging.getLogger(__name__).debug("stop_notify_failed", exc_info=True)
        with contextlib.suppress(KeyError):
            mock.remove_object(link)
    device.services = {}


async def _set_connected(device: Any, value: bool) -> None:
    if device.connected != value:
        await device.Connected.set_async(value)
    if not value and device.services_resolved:
        await device.ServicesResolved.set_async(False)


async def _stop_stale_notifications(peripheral_adapter: Any) -> None:
    """A controller serves one central and advertises only while it has none, so what is
    still notifying when a link is about to come up was left by a link that is gone."""
    for app in list(peripheral_adapter.gatt_apps.values()):
        for obj in list(app.objects.values()):
            if isinstance(obj, GattCharacteristicClient) and obj.Notifying.get(False):
                try:
                    await obj.StopNotify()
                except Exception:  # the peripheral process may be going away
                    logging.getLogger(__name__).debug("stop_notify_failed", exc_info=True)


def _fix_connect_disconnect() -> None:
    device_cls = bz_device.Device
    original_connect = device_cls.connect

    async def connect(self: Any, uuid: str | None = None) -> None:
        async with _link_lock(self):
            await locked_connect(self, uuid)

    async def locked_connect(self: Any, uuid: str | None) -> None:
        if self.connected:
            return
        in_range = rssi_between(self.adapter.address, self.address) is not None
        if self.is_le and (not self.peer_adapter.advertisements or not in_range):
            # Like BlueZ's LE create-connection: wait for the peer to advertise again (it
            # does ~0.8 s after its previous link ended) and give up after the delay.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _connect_fail_delay
            while not self.peer_adapter.advertisements and loop.time() < deadline:  # noqa: ASYNC110 - bluezoo has no event for it
                await asyncio.sleep(0.05)
            if not in_range:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
        if self.is_le and (not self.peer_adapter.advertisements or not in_range):
            # BlueZ reports Connected=True then False around this error (bleak waits for
            # that before it retries the Connect).
            await self.Connected.set_async(True)
            await self.Connected.set_async(False)
            raise DBusBluezFailedError("le-connection-abort-by-local")
        if self.peer_adapter.id not in self.peer_adapter.mock.adapters:
            raise DBusBluezFailedError("Host is down")
        await _stop_stale_notifications(self.peer_adapter)
        await original_connect(self, uuid)
        other = _counterpart(self)
        if other is not None:
            await _set_connected(other, True)

    async def disconnect(self: Any, uuid: str | None = None) -> None:
        self.connecting_task.cancel()
        # The peripheral side may call Disconnect on its view of the central: route the
        # teardown to the central's device object, which owns the links.
        central_side = self if self.services else _counterpart(self)
        async with _link_lock(central_side if central_side is not None else self):
            peripheral_side = _counterpart(central_side) if central_side is not None else None
            if central_side is not None:
                await _teardown_links(central_side)
                await _set_connected(central_side, False)
            if peripheral_side is not None:
                await _set_connected(peripheral_side, False)
            await _set_connected(self, False)

    device_cls.connect = connect
    device_cls.disconnect = disconnect

    mangled = "_GattManager__del_gatt_application"
    original_del_app = getattr(bz_gatt_manager.GattManager, mangled)

    async def del_gatt_application(self: Any, app: Any) -> None:
        await original_del_app(self, app)
        await _drop_links_to(self)

    setattr(bz_gatt_manager.GattManager, mangled, del_gatt_application)

    original_del_adapter = bz_main.BluezMockService.del_adapter

    async def del_adapter(self: Any, adapter_id: int) -> None:
        adapter = self.adapters.get(adapter_id)
        if adapter is not None:
            await _drop_links_to(adapter)
            for other in list(self.adapters.values()):
                for dev in list(other.devices.values()):
                    if dev.peer_adapter is adapter:
                        await other.del_device(dev)
        await original_del_adapter(self, adapter_id)

    bz_main.BluezMockService.del_adapter = del_adapter


async def _drop_links_to(peripheral_adapter: Any) -> None:
    """Disconnect every central connected to a peripheral adapter (its server went away)."""
    for adapter in list(peripheral_adapter.mock.adapters.values()):
        for dev in list(adapter.devices.values()):
            if dev.peer_adapter is peripheral_adapter and dev.connected:
                await dev.disconnect()


def _fix_roles() -> None:
    roles = bz_adapter.Adapter.__dict__["Roles"]

    def get_roles(self: Any) -> list[str]:
        return ["central", "peripheral", "central-peripheral"] if self.id in _central_ids else [
            "peripheral"]

    roles.property_getter = get_roles


def _fix_pairing() -> None:
    async def pair(self: Any) -> None:
        # ``self`` is the central's object for the controller; ``self.address`` is the
        # controller's address.
        expected = _passkeys.get(self.address)
        if expected is not None:
            agent = self.adapter.mock.root.agent
            if agent is None or agent.capability == "NoInputNoOutput":
                raise DBusBluezAuthenticationFailedError("controller requires a passkey")
            try:
                entered = await agent.RequestPasskey(self.get_object_path())
            except Exception as exc:  # the agent rejected: BlueZ reports a failed pairing
                raise DBusBluezAuthenticationFailedError(str(exc)) from exc
            if entered != expected:
                raise DBusBluezAuthenticationFailedError("passkey mismatch")
        self.peer.paired = True
        self.peer.bonded = True
        await self.peer_adapter.add_device(self.peer)
        # The controller's side says so too, every time: a controller that lost its bonds
        # (its ``lose_bonds`` fault) learns from this that the central paired afresh.
        shown = self.peer_adapter.devices.get(self.peer.get_object_path(), self.peer)
        await shown.Paired.set_async(True)
        await self.Paired.set_async(True)
        await self.Bonded.set_async(True)

    bz_device.Device.pair = pair


def _is_peripheral_path(path: str) -> bool:
    match = _ADAPTER_PATH.match(path)
    return match is not None and int(match.group(1)) not in _central_ids


def _fix_peripheral_radios() -> None:
    original_export = bz_main.BluezMockService.export_object

    def export_object(self: Any, path: str, obj: Any) -> None:
        if _peripheral_side is None or not _is_peripheral_path(path):
            original_export(self, path, obj)
            return
        bus, manager = _peripheral_side
        # remove_object stops whichever handle it finds, so only the export is routed.
        self.manager_export_handles[obj] = manager.export_with_manager(path, obj, bus)

    bz_main.BluezMockService.export_object = export_object


async def _open_peripheral_side() -> None:
    global _peripheral_side  # noqa: PLW0603 - read by the patched export_object
    bus = sdbus.sd_bus_open_system()
    await bus.request_name_async(PERIPHERAL_RADIOS_BUS_NAME, 0)
    manager = sdbus.DbusObjectManagerInterfaceAsync()
    manager.export_to_dbus("/", bus)
    _peripheral_side = (bus, manager)


def apply_patches() -> None:
    _fix_manufacturer_data_signature()
    _fix_rescan_rssi()
    _fix_connect_disconnect()
    _fix_roles()
    _fix_pairing()
    _fix_peripheral_radios()


async def _serve(args: argparse.Namespace) -> None:
    await _open_peripheral_side()
    await bz_main.startup(bus="system", adapters=args.adapters, auto_enable=True,
                          scan_interval=args.scan_interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await bz_main.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="BlueZoo with the AutoWatering rig's fixes")
    parser.add_argument("-a", "--adapter", dest="adapters", action="append", default=[])
    parser.add_argument("--central", type=int, action="append", default=None)
    parser.add_argument("--scan-interval", type=int, default=1)
    parser.add_argument("--connect-fail-delay", type=float, default=CONNECT_FAIL_DELAY_S)
    parser.add_argument("--passkey", action="append", default=[],
                        help="ADDR=NNNNNN: that controller pairs only with this passkey")
    parser.add_argument("--position", action="append", default=[],
                        help="ADDR=X,Y: where that adapter stands in the garden, in metres")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    for item in args.position:
        address, _, where = item.partition("=")
        x, _, y = where.partition(",")
        _positions[address.upper()] = (float(x), float(y))
    for item in args.passkey:
        address, _, key = item.partition("=")
        _passkeys[address.upper()] = int(key)
    global _connect_fail_delay  # noqa: PLW0603 - module-level knob read by the patched connect
    _connect_fail_delay = args.connect_fail_delay
    if args.central is not None:
        _central_ids.clear()
        _central_ids.update(args.central)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    apply_patches()
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

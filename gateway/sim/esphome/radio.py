"""The radio behind a simulated proxy: what an ESP32's Bluetooth stack does for the API, here
done by bleak on one of the rig's adapters (an ESP32 proxy is, to the controllers, a central
like the gateway's own adapter).

``ProxyRadio`` is the whole of what the API server needs; ``BleakRadio`` is the rig's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError

from firmware_bridge.bleak_compat import acquire_mtu
from gateway.sim.errors import SimError

# Bluetooth base UUID: a 16-bit UUID is 0000xxxx-0000-1000-8000-00805f9b34fb.
BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"
CCCD_PREFIX = "00002902"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
# A proxy forwards legacy advertising and scan response data: 31 bytes each.
MAX_AD_BYTES = 62
# The connect an ESP32 gives up on (ESPHome's own bound is 20 s; the rig answers in ms).
CONNECT_TIMEOUT_S = 20.0


class RadioError(SimError):
    """The proxy's radio could not do it; ``code`` is the GATT/HCI status sent back."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ESP-IDF's status codes as ESPHome forwards them (esp_gatt_status_t / HCI reasons).
GATT_ERROR = 0x85  # ESP_GATT_ERROR
NO_RESOURCES = 0x80  # ESP_GATT_NO_RESOURCES: every slot taken
CONN_FAILED = 0x3E  # HCI: connection failed to be established
PEER_TERMINATED = 0x13  # HCI: remote user terminated the connection
ATT_UNLIKELY_ERROR = 0x0E  # ATT: the request failed for a reason no other code names
ATT_INSUFFICIENT_AUTHENTICATION = 0x05  # ATT: no bond the peer knows (device-ble.md 3.1)


def gatt_code(exc: BaseException) -> int:
    """What the ESP32 forwards for a failed request: the peer's ATT error where the rig's
    BlueZ names one (a controller without our bond answers 0x05: "Not paired")."""
    if isinstance(exc, BleakDBusError) and exc.dbus_error == "org.bluez.Error.NotPermitted" \
            and "not paired" in str(exc).lower():
        return ATT_INSUFFICIENT_AUTHENTICATION
    return GATT_ERROR


@dataclass(frozen=True)
class Advert:
    address: str
    address_type: int  # 0 public, 1 random
    rssi: int
    data: bytes  # raw AD structures, as the proxy forwards them


@dataclass(frozen=True)
class Descriptor:
    uuid: str
    handle: int


@dataclass(frozen=True)
class Characteristic:
    uuid: str
    handle: int
    properties: int
    descriptors: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Service:
    uuid: str
    handle: int
    characteristics: tuple[Characteristic, ...]


class RadioLink(Protocol):
    mtu: int

    async def services(self) -> list[Service]: ...
    async def read(self, handle: int) -> bytes: ...
    async def write(self, handle: int, data: bytes, response: bool) -> None: ...
    async def read_descriptor(self, handle: int) -> bytes: ...
    async def write_descriptor(self, handle: int, data: bytes) -> None: ...
    async def notify(self, handle: int, on_data: Callable[[bytes], None] | None) -> None: ...
    async def pair(self) -> None:
        """Bond with the device (Just Works), as the ESP32 does when it first connects."""
        ...

    async def disconnect(self) -> None: ...


class ProxyRadio(Protocol):
    async def start_scan(self, on_advert: Callable[[Advert], None]) -> None: ...
    async def stop_scan(self) -> None: ...
    async def connect(self, address: str, on_lost: Callable[[], None]) -> RadioLink: ...
    async def forget(self, address: str) -> None:
        """Drop the bond with ``address`` (and a link to it): the ESP32's unpair."""
        ...


PROPERTY_BITS = {"broadcast": 0x01, "read": 0x02, "write-without-response": 0x04,
                 "write": 0x08, "notify": 0x10, "indicate": 0x20,
                 "authenticated-signed-writes": 0x40, "extended-properties": 0x80}


def ad_structures(advert: AdvertisementData) -> bytes:
    """The raw advertising data behind what bleak parsed (BLE Core Supplement part A)."""
    out = bytearray(b"\x02\x01\x06")  # flags: LE general discoverable, no BR/EDR
    if advert.local_name:
        name = advert.local_name.encode()[:29]
        out += bytes((len(name) + 1, 0x09)) + name
    if advert.tx_power is not None:
        out += bytes((2, 0x0A, advert.tx_power & 0xFF))
    for company, data in advert.manufacturer_data.items():
        body = company.to_bytes(2, "little") + data
        out += bytes((len(body) + 1, 0xFF)) + body
    for uuid in advert.service_uuids:
        raw = _uuid_bytes(uuid)
        out += bytes((len(raw) + 1, 0x03 if len(raw) == 2 else 0x07)) + raw
    for uuid, data in advert.service_data.items():
        raw = _uuid_bytes(uuid)
        out += bytes((len(raw) + len(data) + 1, 0x16 if len(raw) == 2 else 0x21)) + raw + data
    return bytes(out[:MAX_AD_BYTES])


def _uuid_bytes(uuid: str) -> bytes:
    uuid = uuid.lower()
    if uuid.endswith(BASE_UUID_TAIL) and uuid.startswith("0000"):
        return bytes.fromhex(uuid[4:8])[::-1]
    return bytes.fromhex(uuid.replace("-", ""))[::-1]


class BleakLink:
    def __init__(self, client: BleakClient) -> None:
        self.client = client
        self.mtu = client.mtu_size
        # Client configuration descriptors the rig's BlueZ does not list but a device has:
        # handle -> its characteristic's handle.
        self._cccds: dict[int, int] = {}
        self._notifying: set[int] = set()
        self._mapped = False

    async def _map(self) -> None:
        """A client that cached the table from an earlier link (bleak-esphome does, per
        device) writes CCCDs without asking for services on this one: the table a real
        device has is there all the same."""
        if not self._mapped:
            await self.services()

    async def services(self) -> list[Service]:
        """The device's table as an ESP32 reads it over the air, so with a CCCD under every
        notifying characteristic (real BlueZ lists them; BlueZoo does not, and bleak-esphome
        writes it after asking the proxy to notify)."""
        used: set[int] = set()
        for service in self.client.services:
            used.add(service.handle)
            for char in service.characteristics:
                used.add(char.handle)
                used.update(d.handle for d in char.descriptors)
        spare = max(used, default=0) + 1
        found = []
        for service in self.client.services:
            chars = []
            for char in service.characteristics:
                descriptors = [Descriptor(d.uuid, d.handle) for d in char.descriptors]
                notifies = {"notify", "indicate"} & set(char.properties)
                if notifies and not any(d.uuid.startswith(CCCD_PREFIX) for d in descriptors):
                    self._cccds[spare] = char.handle
                    descriptors.append(Descriptor(CCCD_UUID, spare))
                    spare += 1
                chars.append(Characteristic(char.uuid, char.handle,
                                            sum(PROPERTY_BITS.get(p, 0) for p in char.properties),
                                            tuple(descriptors)))
            found.append(Service(service.uuid, service.handle, tuple(chars)))
        self._mapped = True
        return found

    async def read(self, handle: int) -> bytes:
        try:
            return bytes(await self.client.read_gatt_char(handle))
        except (BleakError, EOFError) as exc:
            raise RadioError(f"read {handle}: {exc}", gatt_code(exc)) from exc

    async def write(self, handle: int, data: bytes, response: bool) -> None:
        try:
            await self.client.write_gatt_char(handle, data, response=response)
        except (BleakError, EOFError) as exc:
            raise RadioError(f"write {handle}: {exc}", gatt_code(exc)) from exc

    async def read_descriptor(self, handle: int) -> bytes:
        await self._map()
        if handle in self._cccds:
            return b"\x01\x00" if self._cccds[handle] in self._notifying else b"\x00\x00"
        try:
            return bytes(await self.client.read_gatt_descriptor(handle))
        except (BleakError, EOFError) as exc:
            raise RadioError(f"read descriptor {handle}: {exc}", gatt_code(exc)) from exc

    async def write_descriptor(self, handle: int, data: bytes) -> None:
        await self._map()
        descriptor = self.client.services.get_descriptor(handle)
        if handle in self._cccds or (descriptor is not None
                                     and descriptor.uuid.startswith(CCCD_PREFIX)):
            return  # the CCCD: BlueZ writes it itself when notifications start or stop
        try:
            await self.client.write_gatt_descriptor(handle, data)
        except (BleakError, EOFError) as exc:
            raise RadioError(f"write descriptor {handle}: {exc}", gatt_code(exc)) from exc

    async def notify(self, handle: int, on_data: Callable[[bytes], None] | None) -> None:
        try:
            if on_data is None:
                await self.client.stop_notify(handle)
                self._notifying.discard(handle)
            else:
                await self.client.start_notify(handle, lambda _c, data: on_data(bytes(data)))
                self._notifying.add(handle)
        except (BleakError, EOFError) as exc:
            raise RadioError(f"notify {handle}: {exc}", GATT_ERROR) from exc

    async def pair(self) -> None:
        try:
            await self.client.pair()
        except (BleakError, EOFError) as exc:
            raise RadioError(f"pair: {exc}", ATT_INSUFFICIENT_AUTHENTICATION) from exc

    async def disconnect(self) -> None:
        with contextlib.suppress(BleakError, EOFError):
            await self.client.disconnect()


class BleakRadio:
    """bleak on one rig adapter (``hci0`` is the gateway's; a proxy may share it on the rig,
    as BlueZoo links every adapter with every other)."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self._scanner: BleakScanner | None = None
        # What this radio's scan has heard, as BlueZ's objects on its adapter: an ESP32 opens
        # a link by address and the controller answers at its next advertisement (20-30 ms,
        # device-ble.md section 2). A fresh discovery per connect would instead wait for the
        # rig's next scan report (BlueZoo reports once a second), a delay no proxy has.
        self._sighted: dict[str, BLEDevice] = {}

    async def start_scan(self, on_advert: Callable[[Advert], None]) -> None:
        def seen(device: BLEDevice, advert: AdvertisementData) -> None:
            self._sighted[device.address] = device
            on_advert(Advert(device.address, 0, advert.rssi, ad_structures(advert)))

        if self._scanner is None:
            self._scanner = BleakScanner(seen, bluez={"adapter": self.adapter})
            await self._scanner.start()

    async def stop_scan(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            with contextlib.suppress(BleakError):
                await scanner.stop()

    async def connect(self, address: str, on_lost: Callable[[], None]) -> RadioLink:
        # Found with this module's own scanner class: given only an address, bleak looks it up
        # through ``bleak.BleakScanner``, which habluetooth replaces in a process that runs
        # it (the conformance test), and the lookup would come back through the proxy itself.
        device = self._sighted.get(address) or await BleakScanner.find_device_by_address(
            address, timeout=CONNECT_TIMEOUT_S, bluez={"adapter": self.adapter})
        if device is None:
            raise RadioError(f"connect {address}: not heard", CONN_FAILED)
        client = BleakClient(device, bluez={"adapter": self.adapter},
                             disconnected_callback=lambda _c: on_lost(),
                             timeout=CONNECT_TIMEOUT_S)
        try:
            await client.connect()
            await acquire_mtu(client)
        except (BleakError, TimeoutError, EOFError) as exc:
            self._sighted.pop(address, None)  # perhaps a BlueZ object since removed
            with contextlib.suppress(BleakError, EOFError):
                await client.disconnect()
            raise RadioError(f"connect {address}: {exc}", CONN_FAILED) from exc
        except asyncio.CancelledError:
            # Cut short once connected (the MTU exchange): the link must not outlive the
            # ESP32's power or its client. bleak undoes a Connect cut short by itself.
            with contextlib.suppress(BleakError, EOFError):
                await asyncio.shield(client.disconnect())
            raise
        return BleakLink(client)

    async def forget(self, address: str) -> None:
        """BlueZ's RemoveDevice on this rig adapter (bleak's unpair): its bond, and any link."""
        self._sighted.pop(address, None)  # its BlueZ object goes with it
        try:
            await BleakClient(address, bluez={"adapter": self.adapter}).unpair()
        except BleakDeviceNotFoundError:
            return  # no bond to forget
        except (BleakError, EOFError) as exc:
            raise RadioError(f"unpair {address}: {exc}", GATT_ERROR) from exc

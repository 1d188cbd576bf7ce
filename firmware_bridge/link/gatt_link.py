"""The GATT pipe a controller session talks through, and its bleak implementation.

``GattLink`` is the small interface the session needs; tests and benchmarks can stand a fake
behind it. ``BleakGattLink`` translates every bleak/BlueZ failure into firmware_bridge errors
once (``bleak_compat.translated``), keeping the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from bleak import BleakClient
from bleak.backends.device import BLEDevice

from firmware_bridge.bleak_compat import (
    BRING_UP_TIMEOUT_S,
    acquire_mtu,
    quiet_disconnect,
    translated,
)
from firmware_bridge.errors import BridgeError

# Called as bleak calls a notification callback: (the transport's own handle of the
# characteristic, which a subscriber ignores; the value). The same shape lets a link hand the
# subscriber to bleak with no frame of its own in between: it runs for every notification.
NotifyCallback = Callable[[object, bytes | bytearray], None]


class GattLink(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def mtu(self) -> int: ...
    @property
    def is_connected(self) -> bool: ...
    def has(self, uuid: str) -> bool: ...
    async def read(self, uuid: str) -> bytes: ...
    async def write(self, uuid: str, data: bytes) -> None: ...
    async def subscribe(self, uuid: str, callback: NotifyCallback) -> None: ...
    async def disconnect(self) -> None: ...


# Makes and connects a client; given the callback bleak calls when the link drops.
Opener = Callable[[Callable[[BleakClient], None]], Awaitable[BleakClient]]


class BleakGattLink:
    """A connected controller over bleak/BlueZ."""

    def __init__(self, client: BleakClient, address: str, characteristics: set[str]) -> None:
        self._client = client
        self._address = address
        self._uuids = characteristics

    @classmethod
    async def connect(cls, target: str | BLEDevice, *, adapter: str, timeout_s: float,
                      on_disconnect: Callable[[], None] | None = None,
                      opener: Opener | None = None) -> BleakGattLink:
        """Connect to ``target``; a ``BLEDevice`` from a scan spares bleak its own scan (which
        would run while the gateway keeps the radio quiet for connects). ``opener`` makes and
        connects the client another way (through an ESPHome proxy); ``adapter`` is then
        unused."""
        def disconnected(_client: BleakClient) -> None:
            if on_disconnect is not None:
                on_disconnect()

        address = target if isinstance(target, str) else target.address
        with translated(f"connect {address}"):
            if opener is not None:
                client = await opener(disconnected)
            else:
                client = BleakClient(target, bluez={"adapter": adapter}, timeout=timeout_s,
                                     disconnected_callback=disconnected)
                await client.connect()
        link = cls(client, address, {c.uuid for s in client.services for c in s.characteristics})
        try:
            with translated(f"acquire MTU {address}"):
                async with asyncio.timeout(BRING_UP_TIMEOUT_S):
                    await acquire_mtu(client)
        except BridgeError:
            await link.disconnect()
            raise
        return link

    @property
    def address(self) -> str:
        return self._address

    @property
    def mtu(self) -> int:
        return int(self._client.mtu_size)

    @property
    def is_connected(self) -> bool:
        return bool(self._client.is_connected)

    def has(self, uuid: str) -> bool:
        return uuid in self._uuids

    async def read(self, uuid: str) -> bytes:
        with translated(f"read {uuid[4:8] if uuid.startswith('0000') else uuid[-4:]}"):
            return bytes(await self._client.read_gatt_char(uuid))

    async def write(self, uuid: str, data: bytes) -> None:
        # Every custom characteristic takes Write Requests only (device-ble.md 3.4).
        with translated(f"write {uuid[-4:]}"):
            await self._client.write_gatt_char(uuid, data, response=True)

    async def subscribe(self, uuid: str, callback: NotifyCallback) -> None:
        with translated(f"subscribe {uuid[-4:]}"):
            await self._client.start_notify(uuid, callback)

    async def disconnect(self) -> None:
        await quiet_disconnect(self._client)

    async def pair(self) -> None:
        with translated(f"pair {self._address}"):
            await self._client.pair()

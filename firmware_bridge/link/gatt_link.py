"""The GATT pipe a controller session talks through, and its bleak implementation.

``GattLink`` is the small interface the session needs; tests and benchmarks can stand a fake
behind it. ``BleakGattLink`` translates every bleak/BlueZ failure into firmware_bridge errors
once, keeping the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import (
    BleakCharacteristicNotFoundError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
)

from firmware_bridge.errors import (
    AttRefused,
    BridgeError,
    LinkDBusError,
    LinkLost,
    PeerNotFound,
    TransportError,
    TransportTimeout,
)

NotifyCallback = Callable[[str, bytes], None]


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


class CharacteristicMissing(BridgeError):
    """The controller does not expose a characteristic (older firmware, or a GATT cache gone
    stale after a firmware change)."""


@contextlib.contextmanager
def translated(operation: str) -> Iterator[None]:
    """Map bleak's exceptions to ours, once, at the boundary."""
    try:
        yield
    except BleakGATTProtocolError as exc:
        raise AttRefused(int(exc.args[0]), operation) from exc
    except BleakCharacteristicNotFoundError as exc:
        raise CharacteristicMissing(f"{operation}: characteristic not found") from exc
    except BleakDeviceNotFoundError as exc:
        raise PeerNotFound(f"{operation}: device {exc.identifier} not found") from exc
    except BleakDBusError as exc:
        raise LinkDBusError(exc.dbus_error, exc.dbus_error_details or "") from exc
    except TimeoutError as exc:
        raise TransportTimeout(f"{operation}: timed out") from exc
    except EOFError as exc:
        raise LinkLost(f"{operation}: D-Bus connection closed") from exc
    except BleakError as exc:
        text = str(exc)
        if "not connected" in text.lower():
            raise LinkLost(f"{operation}: {text}") from exc
        raise TransportError(f"{operation}: {text}") from exc


class BleakGattLink:
    """A connected controller over bleak/BlueZ."""

    def __init__(self, client: BleakClient, address: str) -> None:
        self._client = client
        self._address = address
        self._uuids: set[str] = set()
        self._callbacks: dict[str, NotifyCallback] = {}

    @classmethod
    async def connect(cls, target: str | BLEDevice, *, adapter: str, timeout_s: float,
                      on_disconnect: Callable[[], None] | None = None) -> BleakGattLink:
        """Connect to ``target``; a ``BLEDevice`` from a scan spares bleak its own scan (which
        would run while the gateway keeps the radio quiet for connects)."""
        def disconnected(_client: BleakClient) -> None:
            if on_disconnect is not None:
                on_disconnect()

        address = target if isinstance(target, str) else target.address
        client = BleakClient(target, bluez={"adapter": adapter}, timeout=timeout_s,
                             disconnected_callback=disconnected)
        with translated(f"connect {address}"):
            await client.connect()
        link = cls(client, address)
        try:
            with translated(f"acquire MTU {address}"):
                await acquire_mtu(client)
        except BridgeError:
            await link.disconnect()
            raise
        link._uuids = {c.uuid for s in client.services for c in s.characteristics}
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
        def relay(_char: Any, data: bytearray) -> None:
            callback(uuid, bytes(data))

        with translated(f"subscribe {uuid[-4:]}"):
            await self._client.start_notify(uuid, relay)

    async def disconnect(self) -> None:
        with contextlib.suppress(BleakError, EOFError, TimeoutError, asyncio.CancelledError):
            await self._client.disconnect()

    async def pair(self) -> None:
        with translated(f"pair {self._address}"):
            await self._client.pair()


async def acquire_mtu(client: BleakClient) -> None:
    """BlueZ only reports the negotiated MTU through AcquireWrite/AcquireNotify; bleak exposes
    that as the private ``_acquire_mtu`` (tests/firmware_bridge/test_bleak_conformance.py pins
    it). Without it ``mtu_size`` says 23 and the session would wrongly warn about the MTU."""
    backend: Any = client._backend
    acquire: Callable[[], Awaitable[None]] | None = getattr(backend, "_acquire_mtu", None)
    if acquire is not None:
        await acquire()

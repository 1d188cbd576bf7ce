"""SMP over GATT with bleak on a chosen adapter (ota.md 3.5), in smpclient's transport shape.

Requests go out as Write Without Response in pieces of ATT_MTU - 3; replies arrive as
notifications and are reassembled by the SMP header's length. Unlike smpclient's BLE transport
this one connects on a given adapter to a given device (the gateway's radio), and gives up its
own scan when handed a BLEDevice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bleak import BleakClient
from bleak.backends.device import BLEDevice

from firmware_bridge.bleak_compat import (
    BRING_UP_TIMEOUT_S,
    acquire_mtu,
    quiet_disconnect,
    translated,
)
from firmware_bridge.errors import LinkLost, TransportError
from firmware_bridge.gatt import uuids
from firmware_bridge.smp.wire import HEADER_SIZE, parse_header

# Writes whose D-Bus reply is still outstanding before send() waits for one: bounds memory
# when the link stalls; 16 pieces cover a window of 8 two-piece frames.
MAX_WRITES_IN_FLIGHT = 16
# A reply larger than this is not an SMP frame from this device (buf_size is 384..2475).
MAX_REPLY = 8192


# Makes the client for a path other than a local adapter (an ESPHome proxy through
# habluetooth's wrapper): (disconnected callback, connect timeout) -> an unconnected client.
ClientFactory = Callable[[Callable[[BleakClient], None], float], BleakClient]


class BleSmpTransport:
    def __init__(self, target: str | BLEDevice, *, adapter: str,
                 client_factory: ClientFactory | None = None) -> None:
        self._target = target
        self._adapter = adapter
        self._factory = client_factory
        self._client: BleakClient | None = None
        self._buffer = bytearray()
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._mtu = 23
        self._writes: set[asyncio.Future[None]] = set()
        self._write_error: BaseException | None = None

    async def connect(self, timeout_s: float) -> None:
        def lost(_client: BleakClient) -> None:
            self._frames.put_nowait(None)

        client = (self._factory(lost, timeout_s) if self._factory is not None else
                  BleakClient(self._target, bluez={"adapter": self._adapter}, timeout=timeout_s,
                              disconnected_callback=lost))
        with translated("SMP connect"):
            await client.connect()
        try:
            with translated("SMP bring-up"):
                async with asyncio.timeout(BRING_UP_TIMEOUT_S):
                    await self._bring_up(client)
        except BaseException:
            # Whatever ended the bring-up (stuck, refused, cancelled), a half-made link must
            # not stay connected with nobody owning it.
            await quiet_disconnect(client)
            raise
        self._client = client
        self._mtu = client.mtu_size

    async def _bring_up(self, client: BleakClient) -> None:
        await acquire_mtu(client)
        if client.services.get_characteristic(uuids.SMP_CHARACTERISTIC) is None:
            raise TransportError("the device has no SMP service (firmware without MCUboot): "
                                 "BLE firmware update is impossible")
        await client.start_notify(uuids.SMP_CHARACTERISTIC, self._on_notify)

    def _on_notify(self, _char: object, data: bytearray) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER_SIZE:
            need = HEADER_SIZE + parse_header(bytes(self._buffer[:HEADER_SIZE])).length
            if need > MAX_REPLY:
                self._buffer.clear()  # not a frame boundary: drop and wait for the next
                return
            if len(self._buffer) < need:
                return
            self._frames.put_nowait(bytes(self._buffer[:need]))
            del self._buffer[:need]

    async def send(self, data: bytes) -> None:
        client = self._client
        if client is None or not client.is_connected:
            raise LinkLost("SMP link is not connected")
        piece = max(20, self._mtu - 3)
        if self._write_error is not None:
            raise LinkLost(f"SMP write failed: {self._write_error}")
        # Write Without Response needs no answer from the peer, only BlueZ's D-Bus reply:
        # the writes are issued back to back (D-Bus keeps their order) and their replies
        # collected in the background, so the bus round trip is not paid per piece.
        for start in range(0, len(data), piece):
            write = asyncio.ensure_future(client.write_gatt_char(
                uuids.SMP_CHARACTERISTIC, data[start:start + piece], response=False))
            write.add_done_callback(self._write_done)
            self._writes.add(write)
        if len(self._writes) > MAX_WRITES_IN_FLIGHT:
            await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)

    def _write_done(self, write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        if write.cancelled():
            return
        error = write.exception()
        if error is not None and self._write_error is None:
            self._write_error = error
            self._frames.put_nowait(None)

    async def receive(self) -> bytes:
        frame = await self._frames.get()
        if frame is None:
            raise LinkLost("SMP link disconnected")
        return frame

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await quiet_disconnect(client)

    @property
    def mtu(self) -> int:
        return self._mtu

    def frame_budget(self, buf_size: int) -> int:
        """Frames that fill whole ATT writes: a 384-byte frame would take a 244-byte write and
        a 140-byte one, two link-layer packets for 1.6 packets of data. The largest multiple
        of MTU - 3 within buf_size keeps every packet full."""
        piece = self._mtu - 3
        return buf_size if buf_size <= piece else (buf_size // piece) * piece

"""SMP serial framing (base64 lines, CRC16) over a TCP socket, e.g. QEMU's chardev socket.

pyserial's ``serial.Serial`` does not open ``socket://`` URLs, so smpclient's serial transport
cannot reach a TCP-bridged UART; this transport speaks the same line protocol with asyncio
streams and satisfies smpclient's ``SMPTransport`` protocol, so ``SMPClient`` can use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlparse

from smp import packet as smp_packet

from firmware_bridge.errors import TransportError, TransportTimeout

# Zephyr's console line limit for the SMP UART transport (CONFIG_UART_MCUMGR_RX_BUF_SIZE).
LINE_LENGTH = 128
_FRAME_STARTS = (b"\x06\x09", b"\x04\x14")


def parse_socket_url(address: str) -> tuple[str, int]:
    """Accept ``socket://host:port`` or ``host:port``."""
    url = urlparse(address if "://" in address else f"socket://{address}")
    if url.scheme != "socket" or not url.hostname or url.port is None:
        raise TransportError(f"not a socket://host:port address: {address!r}")
    return url.hostname, url.port


class TcpSerialTransport:
    """One SMP-over-serial connection carried by TCP."""

    _smp_server_transport_buffer_size: int | None = None
    # Zephyr reassembles a serial packet (2-byte length + frame + 2-byte CRC) in one netbuf of
    # buf_size bytes, so a frame may use buf_size - 4 of it; a bigger one is silently dropped.
    FRAME_OVERHEAD = 4

    def __init__(self, line_length: int = LINE_LENGTH, buffer_size: int = 384) -> None:
        self._line_length = line_length
        self._default_buffer = buffer_size
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, address: str, timeout_s: float) -> None:
        host, port = parse_socket_url(address)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    try:
                        self._reader, self._writer = await asyncio.open_connection(host, port)
                    except ConnectionRefusedError:
                        await asyncio.sleep(0.05)
                    else:
                        return
        except TimeoutError as exc:
            raise TransportTimeout(f"no listener at {address} within {timeout_s}s") from exc

    async def disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def send(self, data: bytes) -> None:
        if self._writer is None:
            raise TransportError("not connected")
        try:
            for line in smp_packet.encode(data, line_length=self._line_length):
                self._writer.write(line)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise TransportError("serial link closed while sending") from exc

    async def receive(self) -> bytes:
        if self._reader is None:
            raise TransportError("not connected")
        decoder = smp_packet.decode()
        next(decoder)
        started = False
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                raise TransportError("serial link closed while receiving") from exc
            # The console shares the UART: anything that is not an SMP line is log output.
            if not line.startswith(_FRAME_STARTS):
                continue
            if not started and not line.startswith(_FRAME_STARTS[0]):
                continue  # the tail of a packet sent before we connected
            started = True
            try:
                decoder.send(line)
            except StopIteration as done:
                frame: bytes = done.value
                return frame
            except Exception:  # noqa: BLE001 - smp.packet raises bare exceptions on bad CRC/base64
                # A damaged packet is a lost reply (the request is resent on timeout), not a
                # dead link: start over at the next packet.
                decoder = smp_packet.decode()
                next(decoder)
                started = False

    async def send_and_receive(self, data: bytes) -> bytes:
        await self.send(data)
        return await self.receive()

    def initialize(self, smp_server_transport_buffer_size: int) -> None:
        self._smp_server_transport_buffer_size = smp_server_transport_buffer_size

    @property
    def mtu(self) -> int:
        return self._smp_server_transport_buffer_size or self._default_buffer

    @property
    def max_unencoded_size(self) -> int:
        """The largest SMP frame the device takes over serial (its netbuf minus framing)."""
        return (self._smp_server_transport_buffer_size or self._default_buffer) - \
            self.FRAME_OVERHEAD

    def frame_budget(self, buf_size: int) -> int:
        return buf_size - self.FRAME_OVERHEAD

"""mcumgr over UDP (port 1337 by default): one SMP frame per datagram, on smpclient's UDP
client, with the frame budget our channel needs."""

from __future__ import annotations

from smpclient.transport.udp import SMPUDPTransport

from firmware_bridge.errors import TransportError, TransportTimeout

DEFAULT_PORT = 1337  # mcumgr's UDP port (Zephyr CONFIG_MCUMGR_TRANSPORT_UDP_PORT)


class UdpSmpTransport:
    def __init__(self) -> None:
        self._inner = SMPUDPTransport()

    async def connect(self, host: str, timeout_s: float, port: int = DEFAULT_PORT) -> None:
        try:
            await self._inner.connect(host, timeout_s, port=port)
        except TimeoutError as exc:
            raise TransportTimeout(f"UDP {host}:{port}: no socket within {timeout_s} s") from exc
        except OSError as exc:
            raise TransportError(f"UDP {host}:{port}: {exc}") from exc

    async def send(self, data: bytes) -> None:
        await self._inner.send(data)

    async def receive(self) -> bytes:
        return bytes(await self._inner.receive())

    async def disconnect(self) -> None:
        await self._inner.disconnect()

    def frame_budget(self, buf_size: int) -> int:
        """Zephyr's UDP transport takes one datagram as one frame, so a frame must fit both
        the device's netbuf and one unfragmented datagram (the path MTU less the IP and UDP
        headers): a frame split over two datagrams is two malformed requests to the device."""
        return min(buf_size, int(self._inner.max_unencoded_size))

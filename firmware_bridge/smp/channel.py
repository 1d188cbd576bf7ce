"""SMP requests over one transport, many in flight, matched to replies by sequence number.

The transport is a ``FrameTransport`` (``smp.transport``): ``smp.udp.UdpSmpTransport``,
``smp.tcp_serial.TcpSerialTransport`` for ``socket://`` serial, or ``smp.ble.BleSmpTransport``.
One reader task owns ``receive``; replies that arrive for a request nobody waits for any more
(a resend made it redundant) are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import structlog

from firmware_bridge.aio import cancelling
from firmware_bridge.errors import BridgeError, DecodeError, LinkLost, TransportTimeout
from firmware_bridge.smp.transport import FrameTransport
from firmware_bridge.smp.wire import (
    HEADER_SIZE,
    Op,
    SmpHeader,
    decode_payload,
    encode_cbor,
    encode_frame,
    parse_header,
)

log = structlog.get_logger(__name__)

SMP_V2 = 1


class DeviceRejected(BridgeError):
    """The device answered with a non-zero rc (v1 ``rc`` or v2 ``err``): a typed refusal."""

    def __init__(self, group: int, rc: int, what: str, reason: str | None = None) -> None:
        text = f"{what}: device returned rc {rc} (group {group})"
        super().__init__(f"{text}: {reason}" if reason else text)
        self.group = group
        self.rc = rc


class SmpProtocolError(DecodeError):
    """A reply that does not fit the SMP protocol."""


def check_rc(reply: dict[str, Any], group: int, what: str) -> dict[str, Any]:
    err = reply.get("err")
    if isinstance(err, dict) and err.get("rc", 0):
        raise DeviceRejected(int(err.get("group", group)), int(err["rc"]), what)
    rc = reply.get("rc", 0)
    if not isinstance(rc, int):
        raise SmpProtocolError(f"{what}: rc {rc!r} is not an integer")
    if rc:
        raise DeviceRejected(group, rc, what, reply.get("rsn"))
    return reply


class SmpChannel:
    def __init__(self, transport: FrameTransport) -> None:
        self.transport = transport
        self._seq = itertools.cycle(range(256))
        self._pending: dict[int, asyncio.Future[tuple[SmpHeader, dict[str, Any]]]] = {}
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.frames_sent = 0
        self.bytes_sent = 0

    async def __aenter__(self) -> SmpChannel:
        self._reader = asyncio.create_task(self._read(), name="smp reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        reader, self._reader = self._reader, None
        try:
            if reader is not None:
                reader.cancel()
                try:
                    await reader  # _read lets only its cancellation out
                except asyncio.CancelledError:
                    if cancelling():
                        raise  # we are being cancelled ourselves, not just our reader
        finally:
            with contextlib.suppress(Exception):  # a transport that is gone is disconnected
                await self.transport.disconnect()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.transport.receive()
                try:
                    header = parse_header(frame)
                    payload = decode_payload(frame[HEADER_SIZE:HEADER_SIZE + header.length])
                    if header.op not in (Op.READ_RSP, Op.WRITE_RSP) or \
                            len(frame) < HEADER_SIZE + header.length:
                        raise SmpProtocolError(f"frame op {header.op} is not a response")
                except DecodeError as exc:
                    log.warning("smp_reply_unreadable", error=str(exc), raw=frame[:32].hex())
                    self._fail_all(SmpProtocolError(f"unreadable SMP reply: {exc}"))
                    continue
                future = self._pending.pop(header.seq, None)
                if future is not None and not future.done():
                    future.set_result((header, payload))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every transport has its own errors: one meaning here
            self._failure = exc
            self._fail_all(LinkLost(f"SMP transport closed: {type(exc).__name__}: {exc}"))

    def _fail_all(self, error: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def request(self, op: Op, group: int, cmd: int, payload: dict[str, Any],
                      timeout_s: float, what: str) -> dict[str, Any]:
        """Send one request and wait for its reply; raises DeviceRejected, SmpProtocolError,
        TransportTimeout or LinkLost."""
        if self._failure is not None:
            raise LinkLost(f"{what}: SMP transport already closed")
        seq = next(self._seq)
        body = encode_cbor(payload)
        frame = encode_frame(SmpHeader(int(op), SMP_V2, 0, len(body), group, seq, cmd), body)
        future: asyncio.Future[tuple[SmpHeader, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future())
        stale = self._pending.pop(seq, None)
        if stale is not None and not stale.done():
            stale.cancel()  # 256 requests later: nobody waits for that one any more
        self._pending[seq] = future
        try:
            try:
                async with self._send_lock:
                    await self.transport.send(frame)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A transport that cannot send is gone for every request in flight, not just
                # this one: fail them all now rather than let each wait for its timeout.
                self._failure = exc
                self._fail_all(LinkLost(f"SMP transport failed to send: {exc}"))
                raise LinkLost(f"{what}: send failed: {exc}") from exc
            self.frames_sent += 1
            self.bytes_sent += len(frame)
            try:
                async with asyncio.timeout(timeout_s):
                    header, reply = await future
            except TimeoutError:
                raise TransportTimeout(f"{what}: no reply within {timeout_s:.1f} s") from None
        finally:
            # Whatever ended this request (reply, timeout, cancel, send failure), the future
            # must not linger: a late failure on it would never be retrieved.
            if self._pending.get(seq) is future:
                del self._pending[seq]
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # mark a failure nobody will await now as seen
        if header.group != group or header.cmd != cmd:
            raise SmpProtocolError(f"{what}: reply for group {header.group} cmd {header.cmd}")
        return check_rc(reply, group, what)

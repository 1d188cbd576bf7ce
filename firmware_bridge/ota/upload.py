"""The pipelined image upload (ota.md section 4): a window of chunk requests in flight, every
next offset taken from the device, resends on timeout, and a first chunk with the erase budget.

A dropped request frame shows up as the following reply carrying the device's (older) offset:
the window is resynchronised there, so a drop costs at most one window of resent data.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from firmware_bridge.errors import TransportTimeout
from firmware_bridge.ota.outcome import Phase, Progress
from firmware_bridge.smp.channel import SmpChannel, SmpProtocolError
from firmware_bridge.smp.commands import IMAGE_UPLOAD
from firmware_bridge.smp.wire import HEADER_SIZE, Group, Op, encode_cbor

log = structlog.get_logger(__name__)

# The first chunk of a new upload erases the slot synchronously (ota.md 4.2, 4.8): 60 s.
FIRST_CHUNK_TIMEOUT_S = 60.0
# A continuation chunk answers in tens of ms; 10 s (ota.md 4.10) before resending.
CHUNK_TIMEOUT_S = 10.0
# Consecutive timeouts without progress before the upload is given up as a dead link.
MAX_STALLS = 5
# The data size the phone app uploads with successfully (ota.md 4.7 fallback).
FALLBACK_CHUNK = 128
# The first chunk must carry the whole 32-byte image header (ota.md 4.7).
MIN_FIRST_DATA = 32


@dataclass(frozen=True)
class UploadPlan:
    window: int
    frame_budget: int  # whole SMP frame, header included (device buf_size)
    first_timeout_s: float = FIRST_CHUNK_TIMEOUT_S
    timeout_s: float = CHUNK_TIMEOUT_S


def _frame_size(payload: dict[str, Any]) -> int:
    return HEADER_SIZE + len(encode_cbor(payload))


def max_data(budget: int, total: int, sha: bytes | None) -> int:
    """The largest data length whose encoded frame fits ``budget`` (measured, not tabled)."""
    probe: dict[str, Any] = {"off": total, "data": b""}
    if sha is not None:
        probe = {"off": 0, "data": b"", "len": total, "sha": sha}
    size = budget - _frame_size(probe)
    while size > 0:
        probe["data"] = bytes(size)
        if _frame_size(probe) <= budget:
            return size
        size -= 1
    raise SmpProtocolError(f"a frame budget of {budget} bytes leaves no room for data")


class Uploader:
    """Uploads ``image`` through ``channel``; ``run`` returns when the device's offset reaches
    the end. Raises the channel's errors (LinkLost, TransportTimeout, DeviceRejected...)."""

    def __init__(self, channel: SmpChannel, image: bytes, sha: bytes, plan: UploadPlan,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_ack: Callable[[int], None] | None = None) -> None:
        self.channel = channel
        self.image = image
        self.sha = sha
        self.plan = plan
        self.total = len(image)
        self.chunk = max_data(plan.frame_budget, self.total, None)
        self.first_chunk = max(MIN_FIRST_DATA, min(max_data(plan.frame_budget, self.total, sha),
                                                   self.total))
        self.on_progress = on_progress
        self.on_ack = on_ack
        self.sent_bytes = 0
        self.resends = 0
        self._started = time.monotonic()
        self._start_offset = 0

    async def first(self) -> int:
        """The first-chunk request: starts a new upload, or resumes one with the same sha.
        A silent first chunk may be a frame the device cannot take: retry once with the
        128-byte chunks the app uses and keep that size (ota.md 4.7)."""
        for attempt in range(2):
            data = self.image[:self.first_chunk]
            self.sent_bytes += len(data)
            try:
                reply = await self.channel.request(
                    Op.WRITE, Group.IMAGE, IMAGE_UPLOAD,
                    {"off": 0, "data": data, "len": self.total, "sha": self.sha},
                    self.plan.first_timeout_s, "upload first chunk")
            except TransportTimeout:
                if attempt or self.chunk <= FALLBACK_CHUNK:
                    raise
                log.warning("upload_first_chunk_silent", chunk=self.chunk,
                            fallback=FALLBACK_CHUNK)
                self.chunk = FALLBACK_CHUNK
                self.first_chunk = max(MIN_FIRST_DATA, min(FALLBACK_CHUNK, self.total))
                continue
            return self._offset(reply)
        raise AssertionError("unreachable")

    def _offset(self, reply: dict[str, Any]) -> int:
        off = reply.get("off")
        if not isinstance(off, int) or not 0 <= off <= self.total:
            raise SmpProtocolError(f"upload reply offset {off!r} is outside 0..{self.total}")
        return off

    async def run(self) -> None:
        acked = await self.first()
        self._start_offset = acked
        self._acked(acked)
        stalls = 0
        while acked < self.total:
            try:
                new = await self._slide(acked)
            except TransportTimeout:
                # A reply (or its request) vanished: resend from the last acknowledged offset.
                stalls += 1
                if stalls >= MAX_STALLS:
                    raise
                self.resends += 1
                log.info("upload_resend", offset=acked, stalls=stalls)
                continue
            if new == 0 and acked > 0:
                # The device reset and lost the context: start over with the first chunk,
                # which carries the sha (ota.md 4.6, safety net).
                new = await self.first()
            stalls = 0 if new > acked else stalls + 1
            if stalls >= MAX_STALLS:
                raise TransportTimeout(f"upload stuck at offset {acked}")
            acked = new
            self._acked(acked)

    async def _slide(self, start: int) -> int:
        """A sliding window from ``start``: keep ``window`` chunks in flight, advance on each
        in-order reply; return when done or when the device reports another offset (a lost
        frame, a rewind), which becomes the caller's new start."""
        in_flight: deque[tuple[int, asyncio.Task[dict[str, Any]]]] = deque()
        next_off = acked = start
        try:
            while acked < self.total:
                while len(in_flight) < self.plan.window and next_off < self.total:
                    data = self.image[next_off:next_off + self.chunk]
                    self.sent_bytes += len(data)
                    in_flight.append((next_off + len(data), asyncio.create_task(
                        self.channel.request(Op.WRITE, Group.IMAGE, IMAGE_UPLOAD,
                                             {"off": next_off, "data": data},
                                             self.plan.timeout_s,
                                             f"upload chunk at {next_off}"))))
                    next_off += len(data)
                    await asyncio.sleep(0)  # the frame goes out before the next is queued
                end, task = in_flight.popleft()
                reply_off = self._offset(await task)
                if reply_off != end:
                    log.debug("upload_resync", expected=end, device=reply_off)
                    return reply_off  # the rest of the window is discarded by the device
                acked = end
                if self.on_ack:
                    self.on_ack(acked)
                self._progress(acked)
            return acked
        finally:
            for _end, task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*(t for _e, t in in_flight), return_exceptions=True)

    def _acked(self, offset: int) -> None:
        if self.on_ack:
            self.on_ack(offset)
        self._progress(offset)

    def _progress(self, offset: int) -> None:
        if self.on_progress is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        done = offset - self._start_offset
        rate = done / elapsed
        eta = (self.total - offset) / rate if rate > 0 else None
        self.on_progress(Progress(Phase.UPLOAD, offset, self.total, rate, eta))

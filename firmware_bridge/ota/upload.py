"""The pipelined image upload (ota.md section 4): a window of chunk requests in flight, every
next offset taken from the device, resends on timeout, and a first chunk with the erase budget.

A dropped request frame shows up as the following reply carrying the device's (older) offset,
and a dropped reply as the next reply arriving first: the window is resynchronised (or moved
on) at once, so a drop costs one round trip and at most one window of resent data; the
resend timeout is only for silence.
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
from firmware_bridge.smp.commands import IMAGE_UPLOAD, upload_offset
from firmware_bridge.smp.wire import HEADER_SIZE, Group, Op, encode_cbor

log = structlog.get_logger(__name__)

# The first chunk of a new upload erases the slot before it answers (ota.md 4.2, 4.8): a full
# 728 KiB slot on the nRF52840 takes ~9 s; twice that covers a busy peer. Silence this long at
# one frame size means the device cannot take the frame (ota.md 4.7). A lost first frame is
# not waited on this long: copies go out meanwhile (``FIRST_CHUNK_COPIES``). With an explicit
# erase first (``pre_erase``) the first chunk answers like any other.
FIRST_CHUNK_TIMEOUT_S = 20.0
# How many copies of a silent first chunk are in the device at most, the first included. A
# copy is safe (ota.md 4.2, 4.5: the device takes it as a resume of the upload its sha names
# and writes nothing), so one goes out after each resend timeout, doubling, while the first may
# still be erasing: a lost first frame costs one resend timeout, not the erase allowance (the
# QEMU peer loses the first frame after boot in about one upload in 15). Three leave the
# device's fourth buffer free.
FIRST_CHUNK_COPIES = 3
# The ceiling for a continuation chunk's reply (ota.md 4.10: 10 s); the resend timeout itself
# follows the measured round trip (``ResendTimer``), so a lost frame costs about one RTO.
CHUNK_TIMEOUT_S = 10.0
# The floor of the resend timeout: a BLE connection event with slave latency, a flash page
# write and a Pi's scheduling jitter stay well below it, so a slow reply is not taken for lost.
MIN_RESEND_S = 1.0
# Consecutive timeouts without progress before the upload is given up as a dead link.
MAX_STALLS = 5
# The data size the phone app uploads with successfully (ota.md 4.7 fallback).
FALLBACK_CHUNK = 128
# The first chunk must carry the whole 32-byte image header (ota.md 4.7).
MIN_FIRST_DATA = 32
# Clean acknowledgements at the window's ceiling before probing one request more.
PROBE_AFTER_ACKS = 64
# What a window has shown of its losses starts from this many clean chunks: two losses early
# in an upload are not yet a rate. The QEMU peer loses one frame in 50-200 chunks, now and then
# several within twenty; a device that cannot take the window loses one in every window.
PRIOR_CLEAN_CHUNKS = 24


@dataclass(frozen=True)
class UploadPlan:
    window: int  # the starting window (the device's buf_count - 1)
    frame_budget: int  # whole SMP frame, header included (device buf_size)
    first_timeout_s: float = FIRST_CHUNK_TIMEOUT_S
    timeout_s: float = CHUNK_TIMEOUT_S
    max_window: int | None = None  # None: fixed at ``window``; else adapt within 1..max_window


@dataclass
class UploadCost:
    """What the link cost the upload, reported with the outcome."""

    frames_lost: int = 0  # requests or replies that never came back (timeouts, resyncs)
    windows_resent: int = 0
    window: int = 0  # where the window settled


class ResendTimer:
    """The resend timeout from measured round trips (RFC 6298's estimator): smoothed RTT plus
    four deviations, between MIN_RESEND_S and the ceiling, doubled after each timeout."""

    def __init__(self, ceiling_s: float) -> None:
        self.ceiling_s = ceiling_s
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 1

    def sample(self, rtt_s: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt_s, rtt_s / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt_s)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt_s
        self.backoff = 1

    def timed_out(self) -> None:
        self.backoff = min(self.backoff * 2, 8)

    @property
    def resend_s(self) -> float:
        """How long a reply may take before its request is presumed lost, backoff aside: the
        floor until a round trip is measured."""
        return MIN_RESEND_S if self.srtt is None else max(MIN_RESEND_S,
                                                          self.srtt + 4 * self.rttvar)

    @property
    def timeout_s(self) -> float:
        if self.srtt is None:
            return self.ceiling_s
        return min(self.ceiling_s, self.resend_s * self.backoff)


class Window:
    """How many chunk requests go out before the first is answered: starts below the device's
    buffer count (Nordic's Device Manager keeps buf_count - 1 in flight: with every netbuf
    taken, replies go missing), grows by one per clean window up to a ceiling, and is one
    smaller for a window after a loss (losses before the window after a loss came back whole
    are that same loss: the peer's UART stalled for a few frames).

    The ceiling comes down only on evidence. A loss costs about one round trip, ``w`` chunk
    times at window ``w``, and window ``w - 1`` sends one chunk fewer per round trip: ``w``
    pays while it loses less than one chunk in ``w * (w - 1)`` (one in 12 at 4). Each window
    keeps its own count of chunks and losses (a timeout weighs as the round trips it cost), and
    the ceiling drops when the ceiling's own rate passes that line. A spell of chance losses
    then costs its round trips and no more: the window neither collapses nor stays low for the
    rest of the upload. Probes above the ceiling again after a long clean run."""

    def __init__(self, start: int, maximum: int | None) -> None:
        self.size = max(1, start)
        self.maximum = self.size if maximum is None else max(1, maximum)
        self.ceiling = self.maximum
        self._clean = 0
        self._since_loss: int | None = None  # acknowledgements since the last loss
        self._recovery = 0  # acknowledgements after a loss before another is a new one
        self._chunks: dict[int, int] = {}
        self._losses: dict[int, float] = {}

    def acked(self) -> None:
        self._chunks[self.size] = self._chunks.get(self.size, 0) + 1
        self._clean += 1
        if self._since_loss is not None:
            self._since_loss += 1
        if self.size < self.ceiling and self._clean >= self.size:
            self.size += 1
            self._clean = 0
        elif (self.size == self.ceiling and self.ceiling < self.maximum
              and self._clean >= PROBE_AFTER_ACKS):
            self.ceiling += 1
            self._clean = 0

    def lost(self, weight: float = 1.0) -> None:
        """A loss at the current size; ``weight``: the round trips it cost (a timeout: its
        resend timeout over the round trip)."""
        if self._since_loss is not None and self._since_loss < self._recovery:
            return  # the same loss, still being resent
        self._losses[self.size] = self._losses.get(self.size, 0.0) + weight
        top = self.ceiling
        if top > 1 and (self._losses.get(top, 0.0) * top * (top - 1)
                        > self._chunks.get(top, 0) + PRIOR_CLEAN_CHUNKS):
            self.ceiling = top - 1
        self.size = max(1, min(self.size - 1, self.ceiling), self.ceiling - 1)
        self._clean = 0
        self._since_loss = 0
        self._recovery = self.size


def _forget(task: asyncio.Task[Any]) -> None:
    """Stop waiting for a request whose reply no longer matters; its outcome, whatever it is,
    is seen here so that no failure is left unretrieved."""
    if task.done():
        if not task.cancelled():
            task.exception()
        return
    task.cancel()


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
    the end. Raises the channel's errors (LinkLost, TransportTimeout, DeviceRejected...).
    ``window``, ``timer`` and ``cost`` outlive one connection: an upload that resumes after a
    dropped link keeps what it learned of the link."""

    def __init__(self, channel: SmpChannel, image: bytes, sha: bytes, plan: UploadPlan,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_ack: Callable[[int], None] | None = None, *,
                 window: Window | None = None, timer: ResendTimer | None = None,
                 cost: UploadCost | None = None) -> None:
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
        self.window = window or Window(plan.window, plan.max_window)
        self.timer = timer or ResendTimer(plan.timeout_s)
        self.cost = cost or UploadCost()
        self.sent_bytes = 0
        self._stale: list[asyncio.Task[dict[str, Any]]] = []
        self._started = time.monotonic()
        self._start_offset = 0

    async def first(self) -> int:
        """The first-chunk request: starts a new upload, or resumes one with the same sha.
        A first chunk silent through the first chunk's own timeout, all its copies with it,
        is a frame the device cannot take: it is resent at the 128-byte size the app uses
        (kept from then on, ota.md 4.7), then again at that size, up to MAX_STALLS times."""
        for attempt in range(MAX_STALLS):
            try:
                reply = await self._first_with_copies()
            except TransportTimeout:
                self.cost.frames_lost += 1
                if attempt + 1 >= MAX_STALLS:
                    raise
                if self.chunk > FALLBACK_CHUNK:
                    log.warning("upload_first_chunk_silent", chunk=self.chunk,
                                fallback=FALLBACK_CHUNK)
                    self.chunk = FALLBACK_CHUNK
                    self.first_chunk = max(MIN_FIRST_DATA, min(FALLBACK_CHUNK, self.total))
                else:
                    log.info("upload_first_chunk_resend", attempt=attempt + 1)
                continue
            return self._offset(reply)
        raise AssertionError("unreachable")

    async def _first_with_copies(self) -> dict[str, Any]:
        """The first chunk, and a copy of it after each resend timeout of silence (doubling)
        up to FIRST_CHUNK_COPIES, all due by the first timeout; the first answer is the
        answer. Replies come in order, so the copies before the answered one were lost; those
        after it are still in the device and answer later (``_stale``, counted against the
        window)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.plan.first_timeout_s
        data = self.image[:self.first_chunk]
        payload = {"off": 0, "data": data, "len": self.total, "sha": self.sha}
        limit = min(FIRST_CHUNK_COPIES, self.plan.window + 1)
        copies: list[asyncio.Task[dict[str, Any]]] = []

        def send() -> None:
            self.sent_bytes += len(data)
            copies.append(asyncio.create_task(self.channel.request(
                Op.WRITE, Group.IMAGE, IMAGE_UPLOAD, payload,
                max(0.0, deadline - loop.time()), "upload first chunk")))

        wait_s = self.timer.resend_s
        send()
        try:
            while True:
                answered = next((i for i, t in enumerate(copies) if t.done()
                                 and not isinstance(t.exception(), TransportTimeout)), None)
                if answered is not None:
                    if answered:
                        log.info("upload_first_chunk_copy_answered", lost=answered,
                                 copies=len(copies))
                    self.cost.frames_lost += answered
                    self._stale.extend(copies[answered + 1:])
                    return copies[answered].result()  # an answer, or the error that ends it
                pending = [t for t in copies if not t.done()]
                if not pending:
                    return copies[-1].result()  # each copy timed out: raises the timeout
                left = deadline - loop.time()
                more = len(copies) < limit and left > wait_s
                await asyncio.wait(pending, timeout=wait_s if more else None,
                                   return_when=asyncio.FIRST_COMPLETED)
                if more and not any(t.done() for t in copies):
                    send()  # a resend timeout of silence: the first frame may be lost
                    wait_s *= 2
        finally:
            for task in copies:
                if task not in self._stale:
                    _forget(task)

    def _offset(self, reply: dict[str, Any]) -> int:
        return upload_offset(reply, self.total)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self._drop_stale()

    async def _run(self) -> None:
        acked = await self.first()
        self._start_offset = acked
        self._acked(acked)
        stalls = 0
        while acked < self.total:
            try:
                new = await self._slide(acked)
            except TransportTimeout:
                # A reply (or its request) vanished: resend from the last acknowledged offset,
                # with a smaller window and a longer timeout.
                stalls += 1
                self.cost.frames_lost += 1
                self.cost.windows_resent += 1
                srtt = self.timer.srtt
                self.window.lost(1.0 if not srtt else max(1.0, self.timer.timeout_s / srtt))
                self.timer.timed_out()
                if stalls >= MAX_STALLS:
                    raise
                log.info("upload_resend", offset=acked, stalls=stalls, window=self.window.size,
                         timeout_s=round(self.timer.timeout_s, 2))
                continue
            if new == 0 and acked > 0:
                # The device reset and lost the context: start over with the first chunk,
                # which carries the sha (ota.md 4.6, safety net).
                await self._drop_stale()
                new = await self.first()
            stalls = 0 if new > acked else stalls + 1
            if stalls >= MAX_STALLS:
                raise TransportTimeout(f"upload stuck at offset {acked}")
            acked = new
            self._acked(acked)
        self.cost.window = self.window.size

    async def _slide(self, start: int) -> int:
        """A sliding window from ``start``: keep ``window.size`` chunks in flight, advance on
        each reply; return when done or when the device reports another offset (a lost
        request, a rewind), which becomes the caller's new start.

        Replies come back in order, so the first reply to arrive while earlier ones are still
        awaited says those were lost, and its offset says what the device holds: its own end
        (the earlier chunks arrived, only their replies did not) acknowledges everything up to
        it; an older offset is a gap (a request was lost) and the window restarts there at
        once. Either way a loss costs a round trip; the resend timeout is left for silence.

        Every reply that has come is read before anything more goes out: a device that answers
        a window in one burst (the QEMU peer) would otherwise be sent a chunk beyond a gap the
        next reply in the burst shows. The requests still out when a gap shows stay in the
        device's buffers until it answers them (``_stale``), and count against the window: a
        resent window on top of them is more than the buffers hold, and one is dropped."""
        in_flight: deque[tuple[int, float, asyncio.Task[dict[str, Any]]]] = deque()
        next_off = acked = start
        try:
            while acked < self.total:
                while (len(in_flight) + len(self._stale) < self.window.size
                       and next_off < self.total):
                    data = self.image[next_off:next_off + self.chunk]
                    self.sent_bytes += len(data)
                    in_flight.append((next_off + len(data), time.monotonic(), asyncio.create_task(
                        self.channel.request(Op.WRITE, Group.IMAGE, IMAGE_UPLOAD,
                                             {"off": next_off, "data": data},
                                             self.timer.timeout_s,
                                             f"upload chunk at {next_off}"))))
                    next_off += len(data)
                    await asyncio.sleep(0)  # the frame goes out before the next is queued
                if not any(t.done() for _e, _s, t in in_flight):
                    await asyncio.wait([*(t for _e, _s, t in in_flight), *self._stale],
                                       return_when=asyncio.FIRST_COMPLETED)
                self._pass_stale(answered=any(t.done() for _e, _s, t in in_flight))
                while in_flight:
                    # The earliest answered request; those before it lost their replies.
                    first = next((i for i, (_e, _s, t) in enumerate(in_flight) if t.done()),
                                 None)
                    if first is None:
                        break
                    end, sent_at, task = in_flight[first]
                    reply_off = self._offset(task.result())
                    for _ in range(first + 1):
                        _end, _sent, passed = in_flight.popleft()
                        if passed is not task:
                            passed.cancel()
                    if reply_off != end:
                        log.debug("upload_resync", expected=end, device=reply_off,
                                  still_held=len(in_flight))
                        self.cost.frames_lost += 1
                        self.cost.windows_resent += 1
                        self.window.lost()
                        # The rest of the window is discarded by the device, once it gets to it.
                        self._stale.extend(t for _e, _s, t in in_flight)
                        in_flight.clear()
                        return reply_off
                    if first:
                        log.debug("upload_replies_lost", count=first, acked=end)
                        self.cost.frames_lost += first
                        self.window.lost()
                    else:
                        # Karn: only a reply that answers the oldest request times the round
                        # trip.
                        self.timer.sample(time.monotonic() - sent_at)
                        self.window.acked()
                    acked = end
                    if self.on_ack:
                        self.on_ack(acked)
                    self._progress(acked)
            return acked
        finally:
            for _end, _sent, task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*(t for _e, _s, t in in_flight), return_exceptions=True)

    def _pass_stale(self, *, answered: bool) -> None:
        """Forget the stale requests the device is done with: replies come in order, so an
        answer to a later request (``answered``), or to a later stale one, means it has
        answered or lost each before it."""
        done = [i for i, t in enumerate(self._stale) if t.done()]
        passed = len(self._stale) if answered else (done[-1] + 1 if done else 0)
        for task in self._stale[:passed]:
            _forget(task)
        del self._stale[:passed]

    async def _drop_stale(self) -> None:
        stale, self._stale = self._stale, []
        for task in stale:
            task.cancel()
        if stale:
            await asyncio.gather(*stale, return_exceptions=True)

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

"""Faults on an SMP link, injected by a transport wrapper so each scenario runs unchanged on the
QEMU peer and the virtual controller: dropped frames, dropped replies, lost links."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.errors import LinkLost
from firmware_bridge.smp.wire import HEADER_SIZE, decode_payload, encode_cbor, parse_header


@dataclass
class Faults:
    """Shared across reconnects: counts request frames and fires faults at given counts."""

    drop_link_at: set[int] = field(default_factory=set)
    drop_frame_at: set[int] = field(default_factory=set)
    drop_first_chunks: int = 0  # this many first-chunk frames (upload at off 0) lost in the air
    forge_slot1_hash: bytes | None = None
    # Phase -> how many times its request is swallowed and the link dropped with it.
    drop_on: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    reset_sent: bool = False
    dropped: list[str] = field(default_factory=list)  # phases whose request was swallowed
    frame_drops: list[int] = field(default_factory=list)  # frame counts the link dropped at
    requests: list[tuple[int, int, int, dict[str, Any]]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # each request's monotonic time

    def phase_of(self, group: int, cmd: int, op: int, payload: dict[str, Any]) -> str | None:
        if (group, cmd, op) == (1, 0, 2):
            return "confirm" if payload.get("confirm") else "test"
        if (group, cmd, op) == (0, 5, 2):
            return "reset"
        if (group, cmd, op) == (1, 0, 0) and self.reset_sent:
            return "reboot_wait"
        return None

    def upload_bytes(self) -> int:
        return sum(len(p.get("data", b"")) for g, c, _op, p in self.requests if (g, c) == (1, 1))

    def first_upload_gap_s(self) -> float:
        """From the first first-chunk frame to the first continuation chunk."""
        sent = zip(self.requests, self.sent_at, strict=True)
        uploads = [(p.get("off"), at) for (g, c, _op, p), at in sent if (g, c) == (1, 1)]
        first = next(at for off, at in uploads if off == 0)
        return next(at for off, at in uploads if off) - first

    def test_marks(self) -> int:
        return sum(1 for g, c, op, p in self.requests
                   if (g, c, op) == (1, 0, 2) and p.get("confirm") is False)


class FaultyTransport:
    def __init__(self, inner: Any, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def frame_budget(self, buf_size: int) -> int:
        budget: int = self.inner.frame_budget(buf_size)
        return budget

    async def send(self, data: bytes) -> None:
        faults = self.faults
        faults.frames += 1
        header = parse_header(data)
        payload = decode_payload(data[HEADER_SIZE:])
        faults.requests.append((header.group, header.cmd, header.op, payload))
        faults.sent_at.append(time.monotonic())
        phase = faults.phase_of(header.group, header.cmd, header.op, payload)
        if phase == "reset":
            faults.reset_sent = True
        if phase is not None and faults.drop_on.get(phase, 0) > 0:
            faults.drop_on[phase] -= 1
            faults.dropped.append(phase)
            await self.inner.disconnect()
            raise LinkLost(f"test: link dropped at {phase}")  # the request never left
        if faults.frames in faults.drop_link_at:
            faults.frame_drops.append(faults.frames)
            await self.inner.disconnect()
            raise LinkLost("test: link dropped")
        if faults.frames in faults.drop_frame_at:
            return  # lost in the air
        if (header.group, header.cmd) == (1, 1) and payload.get("off") == 0 \
                and faults.drop_first_chunks > 0:
            faults.drop_first_chunks -= 1
            return
        await self.inner.send(data)

    async def receive(self) -> bytes:
        frame: bytes = await self.inner.receive()
        forged = self.faults.forge_slot1_hash
        header = parse_header(frame)
        if forged is not None and (header.group, header.cmd) == (1, 0):
            payload = decode_payload(frame[HEADER_SIZE:])
            for entry in payload.get("images", []):
                if entry.get("slot") == 1:
                    entry["hash"] = forged
            body = encode_cbor(payload)
            frame = header.__class__(header.op, header.version, header.flags, len(body),
                                     header.group, header.seq, header.cmd).pack() + body
        return frame

    async def disconnect(self) -> None:
        await self.inner.disconnect()

"""The controller's fragmentation styles (device-ble.md section 8), each pure and stateful only
where reassembly needs it.

* gateway -> device: 4-byte-header write fragments (``write_fragments``);
* device -> gateway: the unified 8-byte header (``UnifiedReassembler``), the 3-byte
  Environmental Data header (``EnvDataReassembler``) and the headerless MTU split of fixed-size
  values (``RawSplitReassembler``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import CHANNELS, GattDecodeError
from firmware_bridge.gatt.sensors import EnvironmentalData


class FragmentError(GattDecodeError):
    """A multi-frame value arrived out of order or inconsistent; the query must be re-issued."""


class WriteFragmentType(IntEnum):
    NAME_ONLY = 1
    FULL_STRUCT_BE_SIZE = 2
    FULL_STRUCT_LE_SIZE = 3


WRITE_HEADER = struct.Struct("<BBH")
# The firmware's reassembly buffer (rule 4 of 8.2).
WRITE_BUFFER_LIMIT = 128
# What the app sends and the docs prescribe; larger fragments are accepted but gain nothing.
DEFAULT_FRAGMENT = 20


def write_fragments(channel_id: int, payload: bytes, *,
                    frag_type: WriteFragmentType = WriteFragmentType.FULL_STRUCT_LE_SIZE,
                    fragment_size: int = DEFAULT_FRAGMENT) -> list[bytes]:
    """Split ``payload`` into Write Requests following the firmware's exact rules (8.2):
    the first write carries fewer than all bytes, and no continuation is a single byte (that
    would be read as a channel selector)."""
    if not 0 <= channel_id < CHANNELS:
        raise EncodeError(f"channel {channel_id} is outside 0..7")
    if not 2 <= len(payload) <= WRITE_BUFFER_LIMIT:
        raise EncodeError(f"fragmented payload must be 2..128 bytes, got {len(payload)}")
    if fragment_size < WRITE_HEADER.size + 2:
        raise EncodeError(f"fragment size {fragment_size} leaves no room for data")
    big_endian = frag_type == WriteFragmentType.FULL_STRUCT_BE_SIZE
    size_field = struct.pack(">H" if big_endian else "<H", len(payload))
    first_data = min(fragment_size - WRITE_HEADER.size, len(payload) - 2)
    frames = [bytes([channel_id, int(frag_type)]) + size_field + payload[:first_data]]
    rest = payload[first_data:]
    while rest:
        take = min(fragment_size, len(rest))
        if len(rest) - take == 1:
            take -= 1  # never leave a 1-byte tail: it would be taken as a selector
        frames.append(rest[:take])
        rest = rest[take:]
    return frames


@dataclass(frozen=True)
class UnifiedHeader:
    LAYOUT: ClassVar = struct.Struct("<BBHBBBB")
    data_type: int
    status: int
    entry_count: int
    fragment_index: int
    total_fragments: int
    fragment_size: int

    @classmethod
    def decode(cls, frame: bytes | bytearray) -> UnifiedHeader:
        if len(frame) < cls.LAYOUT.size:
            raise GattDecodeError(f"unified header needs 8 bytes, got {len(frame)}")
        dt, status, count, index, total, size, _ = cls.LAYOUT.unpack_from(frame)
        return cls(dt, status, count, index, total, size)

    def encode(self, payload: bytes = b"") -> bytes:
        return self.LAYOUT.pack(self.data_type, self.status, self.entry_count,
                                self.fragment_index, self.total_fragments, len(payload),
                                0) + payload


@dataclass(frozen=True)
class UnifiedResponse:
    data_type: int
    status: int
    entry_count: int
    payload: bytes


def is_unified_fragment(frame: bytes | bytearray) -> bool:
    """The discriminator of 6.10: a fragment has len == 8 + size and index < total."""
    return (len(frame) >= UnifiedHeader.LAYOUT.size and len(frame) == 8 + frame[6]
            and frame[4] < frame[5])


@dataclass
class UnifiedReassembler:
    """Reassembles one characteristic's unified-header responses (algorithm of 8.3)."""

    _buffer: bytearray = field(default_factory=bytearray)
    _expected: int = 0
    _active: bool = False

    def feed(self, frame: bytes | bytearray) -> UnifiedResponse | None:
        header = UnifiedHeader.decode(frame)
        if len(frame) != UnifiedHeader.LAYOUT.size + header.fragment_size:
            raise GattDecodeError(
                f"unified fragment length {len(frame)} != 8 + {header.fragment_size}")
        if header.status != 0 or header.fragment_size == 0:
            self.reset()
            return UnifiedResponse(header.data_type, header.status, header.entry_count, b"")
        if header.fragment_index >= header.total_fragments:
            self.reset()
            raise FragmentError(f"fragment {header.fragment_index} of {header.total_fragments}")
        if header.fragment_index == 0:
            self._buffer = bytearray()
            self._active = True
        elif not self._active or header.fragment_index != self._expected:
            expected = self._expected
            self.reset()
            raise FragmentError(
                f"fragment gap: got {header.fragment_index}, expected {expected}")
        self._buffer += frame[UnifiedHeader.LAYOUT.size:]
        self._expected = header.fragment_index + 1
        if header.fragment_index == header.total_fragments - 1:
            payload = bytes(self._buffer)
            self.reset()
            return UnifiedResponse(header.data_type, 0, header.entry_count, payload)
        return None

    def reset(self) -> None:
        self._buffer = bytearray()
        self._expected = 0
        self._active = False

    @property
    def in_progress(self) -> bool:
        return self._active


ENV_HEADER = struct.Struct("<BBB")


@dataclass
class EnvDataReassembler:
    """Environmental Data notifications: ``[seq][total][len] + chunk``; a bare 24-byte frame is
    a whole struct (future firmware, 8.4)."""

    _chunks: list[bytes] = field(default_factory=list)

    def feed(self, frame: bytes | bytearray) -> EnvironmentalData | None:
        size = EnvironmentalData.LAYOUT.size
        if len(frame) == size:
            self._chunks = []
            return EnvironmentalData.decode(frame)
        if len(frame) < ENV_HEADER.size:
            raise GattDecodeError(f"Environmental Data frame of {len(frame)} bytes")
        seq, total, length = ENV_HEADER.unpack_from(frame)
        if len(frame) != ENV_HEADER.size + length or total == 0 or seq >= total:
            self._chunks = []
            raise GattDecodeError(f"Environmental Data header {seq}/{total} len {length} "
                                  f"does not match a {len(frame)}-byte frame")
        if seq != len(self._chunks):
            self._chunks = []
            if seq != 0:
                raise FragmentError(f"Environmental Data chunk {seq} out of order")
        self._chunks.append(bytes(frame[ENV_HEADER.size:]))
        if seq < total - 1:
            return None
        data = b"".join(self._chunks)
        self._chunks = []
        return EnvironmentalData.decode(data)


# A partial raw split is stale after this long: the firmware sends the chunks 5 ms apart, so
# 200 ms (the spec's figure, 8.5) means the rest is never coming.
RAW_SPLIT_STALE_S = 0.2


@dataclass
class RawSplitReassembler:
    """Headerless MTU split of a fixed-size value (8.5): concatenate until ``size`` bytes."""

    size: int
    _buffer: bytearray = field(default_factory=bytearray)
    _started: float = 0.0

    def feed(self, frame: bytes | bytearray, now: float) -> bytes | None:
        if len(frame) == self.size:
            self._buffer = bytearray()
            return bytes(frame)
        if self._buffer and now - self._started > RAW_SPLIT_STALE_S:
            self._buffer = bytearray()
        if not self._buffer:
            self._started = now
        self._buffer += frame
        if len(self._buffer) < self.size:
            return None
        data, self._buffer = bytes(self._buffer), bytearray()
        if len(data) != self.size:
            raise GattDecodeError(
                f"raw split overran: {len(data)} bytes for a {self.size}-byte value")
        return data

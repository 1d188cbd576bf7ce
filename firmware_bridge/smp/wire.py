"""SMP frame header and CBOR payload handling (ota.md section 3), pure.

The header is 8 bytes, big-endian: ``res:3|ver:2|op:3, flags, length, group, seq, cmd``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import cbor2

from firmware_bridge.errors import DecodeError

HEADER = struct.Struct(">BBHHBB")
HEADER_SIZE = HEADER.size


class Op(IntEnum):
    READ = 0
    READ_RSP = 1
    WRITE = 2
    WRITE_RSP = 3


class Group(IntEnum):
    OS = 0
    IMAGE = 1


@dataclass(frozen=True)
class SmpHeader:
    op: int
    version: int
    flags: int
    length: int
    group: int
    seq: int
    cmd: int

    def pack(self) -> bytes:
        return HEADER.pack(
            ((self.version & 0x3) << 3) | (self.op & 0x7), self.flags, self.length,
            self.group, self.seq, self.cmd,
        )


def parse_header(data: bytes) -> SmpHeader:
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"SMP header needs 8 bytes, got {len(data)}")
    b0, flags, length, group, seq, cmd = HEADER.unpack_from(data, 0)
    return SmpHeader(b0 & 0x7, (b0 >> 3) & 0x3, flags, length, group, seq, cmd)


def encode_frame(header: SmpHeader, payload: bytes) -> bytes:
    return SmpHeader(
        header.op, header.version, header.flags, len(payload), header.group, header.seq,
        header.cmd,
    ).pack() + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode a CBOR map; definite and indefinite lengths are both valid (zcbor emits either)."""
    try:
        value = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several unrelated types for garbage
        raise DecodeError(f"SMP payload is not CBOR: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError(f"SMP payload is a {type(value).__name__}, not a map")
    return value


def encode_cbor(value: Any, *, indefinite: bool = False) -> bytes:
    """Encode like zcbor: definite lengths (CONFIG_ZCBOR_CANONICAL) or indefinite containers."""
    if not indefinite:
        return cbor2.dumps(value)
    out = bytearray()
    _encode_indefinite(value, out)
    return bytes(out)


def _encode_indefinite(value: Any, out: bytearray) -> None:
    if isinstance(value, dict):
        out.append(0xBF)
        for key, item in value.items():
            _encode_indefinite(key, out)
            _encode_indefinite(item, out)
        out.append(0xFF)
    elif isinstance(value, list | tuple):
        out.append(0x9F)
        for item in value:
            _encode_indefinite(item, out)
        out.append(0xFF)
    else:
        out += cbor2.dumps(value)

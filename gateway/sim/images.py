"""Build MCUboot images (unsigned, SHA256 TLV) for the virtual controllers and for tests.

The layout is imgtool's ``create --header-size 0x200 --pad-header``: header, 0xFF padding,
body, then an unprotected TLV area holding the SHA256 of header + body.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from firmware_bridge.mcuboot import HEADER, IMAGE_MAGIC, TLV_MAGIC, TLV_SHA256, parse_image

HEADER_SIZE = 0x200


def make_image(version: tuple[int, int, int, int], body: bytes, *, flags: int = 0,
               header_size: int = HEADER_SIZE) -> bytes:
    major, minor, revision, build = version
    header = HEADER.pack(IMAGE_MAGIC, 0, header_size, 0, len(body), flags, major, minor,
                         revision, build, 0)
    signed_part = header + b"\xff" * (header_size - len(header)) + body
    digest = hashlib.sha256(signed_part).digest()
    tlv = struct.pack("<HH", TLV_SHA256, len(digest)) + digest
    return signed_part + struct.pack("<HH", TLV_MAGIC, 4 + len(tlv)) + tlv


def firmware_body(seed: str, size: int) -> bytes:
    """Deterministic pseudo-firmware bytes, different per seed."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def rewrap_as_version(signed_bin: Path, workdir: Path, version: str) -> bytes:
    """The QEMU peer notes' recipe for a second image: the shipped app payload re-wrapped by
    imgtool with another version (same slot geometry as the peer, 0x1a000)."""
    original = signed_bin.read_bytes()
    header = parse_image(original)
    payload = original[header.header_size:header.header_size + header.image_size]
    app = workdir / f"app-{version}.bin"
    app.write_bytes(b"\0" * 0x200 + payload)
    out = workdir / f"new-{version}.bin"
    imgtool = shutil.which("imgtool") or str(Path(sys.executable).with_name("imgtool"))
    subprocess.run([imgtool, "create", "--version", version, "--header-size", "0x200",
                    "--slot-size", "0x1a000", "--align", "4", str(app), str(out)], check=True)
    return out.read_bytes()

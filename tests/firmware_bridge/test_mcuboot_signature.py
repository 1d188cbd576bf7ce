"""Signature TLVs verified like MCUboot does, for every key type imgtool makes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge.mcuboot import SignatureError, parse_image, verify_signature
from gateway.sim.images import firmware_body

IMGTOOL = shutil.which("imgtool") or str(Path(sys.executable).with_name("imgtool"))


def _run(*args: str) -> None:
    subprocess.run([IMGTOOL, *args], check=True, capture_output=True)


def _signed(tmp: Path, key_type: str) -> tuple[bytes, bytes]:
    key = tmp / f"{key_type}.pem"
    _run("keygen", "-k", str(key), "-t", key_type)
    pub = tmp / f"{key_type}.pub.pem"
    _run("getpub", "-k", str(key), "-e", "pem", "-o", str(pub))
    app = tmp / "app.bin"
    app.write_bytes(b"\0" * 0x200 + firmware_body("signed", 5000))
    out = tmp / f"signed-{key_type}.bin"
    _run("sign", "-k", str(key), "--version", "1.2.3", "--header-size", "0x200",
         "--slot-size", "0x20000", "--align", "4", str(app), str(out))
    return out.read_bytes(), pub.read_bytes()


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519", "rsa-2048"])
def test_imgtool_signatures_verify_and_tampering_fails(tmp_path: Path, key_type: str) -> None:
    data, public = _signed(tmp_path, key_type)
    image = parse_image(data)
    assert image.hash_ok and image.signature_types
    assert verify_signature(data, image, public).startswith(key_type.split("-", maxsplit=1)[0])
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other = _signed(other_dir, key_type)
    with pytest.raises(SignatureError):
        verify_signature(data, image, other)
    with pytest.raises(SignatureError, match="not a PEM"):
        verify_signature(data, image, b"garbage")

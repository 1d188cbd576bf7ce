"""MCUboot image parsing against ota.md's verified imgtool outputs."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.mcuboot import ImageFormatError, parse_image
from tests.helpers.golden import BODY, FILE_SHA256, H_NEW, H_OLD, NEW_IMAGE, OLD_IMAGE


def test_golden_image_hashes() -> None:
    image = parse_image(NEW_IMAGE)
    assert len(NEW_IMAGE) == 3552
    assert image.image_hash.hex() == H_NEW and image.hash_ok
    assert image.file_sha256.hex() == FILE_SHA256
    assert str(image.version) == "1.2.3.4" and image.header_size == 0x200
    assert parse_image(OLD_IMAGE).image_hash.hex() == H_OLD
    assert str(parse_image(OLD_IMAGE).version) == "1.0.0"


def test_header_bytes_match_the_spec() -> None:
    assert NEW_IMAGE[:32].hex() == (
        "3db8f39600000000000200 00b80b00000000000001020300040000 0000000000".replace(" ", ""))


@pytest.mark.skipif(shutil.which("imgtool") is None and not Path(sys.executable).with_name(
    "imgtool").exists(), reason="imgtool is installed by the test extra")
def test_imgtool_signed_image_parses(tmp_path: Path) -> None:
    imgtool = shutil.which("imgtool") or str(Path(sys.executable).with_name("imgtool"))
    src = tmp_path / "in.bin"
    src.write_bytes(BODY)
    key = tmp_path / "ec256.pem"
    subprocess.run([imgtool, "keygen", "-k", str(key), "-t", "ecdsa-p256"], check=True)
    out = tmp_path / "out.bin"
    subprocess.run([imgtool, "sign", "--key", str(key), "--align", "4", "--version", "1.2.3+4",
                    "--header-size", "0x200", "--slot-size", "0x67000", "--pad-header", "-s",
                    "auto", str(src), str(out)], check=True)
    image = parse_image(out.read_bytes())
    assert image.hash_ok
    assert image.image_hash.hex() == (
        "7005bcc357303ba923057182a5fed1686a500c53af2f800f129a524c5ee26d91")
    assert image.signature_types == ("ecdsa",)
    assert image.protected_tlv_size == 0x0C


def test_corruptions_are_typed_errors() -> None:
    body_flip = bytearray(NEW_IMAGE)
    body_flip[0x300] ^= 0xFF
    assert not parse_image(bytes(body_flip)).hash_ok
    with pytest.raises(ImageFormatError, match="magic"):
        parse_image(b"\0" * 64)
    with pytest.raises(ImageFormatError):
        parse_image(NEW_IMAGE[:-1])
    with pytest.raises(ImageFormatError, match="after the TLV"):
        parse_image(NEW_IMAGE + b"\0")
    assert parse_image(NEW_IMAGE + b"\xff" * 10, allow_trailing=True).hash_ok
    assert hashlib.sha256(NEW_IMAGE).hexdigest() == FILE_SHA256


@given(st.binary(max_size=600), st.integers(0, 3551))
def test_garbage_and_truncation_never_escape_the_error_tree(junk: bytes, cut: int) -> None:
    for data in (junk, NEW_IMAGE[:cut], NEW_IMAGE[:32] + junk):
        with contextlib.suppress(ImageFormatError):
            parse_image(data)

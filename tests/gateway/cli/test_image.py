"""`awgw image inspect`: an image file meets its checks before anything is sent, typed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.sim.images import firmware_body, make_image


def inspect(path: Path) -> tuple[int, dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "image", "inspect", str(path),
                             "--json"], capture_output=True, text=True, timeout=60, check=False)
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_inspect_reports_a_good_image_and_refuses_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(make_image((4, 2, 1, 0), firmware_body("inspect", 5000)))
    code, doc = inspect(good)
    assert code == 0 and doc["valid"] is True and doc["version"] == "4.2.1"
    assert doc["hash"] == doc["computed_hash"] and doc["problems"] == []
    corrupted = tmp_path / "bad.bin"
    data = bytearray(good.read_bytes())
    data[100] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    code, doc = inspect(corrupted)
    assert code == 10 and doc["valid"] is False and doc["problems"]
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not an image")
    code, doc = inspect(garbage)
    assert code == 10 and doc["valid"] is False and "version" not in doc

"""Signed images for the tests of the signature gate: imgtool itself signs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gateway.sim.images import firmware_body

IMGTOOL = shutil.which("imgtool") or str(Path(sys.executable).with_name("imgtool"))


def signed_with_new_key(tmp_path: Path, name: str) -> tuple[bytes, Path]:
    """An image imgtool signed with a fresh ECDSA P-256 key, and that key's public half."""
    key, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    subprocess.run([IMGTOOL, "keygen", "-k", str(key), "-t", "ecdsa-p256"], check=True)
    subprocess.run([IMGTOOL, "getpub", "-k", str(key), "-e", "pem", "-o", str(pub)], check=True)
    app, out = tmp_path / f"{name}-app.bin", tmp_path / f"{name}-signed.bin"
    app.write_bytes(b"\0" * 0x200 + firmware_body(name, 30_000))
    subprocess.run([IMGTOOL, "sign", "-k", str(key), "--version", "9.2.0", "--header-size",
                    "0x200", "--slot-size", "0x80000", "--align", "4", str(app), str(out)],
                   check=True)
    return out.read_bytes(), pub

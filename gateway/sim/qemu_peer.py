"""The real Zephyr 4.4.0 + MCUboot SMP server under QEMU: the OTA conformance peer.

The artifacts come from the smpclient 7.3.0 source distribution on PyPI, pinned by sha256.
Two QEMU behaviours are fixed here so the peer behaves like a device with flash:

* QEMU re-copies the loaded hex on every guest reset, restoring the original slot-0 image.
  We run with ``-action reboot=shutdown,shutdown=pause``; on the QMP ``SHUTDOWN`` event with
  reason ``guest-reset`` the whole flash is dumped with ``memsave`` and QEMU is relaunched on
  the same TCP port from that dump.
* Bytes sent while MCUboot or the app boots wedge the server, so ``wait_ready`` waits out the
  boot before the first byte and then polls echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from firmware_bridge.aio import cancelling
from gateway.sim.errors import SimError
from gateway.sim.processes import tied

log = structlog.get_logger(__name__)

SMPCLIENT_SDIST = "smpclient-7.3.0.tar.gz"
SMPCLIENT_SDIST_SHA256 = "86aa4bc1c621805d97f449793a4077f049aa88a98a1e916bf59423d072bd2a3b"
ARTIFACT_DIR = "smpclient-7.3.0/tests/fixtures/smp-server"
MERGED_HEX = "zephyr_4.4.0_smp_server_0eae053d_qemu_cortex_m0_serial.merged.hex"
SIGNED_BIN = "zephyr_4.4.0_smp_server_0eae053d_qemu_cortex_m0_serial.signed.bin"
ARTIFACT_SHA256 = {
    MERGED_HEX: "2e0cda996515b444f324f26d794e55e5f08b3ddff210d6fcec6f994647eb289e",
    SIGNED_BIN: "e96f3b40d10418018caa1c3f9776d3bbdd542f5612e3caad3a223bb0b2a24c54",
}

# Device facts of the qemu_cortex_m0 build (microbit machine), from the peer notes.
FLASH_SIZE = 0x40000
SLOT_SIZE = 0x1A000
SECTOR_SIZE = 0x400
BUF_SIZE = 384
BUF_COUNT = 4

# MCUboot and the app must finish booting before the first byte arrives, or the UART
# receive path wedges for good; 1 s covered 16 of 16 parallel starts in the notes.
BOOT_SETTLE_S = 1.0
# QEMU answers QMP within milliseconds; 10 s only guards against a hung emulator.
QMP_TIMEOUT_S = 10.0


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "autowatering-gateway" / "fixtures"


@dataclass(frozen=True)
class PeerArtifacts:
    merged_hex: Path
    signed_bin: Path


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_artifacts(cache_dir: Path | None = None) -> PeerArtifacts:
    """Download the smpclient sdist (once), verify it and extract the QEMU peer artifacts."""
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = PeerArtifacts(cache / MERGED_HEX, cache / SIGNED_BIN)
    if all(
        p.exists() and _sha256_file(p) == ARTIFACT_SHA256[p.name]
        for p in (out.merged_hex, out.signed_bin)
    ):
        return out
    sdist = cache / SMPCLIENT_SDIST
    if not sdist.exists() or _sha256_file(sdist) != SMPCLIENT_SDIST_SHA256:
        # The front door's commands say what they install while they install it.
        print(f"fetching the QEMU conformance peer (smpclient 7.3.0 sdist) into {cache}",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--no-binary", ":all:", "smpclient==7.3.0", "-d", tmp],
                check=True,
            )
            shutil.copy(Path(tmp) / SMPCLIENT_SDIST, sdist)
    digest = _sha256_file(sdist)
    if digest != SMPCLIENT_SDIST_SHA256:
        raise SimError(f"smpclient sdist sha256 mismatch: {digest}")
    with tarfile.open(sdist) as tar:
        for name in (MERGED_HEX, SIGNED_BIN):
            member = tar.getmember(f"{ARTIFACT_DIR}/{name}")
            fh = tar.extractfile(member)
            if fh is None:
                raise SimError(f"{name} missing from the sdist")
            (cache / name).write_bytes(fh.read())
            if _sha256_file(cache / name) != ARTIFACT_SHA256[name]:
                raise SimError(f"{name} sha256 mismatch")
    return out


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class QemuPeer:
    """One QEMU instance running the Zephyr SMP server, with flash that survives resets."""

    def __init__(self, artifacts: PeerArtifacts, workdir: Path, port: int | None = None) -> None:
        self._artifacts = artifacts
        self._workdir = workdir
        self.port = port or free_tcp_port()
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._booted = asyncio.Event()
        self.resets = 0
        self._flash_dump: Path | None = None

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def _cmd(self, qmp_path: Path) -> list[str]:
        image = (
            ["-device", f"loader,file={self._flash_dump},addr=0x0,force-raw=on"]
            if self._flash_dump
            else ["-device", f"loader,file={self._artifacts.merged_hex}"]
        )
        return [
            "qemu-system-arm", "-cpu", "cortex-m0", "-machine", "microbit", "-nographic",
            "-chardev", f"socket,id=con,host=127.0.0.1,port={self.port},server=on,wait=off",
            "-serial", "chardev:con", "-monitor", "none",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-action", "reboot=shutdown,shutdown=pause",
            *image,
        ]

    async def start(self) -> None:
        self._workdir.mkdir(parents=True, exist_ok=True)
        if shutil.which("qemu-system-arm") is None:
            raise SimError("qemu-system-arm is not installed (apt-get install qemu-system-arm)")
        self._supervisor = asyncio.create_task(self._run(), name=f"qemu-peer-{self.port}")
        async with asyncio.timeout(30):
            await self._booted.wait()

    async def _run(self) -> None:
        generation = 0
        while True:
            generation += 1
            qmp_path = self._workdir / f"qmp-{generation}.sock"
            self._proc = await asyncio.create_subprocess_exec(
                *tied(self._cmd(qmp_path)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            reader, writer = await self._qmp_connect(qmp_path)
            try:
                await self._qmp(reader, writer, {"execute": "qmp_capabilities"})
                await asyncio.sleep(BOOT_SETTLE_S)
                self._booted.set()
                reason = await self._wait_shutdown(reader)
                if reason != "guest-reset":
                    log.info("qemu_peer_stopped", reason=reason)
                    return
                self._booted.clear()
                self.resets += 1
                dump = self._workdir / f"flash-{generation}.bin"
                await self._qmp(reader, writer, {
                    "execute": "memsave",
                    "arguments": {"val": 0, "size": FLASH_SIZE, "filename": str(dump),
                                  "cpu-index": 0},
                })
                self._flash_dump = dump
                with contextlib.suppress(Exception):
                    await self._qmp(reader, writer, {"execute": "quit"})
            finally:
                writer.close()
                await self._reap()

    async def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    @staticmethod
    async def _qmp_connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(QMP_TIMEOUT_S):
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(str(path))
                except (FileNotFoundError, ConnectionRefusedError):
                    await asyncio.sleep(0.02)
                    continue
                await reader.readline()  # QMP greeting
                return reader, writer

    @staticmethod
    async def _qmp(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cmd: dict[str, Any]
    ) -> dict[str, Any]:
        writer.write(json.dumps(cmd).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(QMP_TIMEOUT_S):
            while True:
                line = await reader.readline()
                if not line:
                    raise SimError("QMP connection closed")
                msg: dict[str, Any] = json.loads(line)
                if "return" in msg or "error" in msg:
                    return msg

    @staticmethod
    async def _wait_shutdown(reader: asyncio.StreamReader) -> str:
        while True:
            line = await reader.readline()
            if not line:
                return "exited"
            msg = json.loads(line)
            if msg.get("event") == "SHUTDOWN":
                return str(msg.get("data", {}).get("reason", "unknown"))

    async def wait_booted(self, resets: int = 0) -> None:
        """Wait until the peer has been reset ``resets`` times in all and has booted since.
        A reset the guest asked for lands after the firmware's own delay, which a busy machine
        stretches: waiting only for "booted" could find the old generation still running."""
        async with asyncio.timeout(30):
            while self.resets < resets:  # noqa: ASYNC110 - QMP's SHUTDOWN has no event here
                await asyncio.sleep(0.05)
            await self._booted.wait()

    async def stop(self) -> None:
        # Kill first: the supervisor, cancelled while QEMU still runs, would give it the
        # 5 s a guest-requested quit gets before reaping it by force.
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                if cancelling():
                    raise
        if self._proc is not None and self._proc.returncode is None:
            await self._proc.wait()

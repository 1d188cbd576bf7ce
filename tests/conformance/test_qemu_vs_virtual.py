"""One scripted SMP scenario against the real Zephyr + MCUboot under QEMU and against a virtual
controller (over its UDP transport); their replies must agree field by field.

Normalised before comparing: image hashes and versions become ``old``/``new`` (the two devices
boot different factory images). Everything else (keys, flags, offsets, rc values, order) must be
identical.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from firmware_bridge.mcuboot import parse_image
from firmware_bridge.smp.tcp_serial import TcpSerialTransport
from firmware_bridge.smp.wire import decode_payload
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.images import rewrap_as_version
from gateway.sim.qemu_peer import QemuPeer, fetch_artifacts, free_tcp_port
from gateway.sim.rig import Rig, RigOptions

pytestmark = [pytest.mark.qemu, pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None, reason="./dev.sh test installs qemu-system-arm")]

Exchange = Callable[[bytes], Awaitable[bytes]]
# Both peers answer in milliseconds when they have the CPU. On a loaded machine (the suite
# beside two CPU hogs) the emulated Cortex-M gets a fraction of a core and its UART may drop a
# frame: each attempt waits this long, three attempts in all, and a reply that comes in after
# its request was resent is recognised by its sequence number and skipped.
REPLY_TIMEOUT_S = 8.0
ATTEMPTS = 3


def build_new_image(signed_bin: Path, workdir: Path) -> bytes:
    return rewrap_as_version(signed_bin, workdir, "9.9.9")


class Scenario:
    def __init__(self, exchange: Exchange, reboot: Callable[[], Awaitable[None]],
                 image: bytes) -> None:
        self.exchange = exchange
        self.reboot = reboot
        self.image = image
        self.sha = hashlib.sha256(image).digest()
        self.seq = 0
        self.log: list[tuple[str, Any]] = []
        self.hashes: dict[bytes, str] = {parse_image(image).image_hash: "new"}

    async def rq(self, label: str, op: int, group: int, cmd: int, body: dict[str, Any]) -> Any:
        self.seq = (self.seq + 1) & 0xFF
        payload = cbor2.dumps(body)
        frame = struct.pack(">BBHHBB", 0x08 | op, 0, len(payload), group, self.seq, cmd) + payload
        reply = await self.exchange(frame)
        assert reply[0] & 0x7 == op + 1 and reply[6] == self.seq
        decoded = decode_payload(reply[8:])
        self.log.append((label, self._normalise(decoded)))
        return decoded

    def _normalise(self, value: Any) -> Any:
        if isinstance(value, dict):
            if "images" in value:
                for image in value["images"]:
                    if "hash" in image:  # an image list (slot info has none)
                        self.hashes.setdefault(image["hash"], "old")
            out = {k: self._normalise(v) for k, v in value.items()}
            if "hash" in out and "version" in out:
                out["version"] = out["hash"]
            return out
        if isinstance(value, list):
            return [self._normalise(v) for v in value]
        if isinstance(value, bytes):
            return self.hashes.get(value, value.hex())
        return value

    async def upload(self, first: int = 200, step: int = 300) -> None:
        img = self.image
        off = (await self.rq("first", 2, 1, 1, {"off": 0, "data": img[:first], "len": len(img),
                                                "sha": self.sha}))["off"]
        while off < len(img):
            off = (await self.rq("chunk", 2, 1, 1, {"off": off, "data": img[off:off + step]}))[
                "off"]
        self.log = [e for e in self.log if e[0] != "chunk"]

    async def run(self) -> list[tuple[str, Any]]:
        img = self.image
        await self.rq("echo", 2, 0, 0, {"d": "conformance"})
        await self.rq("echo as read", 0, 0, 0, {"d": "conformance"})
        await self.rq("params", 0, 0, 6, {})
        await self.rq("app info", 0, 0, 7, {})
        await self.rq("app info, bad format", 0, 0, 7, {"format": "x"})
        await self.rq("slot info", 0, 1, 6, {})
        await self.rq("list0", 0, 1, 0, {})
        await self.rq("err21", 2, 1, 1, {"off": 0, "data": img[:64]})
        await self.rq("err22", 2, 1, 1, {"off": 0, "data": img[:16], "len": len(img)})
        await self.rq("err23", 2, 1, 1, {"off": 0, "data": b"\0" * 64, "len": len(img)})
        await self.rq("err30", 2, 1, 1, {"off": 0, "data": img[:64], "len": 0x1A001})
        await self.rq("err13", 2, 1, 1, {"off": 0, "data": img[:64], "len": 0x1A000})
        await self.rq("start", 2, 1, 1, {"off": 0, "data": img[:200], "len": len(img),
                                         "sha": self.sha})
        await self.rq("resume", 2, 1, 1, {"off": 0, "data": img[:200], "len": len(img),
                                          "sha": self.sha})
        await self.rq("wrong_off", 2, 1, 1, {"off": 700, "data": img[700:800]})
        await self.rq("restart_other_sha", 2, 1, 1, {"off": 0, "data": img[:150],
                                                     "len": len(img), "sha": b"\1" * 32})
        await self.upload()
        await self.rq("list_uploaded", 0, 1, 0, {})
        await self.rq("err24", 2, 1, 0, {"confirm": False})
        await self.rq("err8", 2, 1, 0, {"hash": b"\2" * 32, "confirm": False})
        old = next(h for h, name in self.hashes.items() if name == "old")
        new = next(h for h, name in self.hashes.items() if name == "new")
        await self.rq("err33", 2, 1, 0, {"hash": old, "confirm": False})
        await self.rq("test", 2, 1, 0, {"hash": new, "confirm": False})
        await self.rq("reset", 2, 0, 5, {})
        await self.reboot()
        await self.rq("list_testing", 0, 1, 0, {})
        await self.rq("err9_upload", 2, 1, 1, {"off": 0, "data": img[:150], "len": len(img),
                                               "sha": b"\3" * 32})
        await self.rq("err28", 2, 1, 0, {"hash": old, "confirm": False})
        await self.rq("err9_erase", 2, 1, 5, {})
        await self.rq("reset2", 2, 0, 5, {})
        await self.reboot()
        await self.rq("list_reverted", 0, 1, 0, {})
        await self.rq("test_again", 2, 1, 0, {"hash": new, "confirm": False})
        await self.rq("reset3", 2, 0, 5, {})
        await self.reboot()
        await self.rq("confirm", 2, 1, 0, {"confirm": True})
        await self.rq("reset4", 2, 0, 5, {})
        await self.reboot()
        await self.rq("list_final", 0, 1, 0, {})
        return self.log


async def _with_resend(send: Callable[[bytes], Awaitable[None]],
                       receive: Callable[[], Awaitable[bytes]], frame: bytes) -> bytes:
    seq = frame[6]
    for attempt in range(1, ATTEMPTS + 1):
        await send(frame)
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                while True:
                    reply = await receive()
                    if reply[6] == seq:
                        return reply
                    # A late answer to an earlier request: its own resend was answered.
        except TimeoutError:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def run_against_qemu(workdir: Path, image: bytes, fixtures: Path) -> list[tuple[str, Any]]:
    peer = QemuPeer(fetch_artifacts(fixtures), workdir / "qemu")
    await peer.start()
    transport = TcpSerialTransport()
    await transport.connect(peer.url, 10)

    async def exchange(frame: bytes) -> bytes:
        return await _with_resend(transport.send, transport.receive, frame)

    reboots = 0

    async def reboot() -> None:
        nonlocal reboots
        reboots += 1
        await transport.disconnect()
        # This reset's relaunch, not the generation still running out the reset's delay (under
        # two CPU hogs one answer came from the image the reset was to revert).
        await peer.wait_booted(resets=reboots)
        await transport.connect(peer.url, 10)

    try:
        return await Scenario(exchange, reboot, image).run()
    finally:
        await transport.disconnect()
        await peer.stop()


async def run_against_virtual(image: bytes) -> list[tuple[str, Any]]:
    port = free_tcp_port()
    # The QEMU build's netbuf is its serial transport's (384 bytes, 4 buffers): the virtual
    # controller reports that on UDP here, as that build would.
    template = ControllerConfig(0, 0, "", geometry="qemu", indefinite_cbor=True, buf_size=384,
                                buf_count=4, udp_buf_size=384, udp_buf_count=4,
                                firmware_version="0.0.0")
    async with Rig(RigOptions(controllers=1, udp_base_port=port, template=template)):
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                replies.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=("127.0.0.1", port))

        async def send(frame: bytes) -> None:
            transport.sendto(frame)

        async def exchange(frame: bytes) -> bytes:
            return await _with_resend(send, replies.get, frame)

        async def reboot() -> None:
            await asyncio.sleep(1.5)  # reset delay + boot; the UDP endpoint then answers again

        try:
            return await Scenario(exchange, reboot, image).run()
        finally:
            transport.close()


async def test_virtual_controller_agrees_with_real_zephyr(tmp_path: Path,
                                                          fixtures_dir: Path) -> None:
    image = build_new_image(fetch_artifacts(fixtures_dir).signed_bin, tmp_path)
    real = await run_against_qemu(tmp_path, image, fixtures_dir)
    virtual = await run_against_virtual(image)
    assert [label for label, _ in virtual] == [label for label, _ in real]
    for (label, want), (_, got) in zip(real, virtual, strict=True):
        assert got == want, f"{label}: virtual {got!r} != QEMU {want!r}"
    final = dict(real)["list_final"]
    assert final["images"] == [{"slot": 0, "version": "new", "hash": "new", "bootable": True,
                                "pending": False, "confirmed": True, "active": True,
                                "permanent": False}]

"""Real third-party mcumgr clients against virtual controllers, as they would drive a Zephyr
device: smpmgr (on smpclient) and mcumgr-toolkit (Rust, btleplug) over UDP and BLE. Each does
echo, params, list, upload, test, reset and confirm, first time, and its throughput is printed.

The virtual controllers serve UDP on mcumgr's port 1337 at an address each
(``RigOptions.udp_own_address``), since neither tool lets every command choose a port.
mcumgr-toolkit's BLE central takes the first adapter BlueZ lists; the rig lists only the
gateway's (gateway.sim.radios), so it lands there every time.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcumgr_toolkit import MCUmgrClient

from firmware_bridge.mcuboot import parse_image
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig, RigOptions, udp_endpoint

# Each virtual controller serves mcumgr's fixed port 1337 at 127.0.1.<n>: one such rig at a time.
pytestmark = [pytest.mark.rig, pytest.mark.xdist_group("mcumgr_udp_1337")]
IMAGE = make_image((7, 1, 0, 0), firmware_body("third-party", 60_000))
NEW_HASH = parse_image(IMAGE).image_hash
# The virtual controller reboots in ~1 s; a loaded machine and the clients' own retries fit.
REBOOT_WITHIN_S = 30.0
# One command of a CLI client: start-up (~1 s of imports) plus a BLE connect.
COMMAND_LIMIT_S = 120.0


def smpmgr(env: dict[str, str], transport: list[str], *args: str) -> str:
    """One smpmgr command; its output as text (it prints rich tables)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "smpmgr"), *transport, "--timeout", "5", *args],
        env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
        timeout=COMMAND_LIMIT_S, check=False)
    assert result.returncode == 0, (args, result.stdout[-1500:], result.stderr[-1500:])
    return result.stdout + result.stderr


def hashes(listing: str) -> list[str]:
    return [h.lower() for h in re.findall(r"[0-9a-fA-F]{64}", listing)]


async def smpmgr_full_update(env: dict[str, str], transport: list[str],
                             tmp_path: Path) -> float:
    file = tmp_path / "new.bin"
    file.write_bytes(IMAGE)

    def run(*args: str) -> str:
        return smpmgr(env, transport, *args)

    assert "hello" in await asyncio.to_thread(run, "os", "echo", "hello")
    # smpclient reads MCUmgr params on every connect to size its frames: each command above
    # and below exercises them.
    before = await asyncio.to_thread(run, "image", "state-read")
    assert NEW_HASH.hex() not in hashes(before)
    started = time.monotonic()
    await asyncio.to_thread(run, "image", "upload", str(file))
    seconds = time.monotonic() - started
    assert NEW_HASH.hex() in hashes(await asyncio.to_thread(run, "image", "state-read"))
    await asyncio.to_thread(run, "image", "state-write", NEW_HASH.hex())
    await asyncio.to_thread(run, "os", "reset")
    async with asyncio.timeout(REBOOT_WITHIN_S):
        while True:
            await asyncio.sleep(1.0)
            try:
                listing = await asyncio.to_thread(run, "image", "state-read")
            except AssertionError:
                continue  # still rebooting
            if hashes(listing)[:1] == [NEW_HASH.hex()]:
                break
    await asyncio.to_thread(run, "image", "state-write", "--confirm")
    return len(IMAGE) / seconds


def rig_env(rig: Rig) -> dict[str, str]:
    return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": rig.bus_address}


async def status_of(rig: Rig) -> dict[str, Any]:
    return await rig.status(0)


def running_confirmed(status: dict[str, Any]) -> bool:
    return any(i["slot"] == 0 and i["hash"] == NEW_HASH.hex() and i["confirmed"]
               for i in status["images"])


async def test_smpmgr_updates_a_virtual_controller_over_udp(tmp_path: Path) -> None:
    options = RigOptions(controllers=1, udp_own_address=True)
    async with Rig(options) as rig:
        host, _port = udp_endpoint(options, 0)
        rate = await smpmgr_full_update(rig_env(rig), ["--ip", host], tmp_path)
        assert running_confirmed(await status_of(rig))
    print(f"smpmgr over UDP: {rate / 1000:.1f} kB/s")


async def test_smpmgr_updates_a_virtual_controller_over_ble(tmp_path: Path) -> None:
    async with Rig(RigOptions(controllers=1)) as rig:
        rate = await smpmgr_full_update(rig_env(rig), ["--ble", rig.controllers[0].address],
                                        tmp_path)
        assert running_confirmed(await status_of(rig))
    print(f"smpmgr over BLE: {rate / 1000:.1f} kB/s")


def toolkit_full_update(connect: Callable[[], Any], params_expected: tuple[int, int]) -> float:
    client = connect()
    client.check_connection()
    assert client.os_echo("hello") == "hello"
    params = client.os_mcumgr_parameters()
    assert (params.buf_size, params.buf_count) == params_expected
    client.use_auto_frame_size()
    assert all(s.hash != NEW_HASH for s in client.image_get_state())
    started = time.monotonic()
    client.image_upload(IMAGE)
    seconds = time.monotonic() - started
    marked = client.image_set_state(NEW_HASH, confirm=False)
    assert any(s.slot == 1 and s.hash == NEW_HASH and s.pending for s in marked)
    client.os_system_reset()
    del client  # the reset ends a BLE link; a new client is what a user would start
    deadline = time.monotonic() + REBOOT_WITHIN_S
    while True:
        time.sleep(1.0)
        try:
            client = connect()
            states = client.image_get_state()
        except Exception:  # the device is rebooting: the toolkit's own error types
            if time.monotonic() > deadline:
                raise
            continue
        if any(s.slot == 0 and s.hash == NEW_HASH and s.active for s in states):
            break
        assert time.monotonic() < deadline, "never booted the new image"
    confirmed = client.image_set_state(confirm=True)
    assert any(s.slot == 0 and s.hash == NEW_HASH and s.confirmed for s in confirmed)
    return len(IMAGE) / seconds


async def test_mcumgr_toolkit_updates_a_virtual_controller_over_udp() -> None:
    options = RigOptions(controllers=1, udp_own_address=True)
    async with Rig(options) as rig:
        host, _port = udp_endpoint(options, 0)
        rate = await asyncio.to_thread(
            toolkit_full_update, lambda: MCUmgrClient.udp(host, 1337, timeout_ms=5000),
            (2048, 2))  # Zephyr's UDP netbuf defaults
        assert running_confirmed(await status_of(rig))
    print(f"mcumgr-toolkit over UDP: {rate / 1000:.1f} kB/s")


async def test_mcumgr_toolkit_updates_a_virtual_controller_over_ble(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Three controllers: with one adapter per controller listed, btleplug would pick a wrong
    # one three times in four.
    async with Rig(RigOptions(controllers=3)) as rig:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", rig.bus_address)
        address = rig.controllers[0].address
        rate = await asyncio.to_thread(
            toolkit_full_update, lambda: MCUmgrClient.ble(address, timeout_ms=5000),
            (384, 4))
        assert running_confirmed(await status_of(rig))
    print(f"mcumgr-toolkit over BLE: {rate / 1000:.1f} kB/s")

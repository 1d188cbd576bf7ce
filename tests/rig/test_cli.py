"""The CLI as a user runs it against the rig: `awgw scan`, `pair`, `valve ... open`, then
`state --json` shows that valve open; once acting directly on the radio, once through the
daemon's control socket."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig
from tests.helpers.cli import FIRST, SECOND, Cli

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(controllers=2)]
@pytest.fixture
def cli(rig: Rig, tmp_path: Path) -> Cli:
    return Cli(rig, tmp_path)


async def _flow(cli: Cli) -> None:
    found = await cli.run("scan", "--json")
    by_address = {entry["address"]: entry for entry in found}
    assert {FIRST, SECOND} <= set(by_address)
    assert by_address[FIRST]["name"] == "AutoWatering" and by_address[FIRST]["rssi"] < 0
    paired = await cli.run("pair", FIRST, "--json")
    assert paired["address"] == FIRST and paired["bonded"] and paired["firmware_version"]
    opened = await cli.run("valve", FIRST, "2", "open", "--minutes", "5", "--json")
    assert opened["ok"] and opened["status"] == "confirmed", opened
    state = await cli.run("state", FIRST, "--json")
    assert state["address"] == FIRST and state["firmware_version"] == "3.1.0"
    assert state["fresh"] is True
    assert {v["channel"]: v["open"] for v in state["valves"]} == {
        ch: ch == 2 for ch in range(8)}
    assert state["current_task"]["channel"] == 2
    assert state["system_status"]["name"] == "OK" and state["alarm"]["active"] is False
    assert state["flow"] is not None and state["task_queue"] is not None
    devices = await cli.run("devices", "--json")
    assert [d["address"] for d in devices] == [FIRST] and devices[0]["bonded"]
    closed = await cli.run("valve", FIRST, "2", "close", "--json")
    assert closed["ok"], closed


async def test_cli_direct_scan_pair_valve_state(cli: Cli) -> None:
    await _flow(cli)
    # Typed, clear errors with exit codes a script can act on.
    assert "not a paired controller" in await cli.run("state", SECOND, "--json", expect=3)
    assert "out of range" in await cli.run("valve", FIRST, "9", "open", "--minutes", "1",
                                           expect=2)
    assert "--minutes" in await cli.run("valve", FIRST, "1", "open", expect=2)
    unpaired = await cli.run("unpair", FIRST, "--json")
    assert unpaired["address"] == FIRST and not unpaired["bonded"]
    assert await cli.run("devices", "--json") == []


async def test_cli_through_the_daemon(cli: Cli, tmp_path: Path) -> None:
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "daemon", env=cli.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    socket = tmp_path / "control.sock"
    err = b""
    try:
        async with asyncio.timeout(20):
            while not socket.is_socket():  # noqa: ASYNC110 - a file appearing has no event
                await asyncio.sleep(0.1)
        assert oct(socket.stat().st_mode & 0o777) == "0o660"
        try:
            await _flow(cli)
            devices = await cli.run("devices", "--json")
            assert devices[0]["link"] is not None  # answered by the daemon's supervisor
            # A firmware update through the daemon: the controller answers busy meanwhile.
            image = tmp_path / "new.bin"
            image.write_bytes(make_image((9, 2, 0, 0), firmware_body("daemon-ota", 200_000)))
            ota = asyncio.create_task(cli.run("ota", FIRST, str(image), "--confirm", "explicit",
                                              "--json", all_lines=True))
            await asyncio.sleep(1.5)
            busy = await cli.run("valve", FIRST, "1", "open", "--minutes", "1", expect=4)
            assert "firmware update" in busy
            *progress_lines, outcome = await ota
            # The daemon streamed the update's progress to the CLI, line by line.
            progress = [line["progress"] for line in progress_lines]
            uploads = [p["offset"] for p in progress if p["phase"] == "upload"]
            assert len(uploads) >= 3 and uploads == sorted(uploads), progress
            assert {p["total"] for p in progress if p["phase"] == "upload"} == {
                image.stat().st_size}
            assert {"upload", "reboot_wait"} <= {p["phase"] for p in progress}
            assert outcome["result"] == "succeeded", outcome
            assert outcome["version"] == "9.2.0" and not outcome["skipped_upload"]
        finally:
            daemon.terminate()
            err, _ = await asyncio.wait_for(daemon.communicate(), 30)
    except BaseException:
        print(err.decode()[-6000:])
        raise
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    assert {"daemon_starting", "controller_paired", "command_done", "daemon_stopped"} <= names
    assert daemon.returncode in (0, -15)

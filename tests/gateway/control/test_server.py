"""Boundaries: configuration files, the registry, the control socket and the pairing agent
each meet bad input with a typed, clear error."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from dbus_fast import DBusError

from gateway.bluez.agent import PairingAgent, PairingWindow, device_path
from gateway.config import LinkPolicy, OtaPolicy, load_config
from gateway.control import client as control
from gateway.control import wire
from gateway.control.server import MAX_CLIENTS, ControlServer
from gateway.control.wire import MAX_REQUEST
from gateway.errors import (
    ConfigError,
    ControlBusy,
    ControlError,
    ControlRefused,
    UnknownController,
)
from gateway.ops.models import (
    PONG,
    REQUEST,
    RESULTS,
    STATE,
    Claim,
    CloudStatusQuery,
    Devices,
    GetState,
    HubStatusQuery,
    Ota,
    Pair,
    Ping,
    Pong,
    Refresh,
    Request,
    Result,
    Scan,
    Unclaim,
    Unpair,
    ValveClose,
    ValveOpen,
)
from gateway.store.registry import Registry
from tests.helpers import until

ADDRESS = "C0:FF:EE:00:00:01"


def test_config_defaults_file_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWGW_CONFIG", raising=False)
    monkeypatch.setenv("AWGW_STATE_DIR", str(tmp_path))
    file = tmp_path / "c.toml"
    file.write_text('[link]\nmax_links = 2\ndefault_policy = "keep"\n')
    config = load_config(file)
    assert config.link.max_links == 2 and config.link.default_policy is LinkPolicy.KEEP
    assert config.state_dir == tmp_path and config.socket_path == tmp_path / "control.sock"
    for text, needle in (('[link]\nmax_links = 0\n', "link.max_links"),
                         ('[link]\nbogus = 1\n', "link.bogus"),
                         ('[ota]\nreboot_window_s = 0\n', "ota.reboot_window_s"),
                         ('log_level = "loud"\n', "log_level"),
                         ('[cloud]\nbase_url = "ftp://x"\n', "cloud.base_url"),
                         ('[cloud]\nmode = "push"\n', "cloud.mode"),
                         ('[cloud]\nota_policy = "always"\n', "cloud.ota_policy"),
                         ('[cloud]\nmaintenance_window = [2, 30]\n', "cloud.maintenance_window"),
                         ("not toml [", "not valid TOML")):
        file.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_config(file)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_registry_round_trip_and_typed_errors(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite3")
    registry.add("c0:ff:ee:00:00:01", name="AutoWatering", bonded=True, serial="100002")
    registry.seen("C0:FF:EE:00:00:01", firmware_version="3.1.0")
    registry.set_policy("C0:FF:EE:00:00:01", LinkPolicy.KEEP)
    (record,) = registry.all()
    assert record.address == "C0:FF:EE:00:00:01" and record.firmware_version == "3.1.0"
    assert record.policy is LinkPolicy.KEEP and record.last_seen is not None
    with pytest.raises(UnknownController, match="not a Bluetooth address"):
        registry.get("C0:FF:EE")
    with pytest.raises(UnknownController, match="pair it first"):
        registry.get("C0:FF:EE:00:00:09")
    assert record.board == "arduino_nano_33_ble" and record.ota_policy is None
    registry.add("C0:FF:EE:00:00:01", name="AutoWatering", bonded=True, board="Other_Board",
                 ota_policy=OtaPolicy.AUTO)
    assert registry.get("C0:FF:EE:00:00:01").board == "other_board"
    assert registry.get("C0:FF:EE:00:00:01").ota_policy is OtaPolicy.AUTO
    registry.remove("C0:FF:EE:00:00:01")
    with pytest.raises(UnknownController):
        registry.remove("C0:FF:EE:00:00:01")


def test_a_registry_from_before_the_board_column_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE controllers (address TEXT PRIMARY KEY, name TEXT NOT NULL, "
               "serial TEXT, bonded INTEGER NOT NULL DEFAULT 0, firmware_version TEXT, "
               "policy TEXT, paired_at REAL NOT NULL, last_seen REAL)")
    db.execute("INSERT INTO controllers VALUES ('C0:FF:EE:00:00:01', 'AW', '100001', 1, "
               "'3.1.0', NULL, 1.0, NULL)")
    db.commit()
    db.close()
    (record,) = Registry(path).all()
    assert record.serial == "100001" and record.board == "arduino_nano_33_ble"


async def _raw(path: Path, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        writer.write(line)
        await writer.drain()
        answer: dict[str, Any] = json.loads(await reader.readline())
        return answer
    finally:
        writer.close()


async def test_control_socket_answers_typed_errors_and_survives_garbage(tmp_path: Path) -> None:
    seen: list[Request] = []

    async def handler(request: Request, _progress: object = None) -> Result:
        seen.append(request)
        if isinstance(request, GetState):
            raise UnknownController(f"{request.address} is not a paired controller")
        return Pong()

    path = tmp_path / "control.sock"
    server = ControlServer(path, handler)
    await server.start()
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        bad = {
            b"not json\n": "bad control request",
            b"\xff\xfe\n": "bad control request",
            b'{"op": "format_disk"}\n': "format_disk",  # unknown op
            b'{"op": "state"}\n': "state.address",  # missing field
            b'{"op": "valve_open", "address": "C0:FF:EE:00:00:01", "channel": "two", '
            b'"minutes": 5}\n': "valve_open.channel",  # wrongly typed
            b'{"op": "valve_open", "address": "C0:FF:EE:00:00:01", "channel": 2, '
            b'"minutes": 5000}\n': "valve_open.minutes",  # out of range
            b'{"op": "valve_close", "address": "C0:FF:EE:00:00:01", "channel": 9}\n':
                "out of range",
            b'{"op": "ping", "args": {}}\n': "ping.args",  # the old untyped shape
            b'{"op": "ping", "pad": "' + b"x" * (MAX_REQUEST + 10) + b'"}\n': "oversized",
        }
        for line, needle in bad.items():
            answer = await _raw(path, line)
            assert answer["ok"] is False and answer["error"]["type"] == "ControlError", line
            assert needle in answer["error"]["message"], (needle, answer)
        assert seen == []  # nothing malformed reached the handler
        with pytest.raises(UnknownController, match="not a paired"):
            await control.call(path, GetState(address="C0:FF:EE:00:00:09"), STATE)
        assert await control.call(path, Ping(), PONG) == Pong()  # still serving
        # An answer that does not fit the op's result model is a typed error too.
        with pytest.raises(ControlError, match="does not fit"):
            await control.call(path, Ping(), STATE)
    finally:
        await server.close()
    with pytest.raises(ControlError, match="cannot reach the daemon"):
        await control.call(path, Ping(), PONG)


def test_every_request_round_trips_and_names_its_result() -> None:
    requests: list[Request] = [
        Ping(), Scan(), Pair(address="C0:FF:EE:00:00:01", passkey=123456),
        Unpair(address="C0:FF:EE:00:00:01"), Devices(), GetState(address="a"),
        Refresh(address="a"), ValveOpen(address="a", channel=2, minutes=5),
        ValveClose(address="a", channel=255), Ota(address="a", image=b"\x3d\xb8\xf3\x96", window=2),
        CloudStatusQuery(), Claim(serial="000123"), Unclaim(serial="000123", reason="moved"),
        HubStatusQuery()]
    assert {r.op for r in requests} == set(RESULTS)
    for request in requests:
        assert REQUEST.validate_json(request.model_dump_json()) == request


def test_pairing_agent_only_answers_inside_its_window() -> None:
    agent = PairingAgent()
    device = device_path("hci0", "C0:FF:EE:00:00:01")
    with pytest.raises(DBusError):
        agent.passkey_for(device)  # no window open
    agent.window = PairingWindow(device, 123456, time.monotonic() + 60)
    assert agent.capability() == "KeyboardOnly"
    assert agent.passkey_for(device) == 123456
    with pytest.raises(DBusError):
        agent.passkey_for(device_path("hci0", "C0:FF:EE:00:00:02"))  # another device
    with pytest.raises(DBusError):
        agent.confirm(device, 111111)  # numeric comparison mismatch
    agent.confirm(device, 123456)
    agent.window = PairingWindow(device, None, time.monotonic() - 1)  # closed
    with pytest.raises(DBusError):
        agent.confirm(device, 123456)
    assert agent.capability() == "NoInputNoOutput"


async def test_progress_lines_come_before_the_answer_and_a_stop_cancels_the_request(
        tmp_path: Path) -> None:
    from firmware_bridge.ota.outcome import Phase, Progress

    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(request: Request, progress: Callable[[Progress], None] | None) -> Result:
        assert progress is not None
        if isinstance(request, Ping):
            for offset in (0, 1000, 2000):
                progress(Progress(Phase.UPLOAD, offset, 2000, 500.0, 1.0))
                await asyncio.sleep(wire.PROGRESS_EVERY_S + 0.01)
            progress(Progress(Phase.DONE, 2000, 2000, 500.0, None))
            return Pong()
        started.set()
        try:
            await asyncio.Event().wait()  # an update that takes long
        finally:
            cancelled.set()
        raise AssertionError("not reached")

    path = tmp_path / "control.sock"
    server = ControlServer(path, handler)
    await server.start()
    seen: list[Progress] = []
    try:
        assert await control.call(path, Ping(), PONG, seen.append) == Pong()
        assert [(p.phase, p.offset) for p in seen] == [
            (Phase.UPLOAD, 0), (Phase.UPLOAD, 1000), (Phase.UPLOAD, 2000), (Phase.DONE, 2000)]
        assert await control.call(path, Ping(), PONG) == Pong()  # without a sink: skipped
        slow = asyncio.create_task(control.call(path, Devices(), PONG))
        await started.wait()
    finally:
        await server.close()  # the daemon stopping: running requests are cancelled
    assert cancelled.is_set()
    with pytest.raises(ControlError, match="closed the connection before answering devices"):
        await slow


async def test_an_idle_flood_never_keeps_a_request_out(tmp_path: Path) -> None:
    # hostile-edges M2: 200 idle connections, and ping had no answer within 3 s.
    release = asyncio.Event()

    async def handler(request: Request, _progress: object = None) -> Result:
        if isinstance(request, GetState):
            await release.wait()  # a request that takes its time
        return Pong()

    path = tmp_path / "control.sock"
    server = ControlServer(path, handler)
    await server.start()
    idle = []
    try:
        for _ in range(3 * MAX_CLIENTS):  # idle connections: each newcomer takes the oldest's
            idle.append(await asyncio.open_unix_connection(str(path)))
        async with asyncio.timeout(1.0):
            assert await control.call(path, Ping(), PONG) == Pong()
        assert server.evicted >= 2 * MAX_CLIENTS
        # Every place running a real request: then, and only then, busy.
        slow = [asyncio.create_task(control.call(path, GetState(address=ADDRESS), PONG))
                for _ in range(MAX_CLIENTS)]
        await until(lambda: len(server._clients) == MAX_CLIENTS and not server._reading)
        async with asyncio.timeout(1.0):
            with pytest.raises(ControlBusy, match="try again"):
                await control.call(path, Ping(), PONG)
        release.set()
        assert all(r == Pong() for r in await asyncio.gather(*slow))
    finally:
        for _reader, writer in idle:
            writer.close()
        await server.close()


async def test_pairing_firmware_and_claims_need_root_and_every_change_is_audited(
        tmp_path: Path) -> None:
    # hostile-edges L5: every member of the socket's group could pair, flash and claim.
    ran: list[str] = []

    async def handler(request: Request, _progress: object = None) -> Result:
        ran.append(request.op)
        return Pong()

    path = tmp_path / "control.sock"
    server = ControlServer(path, handler, privileged_uids=frozenset())  # nobody is root here
    await server.start()
    try:
        with structlog.testing.capture_logs() as logs:
            for request in (Pair(address=ADDRESS), Unpair(address=ADDRESS),
                            Ota(address=ADDRESS, image=b"\x3d\xb8\xf3\x96"), Claim(serial="100001"),
                            Unclaim(serial="100001")):
                with pytest.raises(ControlRefused, match="needs root"):
                    await control.call(path, request, PONG)
            await control.call(path, ValveOpen(address=ADDRESS, channel=2, minutes=1), PONG)
            await control.call(path, Ping(), PONG)
        assert ran == ["valve_open", "ping"]
        audited = [(e["op"], e["allowed"], e["uid"]) for e in logs if e["event"] == "control_op"]
        uid = os.geteuid()
        assert audited == [("pair", False, uid), ("unpair", False, uid), ("ota", False, uid),
                           ("claim", False, uid), ("unclaim", False, uid),
                           ("valve_open", True, uid)]
    finally:
        await server.close()

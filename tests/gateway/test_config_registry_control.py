"""Boundaries: configuration files, the registry, the control socket and the pairing agent
each meet bad input with a typed, clear error."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from dbus_fast import DBusError

from gateway import control
from gateway.bluez.agent import PairingAgent, PairingWindow, device_path
from gateway.config import LinkPolicy, load_config
from gateway.control import ControlRequest, ControlServer
from gateway.errors import ConfigError, ControlError, UnknownController
from gateway.store.registry import Registry


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
    registry.remove("C0:FF:EE:00:00:01")
    with pytest.raises(UnknownController):
        registry.remove("C0:FF:EE:00:00:01")


async def test_control_socket_answers_typed_errors_and_survives_garbage(tmp_path: Path) -> None:
    async def handler(request: ControlRequest) -> object:
        if request.op == "state":
            raise UnknownController("C0:FF:EE:00:00:09 is not a paired controller")
        return {"pong": True}

    path = tmp_path / "control.sock"
    server = ControlServer(path, handler)
    await server.start()
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        for garbage in (b"not json\n", b'{"op": "format_disk"}\n', b"\xff\xfe\n"):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(garbage)
            answer = json.loads(await reader.readline())
            writer.close()
            assert answer["ok"] is False and answer["error"]["type"] == "ControlError"
        with pytest.raises(UnknownController, match="not a paired"):
            await control.call(path, "state", address="C0:FF:EE:00:00:09")
        assert await control.call(path, "ping") == {"pong": True}  # still serving
    finally:
        await server.close()
    with pytest.raises(ControlError, match="cannot reach the daemon"):
        await control.call(path, "ping")


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

"""Bad input at the daemon's edges: an invalid config file or value names the key and exits 7
before anything starts (no READY, no files); an unusable state directory is a clear error; a
user outside the socket's group is told how to get in."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import exits
from gateway.control import client as control
from gateway.errors import ConfigError, ControlError
from gateway.ops.models import PONG, Ping


def daemon(tmp_path: Path, config: str, state_dir: Path | None = None
           ) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    path = tmp_path / "config.toml"
    path.write_text(config)
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.setblocking(False)
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "daemon"], capture_output=True, text=True,
            timeout=60, check=False,
            env={**os.environ, "AWGW_CONFIG": str(path), "NOTIFY_SOCKET": str(notify),
                 "AWGW_STATE_DIR": str(state_dir or tmp_path / "state"),
                 "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"})
        received = []
        while True:
            try:
                received.append(sock.recv(4096))
            except BlockingIOError:
                break
    return result, received


@pytest.mark.parametrize(("config", "names"), [
    ("[link]\nmax_links = 0\n", "link.max_links"),
    ('[mqtt]\nport = "mqtt"\n', "mqtt.port"),
    ('log_level = "loud"\n', "log_level"),
    ("[cloud]\nsnapshot_period_s = -1\n", "cloud.snapshot_period_s"),
    ("[link]\nmax_linkz = 2\n", "link.max_linkz"),
    ("[link\nmax_links = 2\n", "not valid TOML"),
    ("metrics_port = 70000\n", "metrics_port"),
    ('[mqtt]\nenabled = true\npassword_file = "/nonexistent/mqtt-password"\n',
     "mqtt.password_file"),
    # hostile-edges M7: accepted, then FileNotFoundError ended the MQTT relay after READY.
    ('[mqtt]\nenabled = true\ntls = true\nca_file = "/nonexistent/ca.pem"\n', "mqtt.ca_file"),
    # L7: the bearer token, password and refresh token in clear; paths that depend on the
    # directory the daemon starts in; a cloud without a URL exited 11 after the start.
    ('[cloud]\nenabled = true\nbase_url = "http://cloud.example.com"\n', "cloud.base_url"),
    ('[cloud]\nbase_url = "https://a.example.com"\ncognito_endpoint = "http://c.example.com/"\n',
     "cloud.cognito_endpoint"),
    ('[mqtt]\nca_file = "certs/ca.pem"\n', "mqtt.ca_file"),
    ('control_socket = "awgw.sock"\n', "control_socket"),
    ("[cloud]\nenabled = true\n", "cloud.base_url"),
    ('[mqtt]\nallowed_ops = ["valve_opne"]\n', "mqtt.allowed_ops"),
    ('[ota]\npublic_key = "/nonexistent/mcuboot.pub.pem"\n', "ota.public_key"),
])
def test_a_bad_config_names_the_key_and_exits_7_before_anything_starts(
        tmp_path: Path, config: str, names: str) -> None:
    result, notified = daemon(tmp_path, config)
    assert result.returncode == exits.ERRORS[ConfigError] == 7, result.stderr
    assert names in result.stderr and "Traceback" not in result.stderr
    assert notified == []  # no READY=1, nothing half-started
    assert not (tmp_path / "state").exists()


def test_a_ca_file_that_is_not_a_certificate_names_the_key(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    result, notified = daemon(tmp_path, f'[mqtt]\nenabled = true\ntls = true\n'
                                        f'ca_file = "{bogus}"\n')
    assert result.returncode == 7 and "mqtt.ca_file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and notified == []


def test_an_unusable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result, notified = daemon(tmp_path, "", state_dir=blocker / "state")
    assert result.returncode == exits.FAILURE
    assert "cannot open registry" in result.stderr and str(blocker) in result.stderr
    assert "Traceback" not in result.stderr and notified == []


async def test_a_user_outside_the_sockets_group_is_told_how_to_get_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root passes any file mode, so the kernel's EACCES is what the connect raises here.
    async def refused(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(asyncio, "open_unix_connection", refused)
    with pytest.raises(ControlError, match=r"Permission denied; only members .* usermod -aG "
                                           r"awgw"):
        await control.call(tmp_path / "control.sock", Ping(), PONG)

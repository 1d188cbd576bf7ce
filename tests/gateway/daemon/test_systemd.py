"""sd_notify over a real datagram socket, as systemd receives it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.daemon import systemd


def test_notify_and_watchdog_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1")
        assert sock.recv(64) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert systemd.watchdog_interval_s() is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")

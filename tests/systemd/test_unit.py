"""systemd/awgw.service: `systemd-analyze verify` accepts it, `systemd-analyze security` scores
its exposure below 2.0 ("OK"), and its settings agree with the code they promise things about
(the credentials' names, the stop and start budgets, the notify contract)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.control import wire as control
from gateway.daemon import hub as daemon
from gateway.demo import hub
from gateway.link.radios import keys
from gateway.relay.mqtt import password as mqtt
from gateway.store import credentials

UNIT = Path(__file__).parents[2] / "systemd" / "awgw.service"
EXPOSURE_GOAL = 2.0
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith(("#", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart= is executable: point it at this checkout's awgw.
    assert ANALYZE is not None
    awgw = Path(sys.executable).with_name("awgw")
    unit = tmp_path / "awgw.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={awgw}", UNIT.read_text()))
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "awgw.service" not in result.stderr, result.stderr


@needs_analyze
def test_exposure_is_below_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, check=False, timeout=60)
    match = re.search(r"Overall exposure level for awgw\.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    with capsys.disabled():
        print(f"\nsystemd-analyze security: awgw.service exposure {match.group(1)} "
              f"{match.group(2)}")
    assert float(match.group(1)) < EXPOSURE_GOAL and match.group(2) == "OK", result.stdout


def test_the_unit_keeps_its_promises() -> None:
    s = settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    # A static user in the bluetooth group: DynamicUser= would fall outside BlueZ's policy.
    # The socket's group is the service's own (hostile-edges L5), the state private (L8),
    # and no Bluetooth socket family: BLE goes through D-Bus (L8).
    assert s["User"] == ["awgw"] and s["Group"] == ["awgw"] and "DynamicUser" not in s
    assert s["SupplementaryGroups"] == ["bluetooth"] and s["StateDirectoryMode"] == ["0700"]
    assert "AF_BLUETOOTH" not in s["RestrictAddressFamilies"][0]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert "@system-service" in s["SystemCallFilter"]
    assert s["StateDirectory"] == s["ConfigurationDirectory"] == s["RuntimeDirectory"] == [
        "awgw"]
    assert s["MemoryMax"]
    # The credentials the code reads are the ones the unit loads.
    loaded = {v.split(":", 1)[0]: v.split(":", 1)[1] for v in s["LoadCredential"]}
    assert set(loaded) == {credentials.CREDENTIAL_NAME, mqtt.CREDENTIAL_NAME,
                           keys.CREDENTIAL_DIRECTORY}
    # systemd names a directory's files <ID>_<file>: the proxies' keys, by proxy name.
    assert keys.CREDENTIAL_PREFIX == keys.CREDENTIAL_DIRECTORY + "_"
    # The daemon's own wind-down fits the stop budget; its wait for BlueZ the start budget.
    stop_s = seconds(s["TimeoutStopSec"][0])
    assert stop_s > control.CLOSE_CLIENTS_S and stop_s >= hub.STOP_WITHIN_S
    assert seconds(s["TimeoutStartSec"][0]) > daemon.BLUEZ_RETRY_S
    assert seconds(s["WatchdogSec"][0]) >= 30  # the pings go at half of it

"""``awgw demo --duration 20 --json``: the front-door demo (the gateway's main job on the
virtual rig), end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.rig


def test_demo_json_reports_three_connected_controllers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "20", "--json"],
        capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["controllers"] == 3
    assert summary["connected"] == 3 and summary["fresh"] == 3
    (command,) = summary["commands"]
    assert command["status"] == "confirmed" and command["seconds"] < 5
    for controller in summary["details"]:
        assert controller["firmware_version"] == "3.1.0"
        assert len(controller["valves"]) == 8
        assert controller["decode_problems"] == 0
        assert controller["link"] == "connected" and controller["policy"] == "keep"
    # The demo's schedules water a zone every 15 s: the live view must have seen it happen.
    assert sum(c["notifications"] for c in summary["details"]) > 3
    # ... and the emulated cloud got each controller's snapshot and the events, once each.
    cloud = summary["cloud"]
    assert cloud["mode"] == "gateway_routes" and len(cloud["snapshots"]) == 3
    assert {"controller_reachable", "watering_started"} <= set(cloud["event_types"])
    assert cloud["duplicates"] == 0

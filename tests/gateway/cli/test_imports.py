"""The CLI imports only what its command needs: the parser and the socket client stay light,
so `awgw --help`, `awgw status` and `awgw state` answer fast (the radio, the cloud client,
MCUboot, the rig and structlog are imported only by the commands that use them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("bleak", "dbus_fast", "httpx", "smpclient", "structlog", "rich", "cbor2",
         "gateway.daemon", "gateway.link.manager", "gateway.cli.direct", "gateway.cli.firmware",
         "gateway.relay.account", "gateway.sim.rig")


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("code", [
    "import gateway.cli.main",
    "from gateway.cli.main import build_parser; build_parser()",
    "from gateway.cli.link import operations",
])
def test_the_parser_and_the_socket_path_import_nothing_heavy(code: str) -> None:
    loaded = loaded_after(code)
    assert [m for m in HEAVY if m in loaded] == []


def test_a_runner_is_imported_for_its_command_only() -> None:
    loaded = loaded_after("from gateway.cli.main import runner; runner('image')")
    assert "gateway.cli.firmware" in loaded and "gateway.cli.direct" not in loaded

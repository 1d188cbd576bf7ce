"""`awgw` as a user runs it against the rig: a subprocess with the rig's D-Bus, its own state
directory and a config with metrics off (tests run in parallel; the default port is one)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.sim.rig import Rig

FIRST, SECOND = "C0:FF:EE:00:00:00", "C0:FF:EE:00:00:01"


class Cli:
    def __init__(self, rig: Rig, state_dir: Path) -> None:
        config = state_dir / "config.toml"
        # Metrics off: tests run in parallel, and the default port is one for all.
        config.write_text("metrics_port = 0\n[link]\nrefresh_period_s = 5\nconnect_timeout_s = 8\n")
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": rig.bus_address,
                    "AWGW_STATE_DIR": str(state_dir), "AWGW_CONFIG": str(config)}

    async def run(self, *args: str, expect: int = 0, all_lines: bool = False) -> Any:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", *args, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == expect, (args, proc.returncode, err.decode()[-1500:])
        if "--json" in args and expect == 0:
            lines = [json.loads(line) for line in out.decode().strip().splitlines()]
            return lines if all_lines else lines[-1]
        return err.decode()

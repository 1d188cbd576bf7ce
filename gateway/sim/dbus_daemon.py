"""A private D-Bus daemon for the virtual rig: nothing on the host's system bus is touched."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from gateway.sim.errors import SimError
from gateway.sim.processes import tied

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="max_connections_per_user">1000</limit>
  <limit name="max_match_rules_per_connection">{match_rules}</limit>
</busconfig>
"""
# BlueZoo watches every object of every controller's GATT application with a match rule of
# its own connection: about 40 a controller. dbus-daemon's default (512) cut a 24-controller
# garden's last controllers off: their notifications never reached any central.
MAX_MATCH_RULES = 50_000

# dbus-daemon prints its address within milliseconds; 10 s only guards against a broken install.
START_TIMEOUT_S = 10.0


class PrivateBus:
    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._proc: asyncio.subprocess.Process | None = None
        self.address = ""

    async def start(self) -> str:
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise SimError("dbus-daemon is not installed (apt-get install dbus)")
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "bus.conf"
        config.write_text(_CONFIG.format(socket=self._workdir / "system_bus_socket",
                                         match_rules=MAX_MATCH_RULES))
        self._proc = await asyncio.create_subprocess_exec(
            *tied([daemon, f"--config-file={config}", "--nofork", "--print-address"]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # stopped by the rig, after the processes that use it
        )
        assert self._proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await self._proc.stdout.readline()
        self.address = line.decode().strip()
        if not self.address:
            raise SimError("dbus-daemon did not print its address")
        return self.address

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()

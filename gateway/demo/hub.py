"""`awgw daemon` as a child process on the virtual rig, configured for the cloud emulator and a
loopback MQTT broker: what the demo, the systemd-contract tests and the soak bench run.

The daemon is the real one (the same entry point systemd starts); everything reaches it the way
a homeowner's tools do, through its control socket. Its log (stdout, JSON lines) goes to a file
in the state directory, so a long run never blocks on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import load_config
from gateway.control.client import SocketOperations
from gateway.ops.models import Claim, Pair
from gateway.relay.account import CloudAccount
from gateway.sim.processes import terminate
from gateway.sim.rig import Rig

# The daemon's imports, its first BlueZ probe and scanner start; a loaded Pi-class machine
# takes several times this machine's ~2 s.
DAEMON_UP_WITHIN_S = 60.0
# SIGTERM to exit: the unit's TimeoutStopSec= is 30 s; the daemon's own wind-down (requests
# cancelled within control.CLOSE_CLIENTS_S = 10 s, outbox writers flushed) stays under it.
STOP_WITHIN_S = 30.0


@dataclass
class HubConfig:
    """The parts of config.toml the rig-side runs vary; everything else is the default."""

    bus_address: str
    cloud_url: str | None = None
    client_id: str = ""
    broker_port: int | None = None
    metrics_port: int = 0
    refresh_period_s: float = 10.0
    policy: str = "keep"
    max_links: int = 3
    snapshot_period_s: float = 3.0
    extra: str = ""  # more TOML, appended as is

    def toml(self) -> str:
        lines = [f"metrics_port = {self.metrics_port}", "[link]", 'adapter = "hci0"',
                 f"max_links = {self.max_links}", f'default_policy = "{self.policy}"',
                 f"refresh_period_s = {self.refresh_period_s}", "connect_timeout_s = 8",
                 # The rig's controllers confirm themselves after the reboot; the gateway
                 # confirms a few seconds later if they did not.
                 "[ota]", "self_confirm_wait_s = 5"]
        if self.cloud_url is not None:
            lines += ["[cloud]", "enabled = true", f'base_url = "{self.cloud_url}"',
                      f'cognito_endpoint = "{self.cloud_url}/_cognito/"',
                      f'client_id = "{self.client_id}"',
                      f"snapshot_period_s = {self.snapshot_period_s}",
                      "history_period_s = 3600", "ota_check_period_s = 3600",
                      # The demo's cloud asks for a poll every 2 s, so an update starts soon.
                      "jobs_poll_min_s = 1"]
        if self.broker_port is not None:
            lines += ["[mqtt]", "enabled = true", 'host = "127.0.0.1"',
                      f"port = {self.broker_port}", "keepalive_s = 10"]
        return "\n".join(lines) + "\n" + self.extra


@dataclass
class HubProcess:
    state_dir: Path
    config: HubConfig
    env: dict[str, str] = field(default_factory=dict)  # more environment (NOTIFY_SOCKET, ...)
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.toml"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "daemon.log"

    @property
    def ops(self) -> SocketOperations:
        return SocketOperations(self.socket_path)

    def write_config(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config.toml())

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        return {**env, "DBUS_SYSTEM_BUS_ADDRESS": self.config.bus_address,
                "AWGW_STATE_DIR": str(self.state_dir), "AWGW_CONFIG": str(self.config_path),
                **self.env}

    async def link_cloud(self, username: str, password: str) -> None:
        """`awgw cloud link` before the daemon starts, as the service user would run it."""
        self.write_config()
        config = load_config(self.config_path).model_copy(update={"state_dir": self.state_dir})
        async with CloudAccount(config) as account:
            await account.link_with_password(username, password)

    async def start(self, *, wait: bool = True) -> None:
        self.write_config()
        self.socket_path.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "daemon", env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        self.starts += 1
        if wait:
            await self.wait_listening()

    async def wait_listening(self) -> None:
        async with asyncio.timeout(DAEMON_UP_WITHIN_S):
            while not self.socket_path.is_socket():
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"the daemon exited with {self.process.returncode}: "
                                       f"{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def stop(self) -> int | None:
        """SIGTERM, as systemd stops the service; the exit code (None if it had to be killed)."""
        proc, self.process = self.process, None
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        return proc.returncode if await terminate(proc, STOP_WITHIN_S) else None

    async def adopt(self, rig: Rig) -> None:
        """Pair every controller of ``rig`` through the daemon and claim it for the linked
        account, as a person setting up the garden would."""
        for handle in rig.controllers:
            await self.ops.pair(Pair(address=handle.address))
            await self.ops.claim(Claim(serial=handle.config.serial_number))

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

"""The daemon's systemd contract, with a datagram socket standing in for systemd's
NOTIFY_SOCKET: READY=1 only once the stores are open and the control socket listens; WATCHDOG=1
stops while the hub's adapter is gone and comes back after it returns; SIGTERM in the middle of
a cloud-triggered update gives STOPPING=1 and a clean exit, and the next start resumes the
upload where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.demo.hub import HubConfig, HubProcess
from gateway.ops.health import HubStatus
from gateway.ops.models import Claim, Pair
from gateway.sim.broker import free_port
from gateway.sim.cloud import EmulatorServer, World
from gateway.sim.cloud.publish import publish_release
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig
from tests.helpers import until

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(
    controllers=1, template=ControllerConfig(0, 0, "", time_scale=60.0,
                                             self_confirm_after_s=1.0))]
ADDRESS = "C0:FF:EE:00:00:00"
SERIAL = "100001"
USER, PASSWORD = "ana@example.com", "correct horse battery"
# WATCHDOG_USEC=2 s: the daemon pings every second (half of it, as sd_watchdog_enabled says).
WATCHDOG_USEC = 2_000_000
PING_S = WATCHDOG_USEC / 2e6
# health.RADIO_GRACE_S (4 s) of a missing adapter before the pings stop, plus a probe period
# (1 s here) and a loaded machine's slack.
PINGS_STOP_WITHIN_S = 15.0
# The adapter back: the next probe (1 s) sees it, and the ping goes with it.
PINGS_RESUME_WITHIN_S = 15.0
# A 240 kB image: ~8 s on the rig's BLE link model, long enough to stop in the middle.
BIG = make_image((9, 3, 0, 0), firmware_body("resume-me", 240_000))
# A job: the poll (1 s), the download, the gate's state read, the upload, MCUboot's swap and
# the confirm; a loaded machine several times this machine's ~15 s.
UPDATED_WITHIN_S = 180.0


@dataclass
class FakeSystemd:
    """What systemd receives on NOTIFY_SOCKET: each datagram with its arrival time."""

    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)

    def states(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if m.startswith(prefix)]

    def statuses(self) -> list[str]:
        return [m for _, m in self.messages if m.startswith("STATUS=")]

    async def receive(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(sock, 4096)
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))


@contextlib.asynccontextmanager
async def fake_systemd(tmp_path: Path) -> AsyncIterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(fake.path))
        sock.setblocking(False)
        task = asyncio.create_task(fake.receive(sock), name="fake systemd")
        try:
            yield fake
        finally:
            task.cancel()





# metrics.METRICS_PERIOD_S (5 s) between the families' rebuilds, and a loaded machine.
METRICS_WITHIN_S = 20.0


async def until_async(read: Callable[[], Awaitable[float | None]], want: float,
                      limit_s: float) -> None:
    async with asyncio.timeout(limit_s):
        while (await read()) != want:  # noqa: ASYNC110 - polling a scrape
            await asyncio.sleep(0.5)


def hub(rig: Rig, tmp_path: Path, fake: FakeSystemd, **config: object) -> HubProcess:
    return HubProcess(tmp_path / "state", HubConfig(bus_address=rig.bus_address,
                                                    **config),  # type: ignore[arg-type]
                      env={"NOTIFY_SOCKET": str(fake.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})


async def metric(url: str, name: str) -> float | None:
    async with httpx.AsyncClient() as http:
        text = (await http.get(url)).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def awgw(daemon: HubProcess, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, env={**daemon.environment(),
                                                         "COLUMNS": "80"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_ready_only_once_the_stores_are_open_and_the_socket_listens(
        rig: Rig, tmp_path: Path) -> None:
    async with fake_systemd(tmp_path) as fake:
        daemon = hub(rig, tmp_path, fake, metrics_port=free_port())
        seen_at_ready: dict[str, bool] = {}

        def ready() -> bool:
            if not fake.states("READY=1"):
                return False
            if not seen_at_ready:
                seen_at_ready.update(
                    registry=(daemon.state_dir / "registry.sqlite3").exists(),
                    socket=daemon.socket_path.is_socket())
            return True

        await daemon.start(wait=False)
        try:
            await until(ready, 60, "READY=1")
            assert seen_at_ready == {"registry": True, "socket": True}
            # Nothing else before READY but the STATUS lines that follow it.
            assert fake.messages[0][1] == "READY=1"
            await until(lambda: len(fake.states("WATCHDOG=1")) >= 2, 10, "two pings")
            assert any("0/3 links" in s for s in fake.statuses()), fake.statuses()
            # `awgw status`: one screen in 80 columns, and the same as JSON.
            screen = await awgw(daemon, "status")
            assert "ready" in screen and "radio     hci0 ok" in screen, screen
            assert max(len(line) for line in screen.splitlines()) <= 80
            status = HubStatus.model_validate(json.loads(await awgw(daemon, "status", "--json")))
            assert status.ready and status.radio.ok and status.metrics_url
            # Prometheus metrics on localhost, from the same status.
            assert await metric(status.metrics_url, "awgw_ready") == 1.0
            assert await metric(status.metrics_url, "awgw_radio_ok") == 1.0
            assert await metric(status.metrics_url, "awgw_event_loop_lag_seconds") is not None
        finally:
            code = await daemon.stop()
        assert code == 0, daemon.log_tail()
        assert fake.messages[-1][1] == "STOPPING=1"


async def test_watchdog_stops_while_the_adapter_is_gone_and_resumes_after(
        rig: Rig, tmp_path: Path) -> None:
    async with fake_systemd(tmp_path) as fake:
        daemon = hub(rig, tmp_path, fake, metrics_port=free_port())
        await daemon.start()
        try:
            await daemon.ops.pair(Pair(address=ADDRESS))
            url = (await daemon.ops.status()).metrics_url
            assert url is not None
            await until_async(lambda: metric(url, "awgw_link_connects_total"), 1.0,
                              METRICS_WITHIN_S)
            await until(lambda: len(fake.states("WATCHDOG=1")) >= 3, 20, "pings")
            await rig.hub_fault("adapter_lost")
            lost_at = time.monotonic()
            # The pings stop: a gap of several ping intervals with none.
            await until(lambda: time.monotonic() - fake.states("WATCHDOG=1")[-1] > 4 * PING_S,
                        PINGS_STOP_WITHIN_S, "the pings to stop")
            last_before = fake.states("WATCHDOG=1")[-1]
            assert last_before - lost_at < PINGS_STOP_WITHIN_S
            assert any("radio: adapter hci0 is missing" in s for s in fake.statuses())
            status = await daemon.ops.status()
            assert not status.radio.ok and status.radio.reason == "adapter hci0 is missing"
            await until_async(lambda: metric(url, "awgw_radio_ok"), 0.0, METRICS_WITHIN_S)
            await asyncio.sleep(3 * PING_S)
            assert fake.states("WATCHDOG=1")[-1] == last_before  # still none
            await rig.hub_fault("adapter_restore")
            await until(lambda: fake.states("WATCHDOG=1")[-1] > last_before,
                        PINGS_RESUME_WITHIN_S, "the pings to resume")
            await until(lambda: len([t for t in fake.states("WATCHDOG=1") if t > last_before])
                        >= 3, 10, "steady pings again")
            assert (await daemon.ops.status()).radio.ok
        finally:
            code = await daemon.stop()
        log = daemon.log_tail(200_000)
        assert code == 0, log[-3000:]
        assert '"watchdog_withheld"' in log and '"watchdog_resumed"' in log


async def test_sigterm_mid_update_stops_cleanly_and_the_next_start_resumes(
        rig: Rig, tmp_path: Path) -> None:
    world = World()
    world.poll_after_s = 1.0
    async with fake_systemd(tmp_path) as fake, EmulatorServer(world) as cloud:
        world.add_user(USER, PASSWORD)
        world.add_device(SERIAL)
        daemon = hub(rig, tmp_path, fake, cloud_url=cloud.url, client_id=world.client_id)
        await daemon.link_cloud(USER, PASSWORD)
        await daemon.start()
        try:
            await daemon.ops.pair(Pair(address=ADDRESS))
            await daemon.ops.claim(Claim(serial=SERIAL))
            async with httpx.AsyncClient() as http:
                await publish_release(http, cloud.url, world.admin_token, "9.3.0", BIG)
            job = world.create_job(next(iter(world.users.values())), {
                "serial": SERIAL, "type": "ota_update",
                "ota": {"version": "9.3.0", "board": "arduino_nano_33_ble"}}).job_id

            async def uploading() -> float:
                status = await daemon.ops.status()
                return max((u.offset / u.total for u in status.updates
                            if u.phase == "upload" and u.total), default=0.0)

            async with asyncio.timeout(UPDATED_WITHIN_S):
                while (done := await uploading()) < 0.3:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            assert done < 0.9, "the upload was too fast to stop in the middle"
            stopping_from = len(fake.messages)
            code = await daemon.stop()
            assert code == 0, daemon.log_tail()
            assert "STOPPING=1" in [m for _, m in fake.messages[stopping_from:]]
            assert world.jobs[job].status == "in_progress"  # nothing reported as failed
            await daemon.start()
            await until(lambda: world.jobs[job].status in ("succeeded", "failed"),
                        UPDATED_WITHIN_S, "the job to finish after the restart")
        finally:
            await daemon.stop()
    finished = world.jobs[job]
    assert finished.status == "succeeded", finished.detail
    assert finished.detail["fw_version"] == "9.3.0"
    # The second run sent only what was left: the session on disk resumed the upload.
    uploaded = finished.detail["uploaded_bytes"]
    assert isinstance(uploaded, int) and 0 < uploaded < 0.8 * len(BIG), finished.detail

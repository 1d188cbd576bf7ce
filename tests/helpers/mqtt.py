"""An MQTT listener (collects what arrives on some topics, retained messages included) and a
one-shot publisher, for tests against a broker on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt

from gateway.sim.rig import Rig

# The broker is on loopback: what the code under test publishes arrives within milliseconds;
# this is the bound for a relay that reconnects after its first backoff steps.
ARRIVES_WITHIN_S = 15.0
# The rig's controller as `daemon` pairs it, and its node in the topics.
ADDRESS = "C0:FF:EE:00:00:00"
NODE = "autowatering/100001"
REFRESH_S = 5.0
DAEMON_UP_WITHIN_S = 30.0


class Listener:
    """A client that collects what arrives on some topics (retained ones included)."""

    def __init__(self, port: int, *topics: str) -> None:
        self.port = port
        self.topics = topics
        self.got: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Listener:
        self._task = asyncio.create_task(self._run(), name="listener")
        async with asyncio.timeout(ARRIVES_WITHIN_S):
            await self._ready.wait()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self._ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                self.got.append((message.topic.value, payload, message.retain))

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.got if t == topic]

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(ARRIVES_WITHIN_S):
            while not predicate():  # noqa: ASYNC110 - polled record
                await asyncio.sleep(0.02)


async def publish(port: int, topic: str, payload: str | bytes, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


@contextlib.asynccontextmanager
async def daemon(rig: Rig, tmp_path: Path, port: int, policy: str,
                 extra: str = "") -> AsyncIterator[asyncio.subprocess.Process]:
    config = tmp_path / "config.toml"
    config.write_text(
        # Metrics off: tests run in parallel, and the default port is one for all.
        f"metrics_port = 0\n[link]\nrefresh_period_s = {REFRESH_S}\nconnect_timeout_s = 8\n"
        f'default_policy = "{policy}"\n'
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\n'
        + extra)
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": rig.bus_address,
           "AWGW_STATE_DIR": str(tmp_path), "AWGW_CONFIG": str(config)}
    pair = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "pair", ADDRESS, "--json", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(pair.communicate(), 120)
    assert pair.returncode == 0, err.decode()[-1500:]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "daemon", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(DAEMON_UP_WITHIN_S):
            while not (tmp_path / "control.sock").is_socket():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        yield proc
    except BaseException:
        proc.terminate()
        err, _ = await proc.communicate()
        print(err.decode()[-5000:])
        raise
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), 30)
    except TimeoutError:
        # Stuck after SIGTERM: its stacks (faulthandler on SIGUSR1) say where, for the report.
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1.0)
        proc.kill()
        out, _ = await proc.communicate()
        print(out.decode(errors="replace")[-8000:])
        raise AssertionError("the daemon did not exit within 30 s of SIGTERM") from None
    await proc.communicate()

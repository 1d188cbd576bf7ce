"""A private mosquitto on loopback, for the tests, the bench and the demo: its own config,
no persistence (a restart forgets retained messages, as a broker that lost its disk would),
stopped and started on the same port to model an outage. Where mosquitto is not installed,
``local_broker`` gives the demo an embedded Python broker (amqtt) instead."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.sim.errors import SimError
from gateway.sim.processes import terminate, tied

# mosquitto binds within milliseconds; a loaded machine gets several seconds.
START_LIMIT_S = 10.0
STOP_LIMIT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise SimError("mosquitto is not installed (./dev.sh test installs it)")
        self.binary = binary
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="awgw-mosquitto-")
        self.config = Path(self._dir.name) / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                               "persistence false\nlog_dest none\n")
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *tied([self.binary, "-c", str(self.config)]), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(START_LIMIT_S):
            while True:
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    if self._proc.returncode is not None:
                        raise SimError(f"mosquitto exited with {self._proc.returncode}") from None
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                return

    async def stop(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        await terminate(self._proc, STOP_LIMIT_S)

    async def __aenter__(self) -> MosquittoBroker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
        self._dir.cleanup()


class EmbeddedBroker:
    """amqtt in this process, on loopback: enough MQTT 3.1.1 for the demo (QoS 1, retained
    messages, last wills), without a system package."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": True}}})
        async with asyncio.timeout(START_LIMIT_S):
            await self._broker.start()

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            async with asyncio.timeout(STOP_LIMIT_S):
                await broker.shutdown()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def local_broker() -> MosquittoBroker | EmbeddedBroker:
    """mosquitto where it is installed, else the embedded broker."""
    try:
        return MosquittoBroker()
    except SimError:
        return EmbeddedBroker()

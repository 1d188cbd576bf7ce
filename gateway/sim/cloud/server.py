"""The emulated cloud served over real HTTP on loopback (uvicorn), in-process or as
``awgw cloud-emulator``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType

import uvicorn

from gateway.sim.cloud.app import build_app
from gateway.sim.cloud.world import World

# uvicorn binds and starts accepting within milliseconds; a loaded CI machine gets 10 s.
STARTUP_LIMIT_S = 10.0


class EmulatorServer:
    """``async with EmulatorServer(world) as server:`` serves ``world`` at ``server.url``."""

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0) -> None:
        self.world = world
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        world.base_url = self.url
        config = uvicorn.Config(build_app(world), log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EmulatorServer:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]),
                                         name="cloud-emulator")
        async with asyncio.timeout(STARTUP_LIMIT_S):
            while not self._server.started:
                if self._task.done():
                    await self._task
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()

    async def serve_forever(self) -> None:
        async with self:
            assert self._task is not None
            await self._task

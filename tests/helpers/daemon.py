"""``InProcessDaemon``: ``async with InProcessDaemon(tmp_path, controllers=2) as daemon:``
starts the daemon's Hub on a private state directory and yields once READY; ``call`` speaks
the control socket as the CLI does."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from bleak.backends.device import BLEDevice
from pydantic import TypeAdapter

from firmware_bridge.link.gatt_link import GattLink
from gateway.config import GatewayConfig
from gateway.control.client import call
from gateway.daemon.hub import Hub
from gateway.daemon.main import RadioParts, build_hub
from gateway.link.scanner import Sighting
from gateway.ops.models import Request
from gateway.store.registry import Registry
from gateway.supervise import RestartPolicy
from tests.helpers import cancel_and_wait
from tests.helpers.fakes import ModelLink

T = TypeVar("T")

# Quick restarts, so a test sees a part go down and come back within a second or two; a crash
# loop gives up after three crashes.
TEST_RESTARTS = RestartPolicy(first_s=0.5, cap_s=1.0, max_crashes=3, window_s=60.0)
# How long the in-process daemon may take to become READY (stores, socket, supervisors).
READY_WITHIN_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def controller_address(index: int) -> str:
    return f"C0:FF:EE:00:01:{index:02X}"


class QuietScanner:
    """A scanner that hears nothing: the fake radio connects by address."""

    def __init__(self) -> None:
        self.seen: dict[str, Sighting] = {}
        self.scanning = True
        self.start_error: str | None = None

    async def run(self) -> None:
        await asyncio.Event().wait()

    def present(self) -> list[Sighting]:
        return []

    def healthy(self) -> bool:
        return True

    def device(self, address: str) -> BLEDevice | None:
        return None

    def forget(self, address: str) -> None:
        self.seen.pop(address, None)


class AnsweringProbe:
    """BlueZ answers and the adapter is powered."""

    adapter = "hci0"
    bluez_answered = True

    async def check(self) -> str | None:
        await asyncio.sleep(0)
        return None

    def close(self) -> None:
        pass


class ModelRadio:
    """Connects each address to a controller served by the simulator's irrigation model; the
    model lives on across connections, as a controller's state does."""

    def __init__(self) -> None:
        self.links: dict[str, ModelLink] = {}
        self.connects = 0

    async def __call__(self, address: str, timeout_s: float,
                       on_disconnect: Callable[[], None]) -> GattLink:
        self.connects += 1
        await asyncio.sleep(0)
        previous = self.links.get(address)
        link = ModelLink(address, previous.model if previous is not None else None)
        link.on_disconnect = on_disconnect
        self.links[address] = link
        return link


class InProcessDaemon:
    def __init__(self, tmp_path: Path, *, controllers: int = 1, cloud: bool = True,
                 mqtt: bool = True, restart: RestartPolicy = TEST_RESTARTS) -> None:
        # Cloud and broker on closed loopback ports: both relays run and retry, as they do
        # on a hub whose internet or broker is down.
        closed = free_port()
        self.config = GatewayConfig.model_validate({
            "state_dir": tmp_path, "metrics_port": free_port(),
            "link": {"refresh_period_s": 30.0, "default_policy": "keep"},
            "cloud": {"enabled": cloud, "base_url": f"http://127.0.0.1:{closed}/",
                      "cognito_endpoint": f"http://127.0.0.1:{closed}/", "client_id": "x"},
            "mqtt": {"enabled": mqtt, "host": "127.0.0.1", "port": closed},
        })
        registry = Registry(self.config.registry_path)
        self.addresses = [controller_address(i) for i in range(controllers)]
        for i, address in enumerate(self.addresses):
            registry.add(address, name=f"AutoWatering {i}", bonded=True, serial=f"10000{i}")
        self.radio = ModelRadio()
        self.restart = restart
        self._hub: Hub | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcessDaemon:
        self._hub = build_hub(self.config, restart=self.restart, radio=RadioParts(
            scanner=QuietScanner(), connector=self.radio,  # type: ignore[arg-type]
            probe=AnsweringProbe()))  # type: ignore[arg-type]
        self._task = asyncio.create_task(self.hub.run(), name="in-process daemon")
        ready = asyncio.create_task(self.hub.ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, timeout=READY_WITHIN_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await self.__aexit__(None, None, None)
            raise TimeoutError(f"the in-process daemon was not READY within {READY_WITHIN_S} s")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._hub is not None:
            await self._hub.close()

    @property
    def hub(self) -> Hub:
        assert self._hub is not None, "the daemon has not started"
        return self._hub

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def call(self, request: Request, result: TypeAdapter[T]) -> T:
        return await call(self.config.socket_path, request, result)

"""A proxy's bond with a controller is the ESP32's: after an authentication failure the radio
has the proxy forget it (over the real native API, against the simulated proxy)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.clock import LoopClock
from gateway.config import EsphomeProxySettings
from gateway.link.radios.esphome import EsphomeRadio
from gateway.link.radios.stack import ProxyStack
from gateway.sim.esphome.server import ProxyServer, ProxySettings
from tests.helpers import cancel_and_wait, until
from tests.helpers.fakes import ProxyRadioFake

ADDRESS = "C0:FF:EE:00:00:01"


@contextlib.asynccontextmanager
async def radio_up(server: ProxyServer) -> AsyncIterator[EsphomeRadio]:
    """The gateway's radio for ``server``, its API connected."""
    await server.start()
    stack = ProxyStack(lambda _address: None)
    try:
        async with stack.running():
            radio = EsphomeRadio(EsphomeProxySettings(name="garden", host="127.0.0.1",
                                                      port=server.port),
                                 lambda: stack.manager, LoopClock())
            running = asyncio.create_task(radio.run())
            try:
                await until(lambda: radio.up, 10, "the proxy's API connected")
                yield radio
            finally:
                await cancel_and_wait(running)
    finally:
        await server.stop()


async def test_the_proxy_forgets_its_bond_and_the_hub_keeps_its_own() -> None:
    server = ProxyServer(ProxySettings(), ProxyRadioFake())
    async with radio_up(server) as radio:
        assert await radio.forget_bond(ADDRESS)
        assert server.unpaired == [ADDRESS]


class LateCloseRadio(ProxyRadioFake):
    """The close of a link the hub abandoned reaches it while its first unpair waits (and
    aioesphomeapi takes any connection change of that address for the answer); the ESP32
    gets to that unpair only once the hub asked again, or after ``PATIENCE_S``."""

    PATIENCE_S = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.server: ProxyServer | None = None

    async def forget(self, address: str) -> None:
        server = self.server
        assert server is not None
        if len(server.unpaired) == 1:
            server.report_closed(address)
            with contextlib.suppress(TimeoutError):
                await until(lambda: len(server.unpaired) >= 2, self.PATIENCE_S)


async def test_the_late_close_of_an_abandoned_link_is_no_answer_to_the_unpair() -> None:
    fake = LateCloseRadio()
    server = ProxyServer(ProxySettings(), fake)
    fake.server = server
    server.bonded.add(ADDRESS)
    async with radio_up(server) as radio:
        assert await radio.forget_bond(ADDRESS)
        assert ADDRESS not in server.bonded

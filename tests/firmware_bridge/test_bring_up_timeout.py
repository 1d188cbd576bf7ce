"""A connect whose bring-up never finishes (bluetoothd not answering AcquireNotify or
StartNotify) ends in a typed timeout and a disconnect, for the SMP transport and the GATT link:
a connect must never hold the radio's connect turn for good (it stalled a cloud job once, on a
loaded machine)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from firmware_bridge.errors import TransportTimeout
from firmware_bridge.link import gatt_link
from firmware_bridge.smp import ble


class HangingClient:
    """bleak's BleakClient as far as the bring-up uses it, with a StartNotify and an MTU
    acquisition that never answer."""

    instances: list[HangingClient] = []

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.disconnected = False
        self.services = self
        self._backend = self
        self.mtu_size = 247
        HangingClient.instances.append(self)

    async def connect(self) -> None:
        return None

    def get_characteristic(self, _uuid: str) -> object:
        return object()

    def __iter__(self) -> Any:
        return iter(())

    async def _acquire_mtu(self) -> None:
        await asyncio.Event().wait()

    async def start_notify(self, *_args: Any) -> None:
        await asyncio.Event().wait()

    async def disconnect(self) -> None:
        self.disconnected = True


@pytest.fixture(autouse=True)
def hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    HangingClient.instances.clear()
    for module in (ble, gatt_link):
        monkeypatch.setattr(module, "BleakClient", HangingClient)
        monkeypatch.setattr(module, "BRING_UP_TIMEOUT_S", 0.2)


async def test_the_smp_transport_gives_up_and_disconnects() -> None:
    transport = ble.BleSmpTransport("C0:FF:EE:00:00:01", adapter="hci0")
    async with asyncio.timeout(5):
        with pytest.raises(TransportTimeout, match="SMP bring-up"):
            await transport.connect(8.0)
    assert HangingClient.instances[0].disconnected


async def test_the_gatt_link_gives_up_and_disconnects() -> None:
    async with asyncio.timeout(5):
        with pytest.raises(TransportTimeout, match="acquire MTU"):
            await gatt_link.BleakGattLink.connect("C0:FF:EE:00:00:01", adapter="hci0",
                                                  timeout_s=8.0)
    assert HangingClient.instances[0].disconnected

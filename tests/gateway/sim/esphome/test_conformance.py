"""The simulated ESPHome Bluetooth proxy, driven by the real aioesphomeapi client over real
TCP, with its radio on the rig: what Home Assistant's Bluetooth stack sees of an ESP32 proxy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import pytest
from aioesphomeapi.api_pb2 import BluetoothLERawAdvertisementsResponse
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import InvalidEncryptionKeyAPIError
from aioesphomeapi.model import BluetoothProxyFeature

from firmware_bridge.gatt import uuids
from gateway.sim.esphome.radio import BleakRadio
from gateway.sim.esphome.server import ProxyServer, ProxySettings, mac_int
from gateway.sim.rig import Rig

pytestmark = pytest.mark.rig
KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(32)).decode()
# The rig answers in milliseconds; a loaded machine several times that, far inside this.
WITHIN_S = 15.0


@contextlib.asynccontextmanager
async def proxy(settings: ProxySettings) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(settings, BleakRadio("hci0"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def client(server: ProxyServer, key: str | None) -> AsyncIterator[APIClient]:
    api = APIClient("127.0.0.1", server.port, None, noise_psk=key, client_info="awgw-test")
    await api.connect(login=True)
    try:
        yield api
    finally:
        await api.disconnect(force=True)


@pytest.mark.parametrize("key", [None, KEY], ids=["plaintext", "noise"])
async def test_a_proxy_answers_aioesphomeapi_as_an_esp32_does(rig: Rig, key: str | None) -> None:
    controller = rig.controllers[0].address
    async with proxy(ProxySettings(noise_psk=key)) as server, client(server, key) as api:
        info = await api.device_info()
        flags = BluetoothProxyFeature(info.bluetooth_proxy_feature_flags)
        assert BluetoothProxyFeature.ACTIVE_CONNECTIONS in flags
        assert BluetoothProxyFeature.RAW_ADVERTISEMENTS in flags
        assert info.bluetooth_mac_address == server.settings.bluetooth_mac

        heard: asyncio.Queue[int] = asyncio.Queue()

        def on_adverts(batch: BluetoothLERawAdvertisementsResponse) -> None:
            for advert in batch.advertisements:
                heard.put_nowait(advert.address)

        api.subscribe_bluetooth_le_raw_advertisements(on_adverts)
        async with asyncio.timeout(WITHIN_S):
            while await heard.get() != mac_int(controller):
                pass

        slots: list[tuple[int, int]] = []
        api.subscribe_bluetooth_connections_free(lambda free, limit, _a: slots.append(
            (free, limit)))
        states: asyncio.Queue[tuple[bool, int, int]] = asyncio.Queue()
        await api.bluetooth_device_connect(
            mac_int(controller), lambda *state: states.put_nowait(state),
            timeout=WITHIN_S, feature_flags=info.bluetooth_proxy_feature_flags,
            address_type=0)
        connected, mtu, error = await states.get()
        assert connected and mtu == 247 and error == 0
        assert slots[0] == (3, 3) and slots[-1] == (2, 3)

        services = await api.bluetooth_gatt_get_services(mac_int(controller))
        chars = {c.uuid: c for s in services.services for c in s.characteristics}
        firmware = chars[uuids.DIS_FIRMWARE_REVISION]
        assert await api.bluetooth_gatt_read(mac_int(controller), firmware.handle) == b"3.1.0"

        await api.bluetooth_device_disconnect(mac_int(controller))
        async with asyncio.timeout(WITHIN_S):
            while slots[-1] != (3, 3):  # noqa: ASYNC110 - the proxy pushes the counts
                await asyncio.sleep(0.05)


async def test_a_wrong_key_is_refused_as_the_firmware_refuses_it(rig: Rig) -> None:
    async with proxy(ProxySettings(noise_psk=KEY)) as server:
        with pytest.raises(InvalidEncryptionKeyAPIError):
            async with client(server, OTHER_KEY):
                pass

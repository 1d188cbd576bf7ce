"""The simulated proxy under Home Assistant's own Bluetooth stack: habluetooth's manager with
bleak-esphome's scanner and client, and a plain bleak program on top (the wrappers choose the
proxy as the path), as Home Assistant and the gateway's radio layer use it."""

from __future__ import annotations

import asyncio

import pytest
from habluetooth import HaBleakClientWrapper

from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import ValveControl
from gateway.sim.esphome.hastack import bluetooth_stack, heard
from gateway.sim.esphome.radio import BleakRadio
from gateway.sim.esphome.server import ProxyServer, ProxySettings
from gateway.sim.rig import Rig
from tests.gateway.sim.esphome.test_conformance import WITHIN_S
from tests.helpers import until

pytestmark = pytest.mark.rig


async def test_bleak_esphome_connects_reads_and_gets_notifications_through_the_proxy(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    address = rig.controllers[0].address
    server = ProxyServer(ProxySettings(), BleakRadio("hci0"))
    await server.start()
    try:
        async with bluetooth_stack(server.port) as manager:
            device = await heard(manager, address, WITHIN_S)
            client = HaBleakClientWrapper(device)
            await client.connect()
            try:
                assert client.is_connected and client.mtu_size == 247
                assert server.free == server.settings.slots - 1
                assert await client.read_gatt_char(uuids.DIS_FIRMWARE_REVISION) == b"3.1.0"
                got: asyncio.Queue[bytes] = asyncio.Queue()
                await client.start_notify(uuids.VALVE_CONTROL,
                                          lambda _c, data: got.put_nowait(bytes(data)))
                await client.write_gatt_char(uuids.VALVE_CONTROL,
                                             ValveControl.duration_task(2, 15).encode(),
                                             response=True)
                async with asyncio.timeout(WITHIN_S):
                    assert await got.get() == bytes.fromhex("02010000")  # channel 2 opened
            finally:
                await client.disconnect()
            await until(lambda: server.free == server.settings.slots, WITHIN_S)
            await asyncio.sleep(0.2)
        # As the firmware orders it (bluetooth_connection.cpp): the disconnect is answered
        # before the slot report that drops the address. The other way round, bleak-esphome
        # takes the client for a phantom and "reconciles" it with a warning on every visit.
        stale = [r.getMessage() for r in caplog.records if "Reconciling" in r.getMessage()]
        assert stale == []
    finally:
        await server.stop()

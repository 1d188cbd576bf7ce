"""A firmware upload through a simulated ESPHome proxy, the path chosen by habluetooth, with
the engine the daemon uses: the image lands in the controller's slot 1, hash and all."""

from __future__ import annotations

import pytest
from habluetooth import HaBleakClientWrapper

from firmware_bridge.mcuboot import parse_image
from firmware_bridge.ota.upload import Uploader, UploadPlan
from firmware_bridge.smp import commands
from firmware_bridge.smp.ble import BleSmpTransport
from firmware_bridge.smp.channel import SmpChannel
from gateway.sim.esphome.hastack import bluetooth_stack, heard
from gateway.sim.esphome.radio import BleakRadio
from gateway.sim.esphome.server import ProxyServer, ProxySettings
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig
from tests.gateway.sim.esphome.test_conformance import WITHIN_S

pytestmark = pytest.mark.rig


async def test_an_update_through_a_proxy_lands_in_slot_1(rig: Rig) -> None:
    address = rig.controllers[0].address
    image = make_image((9, 1, 0, 0), firmware_body("proxy", 24_000))
    info = parse_image(image)
    server = ProxyServer(ProxySettings(wifi_latency_s=0.005), BleakRadio("hci0"))
    await server.start()
    try:
        async with bluetooth_stack(server.port) as manager:
            device = await heard(manager, address, WITHIN_S)
            transport = BleSmpTransport(
                device, adapter="hci0", client_factory=lambda lost, timeout:
                HaBleakClientWrapper(device, disconnected_callback=lost, timeout=timeout))
            await transport.connect(WITHIN_S)
            assert transport.mtu == 247 and server.free == server.settings.slots - 1
            async with SmpChannel(transport) as channel:
                params = await commands.read_params(channel)
                plan = UploadPlan(params.buf_count - 1, transport.frame_budget(params.buf_size),
                                  max_window=params.buf_count)
                await Uploader(channel, image, info.file_sha256, plan).run()
                slots = await commands.image_state(channel)
            assert any(s.slot == 1 and s.hash == info.image_hash for s in slots), slots
    finally:
        await server.stop()

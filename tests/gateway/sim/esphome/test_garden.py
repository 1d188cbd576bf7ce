"""A proxy at the far end of the rig's garden serves the controller the hub cannot hear."""

from __future__ import annotations

import pytest

from gateway.sim.esphome.radio import BleakRadio
from gateway.sim.esphome.server import ProxyServer, ProxySettings, mac_int
from gateway.sim.rig import Rig
from tests.gateway.sim.esphome.test_conformance import WITHIN_S, client
from tests.gateway.sim.esphome.test_faults import connect
from tests.gateway.sim.test_rig_garden import GARDEN
from tests.helpers import until

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(**GARDEN.__dict__)]


async def test_a_proxy_at_the_far_end_reaches_what_the_hub_cannot(rig: Rig) -> None:
    near, far = rig.controllers[0].address, rig.controllers[1].address
    heard: set[int] = set()
    server = ProxyServer(ProxySettings(), BleakRadio(rig.radio_adapters[0]))
    await server.start()
    try:
        async with client(server, None) as api:
            api.subscribe_bluetooth_le_raw_advertisements(
                lambda batch: heard.update(a.address for a in batch.advertisements))
            await until(lambda: mac_int(far) in heard, WITHIN_S)
            assert (await connect(api, far))[0]
            assert mac_int(near) not in heard  # 85 m away: below the ESP32's sensitivity
    finally:
        await server.stop()

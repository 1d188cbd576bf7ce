"""The rig's garden: extra central radios, and each radio hearing only what is in its range."""

from __future__ import annotations

from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError

from gateway.sim.errors import SimConfigError
from gateway.sim.rig import Rig, RigOptions

# The hub near the house, one controller by the terrace, one at the far end of the garden
# with a radio (an ESP32 proxy's, or a second hub adapter) beside it.
GARDEN = RigOptions(controllers=2, radios=1, connect_fail_delay_s=0.5, positions={
    "gateway": (0.0, 0.0), "controller0": (6.0, 0.0), "controller1": (90.0, 0.0),
    "radio0": (85.0, 3.0)})
pytestmark = [pytest.mark.rig, pytest.mark.rig_options(**GARDEN.__dict__)]


async def heard(adapter: str) -> dict[str, int]:
    bluez: Any = {"adapter": adapter}
    found = await BleakScanner.discover(timeout=2.5, return_adv=True, bluez=bluez)
    return {address: adv.rssi for address, (_d, adv) in found.items()}


async def test_each_radio_hears_what_is_near_it(rig: Rig) -> None:
    near, far = rig.controllers[0].address, rig.controllers[1].address
    (radio,) = rig.radio_adapters
    by_hub, by_radio = await heard("hci0"), await heard(radio)
    assert near in by_hub and far not in by_hub
    assert far in by_radio and near not in by_radio
    assert -75 <= by_hub[near] <= -60 and -75 <= by_radio[far] <= -60  # ~6 m away
    # Out of range is also out of reach.
    bluez: Any = {"adapter": "hci0"}
    with pytest.raises((BleakError, TimeoutError)):
        async with BleakClient(far, bluez=bluez, timeout=3):
            pass
    bluez = {"adapter": radio}
    async with BleakClient(far, bluez=bluez, timeout=10) as client:
        assert client.is_connected


def test_positions_must_name_what_the_rig_has() -> None:
    with pytest.raises(SimConfigError, match="radio3"):
        RigOptions(controllers=1, radios=1, positions={"radio3": (0.0, 0.0)}).validate()

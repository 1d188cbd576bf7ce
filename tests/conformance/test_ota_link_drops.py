"""50 randomised link drops during uploads to a virtual controller (SMP over UDP), and a drop
at test, reset and confirm in every update: every update succeeds, and no drop costs more than
one window of resent data."""

from __future__ import annotations

import random
from typing import Any

import pytest

from firmware_bridge.ota.outcome import OtaResult
from firmware_bridge.ota.update import FirmwareUpdate, OtaSettings
from firmware_bridge.ota.upload import max_data
from firmware_bridge.smp.udp import UdpSmpTransport
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.images import firmware_body, make_image
from gateway.sim.qemu_peer import free_tcp_port
from gateway.sim.rig import Rig, RigOptions
from tests.helpers.smp import Faults, FaultyTransport

pytestmark = pytest.mark.rig
UPLOADS = 5
DROPS_PER_UPLOAD = 10
# What the virtual controller's UDP transport reports, as a Zephyr UDP build would.
UDP = ControllerConfig(0, 0, "")
# Resends follow the measured round trip (the engine's own timer), so a loaded machine slows
# them down instead of turning slow replies into losses.
SETTINGS = OtaSettings(self_confirm_wait_s=0.2, poll_s=0.1, reset_settle_s=0.8,
                       reconnect_backoff_s=0.05, reboot_window_s=20.0, reset_lost_after_s=2.0)
AFTER_UPLOAD = {"test": 1, "reset": 1, "confirm": 1}


async def test_fifty_random_link_drops_cost_at_most_a_window_each() -> None:
    port = free_tcp_port()
    rng = random.Random(20261126)
    async with Rig(RigOptions(controllers=1, udp_base_port=port)) as rig:
        assert rig.controllers

        async def udp() -> Any:
            transport = UdpSmpTransport()
            await transport.connect("127.0.0.1", 5.0, port=port)
            return transport

        drops = 0
        for n in range(UPLOADS):
            image = make_image((10, n, 0, 0), firmware_body(f"drops-{n}", 60_000))
            chunk = max_data(UdpSmpTransport().frame_budget(UDP.udp_buf_size), len(image), None)
            chunks = len(image) // chunk
            # Frames 1-2 are params and image state; the upload's frames follow.
            points = set(rng.sample(range(4, chunks), DROPS_PER_UPLOAD))
            faults = Faults(drop_link_at=points, drop_on=dict(AFTER_UPLOAD))

            async def connect(faults: Faults = faults) -> Any:
                return FaultyTransport(await udp(), faults)

            outcome = await FirmwareUpdate(connect, image, device=f"udp-{n}",
                                           settings=SETTINGS).run()
            assert outcome.result is OtaResult.SUCCEEDED, (n, outcome)
            assert sorted(faults.dropped) == sorted(AFTER_UPLOAD), (n, faults.dropped)
            drops += len(points & set(range(faults.frames + 1)))
            # Each drop, and each frame the engine saw lost, may cost the window in flight,
            # and a resume repeats a first chunk.
            allowed = len(image) + (DROPS_PER_UPLOAD + outcome.frames_lost) * (
                UDP.udp_buf_count + 1) * chunk
            assert faults.upload_bytes() <= allowed, (n, faults.upload_bytes(), allowed, outcome)
        assert drops == UPLOADS * DROPS_PER_UPLOAD

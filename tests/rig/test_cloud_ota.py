"""Cloud-triggered firmware updates through the daemon, on the rig, against the emulator:
a job becomes a verified update reported with progress; a job for a watering controller waits
for the gate; a job for another board fails before any download; a release is picked up by the
auto policy, and a downgrade published under a newer number is skipped with its reason."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.cloud import World
from gateway.sim.cloud.publish import publish_release
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig
from tests.helpers.cloud import ADDRESS, SERIAL, Gateway, cloud, link_and_claim, until

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(
    controllers=1, template=ControllerConfig(0, 0, "", time_scale=60.0))]
NEW = make_image((9, 2, 0, 0), firmware_body("cloud-job", 60_000))
# A 60 kB upload over the rig's BLE link model is ~3 s, the reboot and confirm a few more; the
# gateway polls jobs every second here. A loaded machine gets several times that.
UPDATED_WITHIN_S = 120.0


async def publish(world: World, url: str, version: str, image: bytes) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        await publish_release(http, url, world.admin_token, version, image)


def job_for(world: World, version: str, board: str = "arduino_nano_33_ble") -> str:
    user = next(iter(world.users.values()))
    return world.create_job(user, {"serial": SERIAL, "type": "ota_update", "ota": {
        "version": version, "board": board}}).job_id


async def running_version(rig: Rig) -> str:
    status: Any = await rig.status(0)
    return str(next(i["version"] for i in status["images"] if i["slot"] == 0))


async def test_a_job_becomes_a_verified_update_with_progress(rig: Rig, tmp_path: Path) -> None:
    async with cloud("gateway_routes") as (world, url):
        world.poll_after_s = 1.0
        gw = Gateway(rig, tmp_path, url, world.client_id)
        await link_and_claim(gw)
        await publish(world, url, "9.2.0", NEW)
        async with gw.running():
            job = job_for(world, "9.2.0")
            await until(lambda: world.jobs[job].status in ("succeeded", "failed"),
                        UPDATED_WITHIN_S)
        done = world.jobs[job]
        assert done.status == "succeeded", done.detail
        assert done.detail["fw_version"] == "9.2.0" and done.progress_pct == 100
        steps = world.progress[job]
        assert steps == sorted(steps) and any(0 < p < 100 for p in steps), steps
        assert await running_version(rig) == "9.2.0"


async def test_a_job_for_a_watering_controller_waits_for_the_gate(rig: Rig,
                                                                  tmp_path: Path) -> None:
    async with cloud("gateway_routes") as (world, url):
        world.poll_after_s = 1.0
        gw = Gateway(rig, tmp_path, url, world.client_id)
        await link_and_claim(gw)
        await publish(world, url, "9.2.0", NEW)
        # Five minutes of watering: five seconds of the rig's time.
        await gw.run("valve", ADDRESS, "4", "open", "--minutes", "5", "--json")
        async with gw.running():
            job = job_for(world, "9.2.0")
            await until(lambda: world.jobs[job].status == "in_progress", 30)
            await asyncio.sleep(2.0)
            assert max(world.progress.get(job, [0])) < 10  # downloaded, not uploading
            assert await running_version(rig) == "3.1.0"
            await until(lambda: world.jobs[job].status in ("succeeded", "failed"),
                        UPDATED_WITHIN_S)
        if world.jobs[job].status != "succeeded":
            print(gw.logs[-8000:])  # the daemon's side of it, shown with the failure
        assert world.jobs[job].status == "succeeded", world.jobs[job].detail
        assert await running_version(rig) == "9.2.0"


async def test_a_job_for_another_board_fails_before_any_download(rig: Rig,
                                                                 tmp_path: Path) -> None:
    async with cloud("gateway_routes") as (world, url):
        world.poll_after_s = 1.0
        gw = Gateway(rig, tmp_path, url, world.client_id)
        await link_and_claim(gw)
        await publish(world, url, "9.2.0", NEW)
        async with gw.running():
            job = job_for(world, "9.2.0", board="nrf52840dk_nrf52840")
            await until(lambda: world.jobs[job].status != "queued" and world.jobs[job].status
                        != "in_progress", 60)
        assert world.jobs[job].status == "failed"
        assert world.jobs[job].detail["reason"] == "wrong_board"
        assert world.downloads == 0 and await running_version(rig) == "3.1.0"


async def test_auto_policy_applies_a_release_and_skips_a_disguised_downgrade(
        rig: Rig, tmp_path: Path) -> None:
    async with cloud("gateway_routes") as (world, url):
        gw = Gateway(rig, tmp_path, url, world.client_id)
        await gw.run("pair", ADDRESS, "--ota-policy", "auto", "--json")
        await link_and_claim(gw)
        # The runbook's rollback: the previous binary (3.0.0) published as 3.9.0.
        await publish(world, url, "3.9.0", make_image((3, 0, 0, 0), firmware_body("old", 30_000)))
        async with gw.running():
            await until(lambda: any(e["type"] == "firmware_update_skipped"
                                    for e in world.applied.events), 60)
        skipped = next(e for e in world.applied.events if e["type"] == "firmware_update_skipped")
        assert skipped["data"]["reason"] == "downgrade_not_allowed"
        assert skipped["data"]["image_version"] == "3.0.0" and skipped["data"]["version_mismatch"]
        assert await running_version(rig) == "3.1.0"  # skipped, and said so
        await publish(world, url, "9.2.0", NEW)
        async with gw.running():
            await until(lambda: any(e["type"] == "firmware_update"
                                    for e in world.applied.events), UPDATED_WITHIN_S)
        update = next(e for e in world.applied.events if e["type"] == "firmware_update")
        assert update["data"]["result"] == "succeeded" and update["data"]["version"] == "9.2.0"
        assert await running_version(rig) == "9.2.0"

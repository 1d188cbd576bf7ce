"""Cloud-driven updates against the emulator with a fake controller side: every bad download
or image is refused with its reason and nothing is sent to the controller; a stale URL is
replaced once; versions decide skip, downgrade and mismatch."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cloud_client import CloudClient, RetryPolicy
from cloud_client.models import Artifact
from gateway.config import CloudConfig, CloudMode, GatewayConfig, OtaConfig
from gateway.errors import CommandFailed
from gateway.ops.models import ControllerState, GetState, Ota, OtaReport
from gateway.ops.protocol import ProgressFn
from gateway.ota.jobs import CloudUpdates, Plan, poll_delay_s
from gateway.sim.cloud import EmulatorServer, Fault, World
from gateway.sim.cloud.publish import publish_release
from gateway.sim.images import firmware_body, make_image
from gateway.store.registry import Registry
from tests.helpers.builders import state
from tests.helpers.images import signed_with_new_key

ADDRESS = "C0:FF:EE:00:00:01"
IMAGE = make_image((4, 0, 0, 0), firmware_body("jobs", 8_000))


@dataclass
class FakeTarget:
    """The operations' side: records what would have gone to the controller."""

    sent: list[Ota] = field(default_factory=list)
    watering: bool = False
    unreachable: bool = False

    async def state(self, request: GetState) -> ControllerState:
        if self.unreachable:
            raise CommandFailed(f"refresh {request.address}: not done within 60 s")
        return state(task_ch=1 if self.watering else None)

    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport:
        self.sent.append(request)
        return OtaReport(result="succeeded", reason=None, detail="", rc=None, hash="",
                         version="4.0.0", uploaded_bytes=len(IMAGE), seconds=1.0,
                         skipped_upload=False, firmware_revision="4.0.0")


@dataclass
class Setup:
    world: World
    url: str
    updates: CloudUpdates
    target: FakeTarget
    registry: Registry


@contextlib.asynccontextmanager
async def setup(tmp_path: Path, firmware: str = "3.1.0", allow_downgrade: bool = False,
                public_key: Path | None = None) -> AsyncIterator[Setup]:
    world = World()
    async with EmulatorServer(world) as server:
        config = GatewayConfig(state_dir=tmp_path, cloud=CloudConfig(
            enabled=True, base_url=server.url, allow_downgrade=allow_downgrade),
            ota=OtaConfig(public_key=public_key))
        registry = Registry(config.registry_path)
        registry.add(ADDRESS, name="AutoWatering", bonded=True, serial="100001",
                     firmware_version=firmware)
        target = FakeTarget()
        async with CloudClient(server.url, retry=RetryPolicy(attempts=1)) as client:
            updates = CloudUpdates(config, registry, client, "gw", target, None,
                                   lambda: CloudMode.GATEWAY_ROUTES, gate_poll_s=0.01)
            yield Setup(world, server.url, updates, target, registry)


async def publish(s: Setup, version: str, binary: bytes | None, **kw: object) -> None:
    async with httpx.AsyncClient() as http:
        await publish_release(http, s.url, s.world.admin_token, version, binary)
    if kw:
        release = s.world.releases[("arduino_nano_33_ble", "stable", version)]
        for key, value in kw.items():
            setattr(release, key, value)


def plan(s: Setup, version: str, *, explicit: bool = True, board: str = "arduino_nano_33_ble",
         sha: str | None = None, size: int | None = None) -> Plan:
    return Plan(s.registry.get(ADDRESS), version, board, "stable",
                Artifact(sha256=sha, size_bytes=size), explicit)


async def test_a_good_release_is_sent_once_and_cached(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        await publish(s, "4.0.0", IMAGE)
        sha = hashlib.sha256(IMAGE).hexdigest()
        outcome = await s.updates.apply(plan(s, "4.0.0", sha=sha, size=len(IMAGE)))
        assert outcome.status == "succeeded" and outcome.detail["fw_version"] == "4.0.0"
        assert len(s.target.sent) == 1 and (tmp_path / "firmware" / f"{sha}.bin").exists()
        downloads = s.world.downloads
        await s.updates.apply(plan(s, "4.0.0", sha=sha, size=len(IMAGE)))
        assert s.world.downloads == downloads  # from the cache


@pytest.mark.parametrize(("case", "reason"), [
    ("sha", "download_rejected"), ("size", "download_rejected"),
    ("garbage", "bad_image"), ("board", "wrong_board"), ("missing", "download_rejected"),
])
async def test_bad_downloads_and_images_reach_no_controller(tmp_path: Path, case: str,
                                                            reason: str) -> None:
    async with setup(tmp_path) as s:
        binary = b"\x00not an image" * 100 if case == "garbage" else IMAGE
        await publish(s, "4.0.0", None if case == "missing" else binary)
        sha = hashlib.sha256(binary).hexdigest()
        size = len(binary)
        chosen = plan(s, "4.0.0", sha="0" * 64 if case == "sha" else sha,
                      size=size + 1 if case == "size" else size,
                      board="other_board" if case == "board" else "arduino_nano_33_ble")
        outcome = await s.updates.apply(chosen)
        assert (outcome.status, outcome.reason) == ("failed", reason)
        assert s.target.sent == []
        if case == "board":
            assert s.world.downloads == 0  # refused before any download
        if case in ("sha", "size", "missing"):
            assert not list((tmp_path / "firmware").glob("*"))  # nothing kept


async def test_a_cut_download_is_retried_later_and_a_stale_url_replaced(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        await publish(s, "4.0.0", IMAGE)
        key = "GET /_s3/ota/stable/arduino_nano_33_ble/4.0.0/zephyr.signed.bin"
        s.world.faults.append(Fault("drop", route=key))
        cut = await s.updates.apply(plan(s, "4.0.0", size=len(IMAGE)))
        assert cut.status == "retry" and s.target.sent == []
        s.world.faults.append(Fault("status", route=key, status=403, message="expired"))
        done = await s.updates.apply(plan(s, "4.0.0", size=len(IMAGE)))
        assert done.status == "succeeded" and len(s.target.sent) == 1


async def test_versions_decide(tmp_path: Path) -> None:
    async with setup(tmp_path, firmware="4.0.0") as s:
        await publish(s, "4.0.0", IMAGE)
        same = await s.updates.apply(plan(s, "4.0.0"))
        assert (same.status, same.reason) == ("skipped", "already_current")
        older = make_image((3, 0, 0, 0), firmware_body("old", 4_000))
        await publish(s, "4.1.0", older)  # a rollback under a newer number
        policy = await s.updates.apply(plan(s, "4.1.0", explicit=False))
        assert (policy.status, policy.reason) == ("skipped", "downgrade_not_allowed")
        assert policy.detail["version_mismatch"] is True
        job = await s.updates.apply(plan(s, "4.1.0", explicit=True))
        assert job.status == "succeeded" and len(s.target.sent) == 1


async def test_an_update_waits_while_the_controller_waters(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        await publish(s, "4.0.0", IMAGE)
        s.target.watering = True
        task = asyncio.create_task(s.updates.apply(plan(s, "4.0.0")))
        await asyncio.sleep(0.3)
        assert not task.done() and s.target.sent == []
        s.target.watering = False
        assert (await asyncio.wait_for(task, 10)).status == "succeeded"


@pytest.mark.parametrize("version", ["4.0.0/rc1", "4.0.0\x00", "../../etc/x", "", "v" * 65,
                                     "1" * 5000, "4.0.0 ", "٤.0.0"])
async def test_a_hostile_version_is_refused_before_anything_is_fetched(
        tmp_path: Path, version: str) -> None:
    # hostile-edges H2 B/C: the version went into a file name (FileNotFoundError, ValueError:
    # embedded null byte) and ended the part.
    async with setup(tmp_path) as s:
        outcome = await s.updates.apply(plan(s, version))
        assert (outcome.status, outcome.reason) == ("failed", "bad_version")
        assert s.world.downloads == 0 and s.target.sent == []


async def test_an_unreachable_controller_postpones_the_update(tmp_path: Path) -> None:
    # hostile-edges H2 A: a controller switched off for the winter; its state could not be
    # read and the supervisor's CommandFailed ended cloud updates (the whole hub, then).
    async with setup(tmp_path) as s:
        await publish(s, "4.0.0", IMAGE)
        s.target.unreachable = True
        outcome = await s.updates.apply(plan(s, "4.0.0"))
        assert (outcome.status, outcome.reason) == ("retry", "controller_unreachable")
        assert s.target.sent == [] and not s.updates._failed()  # never remembered as failed
        s.target.unreachable = False
        assert (await s.updates.apply(plan(s, "4.0.0"))).status == "succeeded"


async def test_a_damaged_cache_file_is_fetched_again(tmp_path: Path) -> None:
    # hostile-edges L9: a cached image was trusted without a re-hash; a damaged one failed as
    # bad_image and the version was never tried again.
    async with setup(tmp_path) as s:
        await publish(s, "4.0.0", IMAGE)
        sha = hashlib.sha256(IMAGE).hexdigest()
        cached = tmp_path / "firmware" / f"{sha}.bin"
        cached.parent.mkdir(parents=True)
        cached.write_bytes(IMAGE[:-1] + b"\x00")
        outcome = await s.updates.apply(plan(s, "4.0.0", sha=sha, size=len(IMAGE)))
        assert outcome.status == "succeeded" and s.world.downloads == 1
        assert cached.read_bytes() == IMAGE


async def test_a_release_without_a_sha_is_cached_under_the_sha_of_its_bytes(
        tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        await publish(s, "4.0.0", IMAGE)
        assert (await s.updates.apply(plan(s, "4.0.0"))).status == "succeeded"
        names = sorted(p.name for p in (tmp_path / "firmware").iterdir())
        assert names == [f"{hashlib.sha256(IMAGE).hexdigest()}.bin"]


@pytest.mark.parametrize(("said", "floor", "kept"), [
    (0.0001, 10.0, 10.0), (1e9, 10.0, 3600.0), (120.0, 10.0, 120.0), (float("inf"), 10.0, 3600.0),
    (0.5, 1.0, 1.0)])
def test_the_clouds_poll_period_is_kept_between_the_floor_and_an_hour(
        said: float, floor: float, kept: float) -> None:
    # hostile-edges M6: poll_after_s only had to be above 0, so a hostile cloud could make
    # the gateway poll in a hot loop (or, with a huge one, never again).
    assert poll_delay_s(said, floor) == kept


async def test_the_update_button_never_installs_a_downgrade(tmp_path: Path) -> None:
    # hostile-edges M5: install_offer built an explicit plan, so `install` published by anyone
    # on the broker applied a rollback image that the policy would refuse.
    async with setup(tmp_path, firmware="4.0.0") as s:
        await publish(s, "4.1.0", make_image((3, 0, 0, 0), firmware_body("old", 4_000)))
        await s.updates.check_releases()
        outcome = await s.updates.install_offer(ADDRESS)
        assert (outcome.status, outcome.reason) == ("skipped", "downgrade_not_allowed")
        assert s.target.sent == []


async def test_with_a_key_a_cloud_image_it_did_not_sign_is_refused_before_the_gate(
        tmp_path: Path) -> None:
    # hostile-edges M6: whoever controlled the API or its bucket could flash anything.
    ours, public = signed_with_new_key(tmp_path, "project")
    theirs, _ = signed_with_new_key(tmp_path, "stranger")
    async with setup(tmp_path, public_key=public) as s:
        await publish(s, "9.2.0", theirs)
        refused = await s.updates.apply(plan(s, "9.2.0"))
        assert (refused.status, refused.reason) == ("failed", "bad_signature")
        assert s.target.sent == []
        await publish(s, "9.2.1", ours)
        assert (await s.updates.apply(plan(s, "9.2.1"))).status == "succeeded"

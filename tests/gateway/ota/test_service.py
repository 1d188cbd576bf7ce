"""The OTA service's own rules, on in-process fakes behind its real interfaces: the idle gate,
one update per radio, the hand-over, and what it does after the reboot (Device Information
re-read and compared, BlueZ's stale GATT cache refreshed)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from firmware_bridge.gatt import uuids
from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.link.session import ControllerSession, PollPlan
from firmware_bridge.ota.outcome import ConfirmPolicy
from firmware_bridge.ota.update import OtaSettings
from firmware_bridge.smp.transport import FrameTransport
from gateway.config import GatewayConfig, OtaConfig
from gateway.errors import CommandFailed, ControllerBusy, UnknownController
from gateway.ops.models import MAX_IMAGE_BYTES, ControllerState, Ota
from gateway.ota.service import OtaService
from gateway.sim.images import firmware_body, make_image
from gateway.store.images import read_image
from gateway.store.registry import Registry
from gateway.store.state import StateStore
from tests.helpers.fakes import InProcessSmpDevice, ModelLink
from tests.helpers.images import signed_with_new_key

ADDRESS = "C0:FF:EE:00:00:00"
OLD = make_image((3, 1, 0, 0), firmware_body("factory", 30_000))
NEW = make_image((9, 2, 0, 0), firmware_body("service", 40_000))
# The in-process device answers at once; only the engine's device-model pauses need shortening.
QUICK = OtaSettings(timeout_s=1.0, reset_settle_s=0.01, poll_s=0.01, reconnect_backoff_s=0.01)


class Access:
    """A controller behind the service's ControllerAccess: SMP on the in-process device, GATT
    on the irrigation model, a hand-over that is recorded."""

    def __init__(self, device: InProcessSmpDevice) -> None:
        self.device = device
        self.model_link = ModelLink(ADDRESS)
        self.held: list[str] = []
        self.stale_cache_reads = 0  # GATT connects that still see the old database
        self.cache_refreshes = 0
        self.reported_revision: str | None = None  # None: the booted image's version

    async def current_state(self, address: str) -> ControllerState:
        link = self.model_link
        link.connected = True
        session = ControllerSession(link, plan=PollPlan(read_channel_names=False))
        await session.bring_up()
        store = StateStore(stale_after_s=60)
        while not session.events.empty():
            store.apply(session.events.get_nowait())
        return store.snapshot(address)

    @contextlib.asynccontextmanager
    async def hold(self, address: str) -> AsyncIterator[None]:
        self.held.append("enter")
        try:
            yield
        finally:
            self.held.append("exit")

    async def connect_smp(self, address: str) -> FrameTransport:
        return await self.device.connect()

    async def connect_gatt(self, address: str) -> GattLink:
        link = ModelLink(address)
        link.firmware_revision = self.reported_revision or \
            self.device.flash.running_version() or "?"
        if self.stale_cache_reads > 0:
            self.stale_cache_reads -= 1
            link.hidden = {uuids.SYSTEM_STATUS}
        return link

    async def refresh_gatt_cache(self, address: str) -> None:
        self.cache_refreshes += 1
        self.stale_cache_reads = 0


@pytest.fixture
def service(tmp_path: Path) -> OtaService:
    config = GatewayConfig(state_dir=tmp_path, ota=OtaConfig(self_confirm_wait_s=0.0,
                                                             reboot_window_s=5.0))
    registry = Registry(config.registry_path)
    registry.add(ADDRESS, name="AutoWatering", bonded=True, firmware_version="3.1.0")
    return OtaService(config, registry, engine_defaults=QUICK)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "new.bin"
    path.write_bytes(NEW)
    return path


def request(image: Path) -> Ota:
    return Ota(address=ADDRESS, image=image.read_bytes(), confirm=ConfirmPolicy.EXPLICIT)


async def test_update_rereads_the_revision_and_records_it(service: OtaService,
                                                          image: Path) -> None:
    access = Access(InProcessSmpDevice(OLD))
    report = await service.update(request(image), access)
    assert report.result == "succeeded", report
    assert report.version == "9.2.0" and report.firmware_revision == "9.2.0"
    assert report.revision_matches is True and not report.gatt_cache_refreshed
    assert access.held == ["enter", "exit"] and access.device.boots == 1
    assert service.registry.get(ADDRESS).firmware_version == "9.2.0"


async def test_a_revision_that_does_not_name_the_image_is_a_warning(service: OtaService,
                                                                    image: Path) -> None:
    access = Access(InProcessSmpDevice(OLD))
    access.reported_revision = "1.0"  # a build that does not inject its version (ota.md Q5)
    report = await service.update(request(image), access)
    assert report.result == "succeeded" and report.revision_matches is False


async def test_a_stale_gatt_cache_is_refreshed_once(service: OtaService, image: Path) -> None:
    access = Access(InProcessSmpDevice(OLD))
    access.stale_cache_reads = 5  # stale until refreshed
    report = await service.update(request(image), access)
    assert report.result == "succeeded" and report.gatt_cache_refreshed
    assert access.cache_refreshes == 1 and report.firmware_revision == "9.2.0"


async def test_no_update_while_watering_and_nothing_uploaded(service: OtaService,
                                                              image: Path) -> None:
    access = Access(InProcessSmpDevice(OLD))
    session = ControllerSession(access.model_link, plan=PollPlan(read_channel_names=False))
    await session.bring_up()
    assert (await session.open_valve(2, 5)).ok
    with pytest.raises(ControllerBusy, match="watering channel 2"):
        await service.update(request(image), access)
    assert access.device.connects == 0 and access.device.uploaded == 0
    assert access.held == []


async def test_one_update_per_radio(service: OtaService, image: Path) -> None:
    first_device = InProcessSmpDevice(OLD)
    first = asyncio.create_task(service.update(request(image), Access(first_device)))
    await asyncio.sleep(0)  # the first has the radio now
    second = Access(InProcessSmpDevice(OLD))
    with pytest.raises(ControllerBusy, match="another firmware update"):
        await service.update(request(image), second)
    assert second.device.connects == 0
    assert (await first).result == "succeeded"


async def test_another_process_updating_over_the_radio_is_refused(service: OtaService,
                                                                  image: Path) -> None:
    service.sessions_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(service.sessions_dir / "hci0.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a second awgw would hold it
        access = Access(InProcessSmpDevice(OLD))
        with pytest.raises(ControllerBusy, match="another process"):
            await service.update(request(image), access)
        assert access.device.connects == 0
    finally:
        os.close(fd)


async def test_unpaired_controller_and_unreadable_file_are_typed(service: OtaService,
                                                                 image: Path) -> None:
    access = Access(InProcessSmpDevice(OLD))
    with pytest.raises(UnknownController):
        await service.update(Ota(address="C0:FF:EE:00:00:09", image=NEW), access)
    with pytest.raises(CommandFailed, match="cannot read"):
        read_image(image.with_name("missing.bin"))
    assert access.device.connects == 0


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "huge", "empty"])
def test_an_image_file_is_read_only_when_it_is_a_regular_file_of_a_slots_size(
        tmp_path: Path, image: Path, kind: str) -> None:
    # hostile-edges M1: a FIFO blocked the daemon's loop (the watchdog then killed it), and
    # /dev/zero ran it out of memory.
    path = tmp_path / "candidate.bin"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(image)
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        with path.open("wb") as f:
            f.truncate(MAX_IMAGE_BYTES + 1)
    else:
        path.touch()
    started = time.monotonic()
    with pytest.raises(CommandFailed):
        read_image(path)
    assert time.monotonic() - started < 1.0


def test_an_ota_request_carries_the_image_and_never_a_path() -> None:
    wire = Ota(address=ADDRESS, image=b"\x3d\xb8\xf3\x96" + bytes(100)).model_dump_json()
    assert '"file"' not in wire and Ota.model_validate_json(wire).image.startswith(b"\x3d")
    with pytest.raises(ValidationError):
        Ota.model_validate_json('{"op": "ota", "address": "C0:FF:EE:00:00:01", '
                                '"file": "/etc/shadow"}')


async def test_with_a_key_only_an_image_it_signed_reaches_the_controller(tmp_path: Path) -> None:
    # hostile-edges M6 / issue 18 item 6: images were never signature-checked.
    ours, public = signed_with_new_key(tmp_path, "project")
    theirs, _ = signed_with_new_key(tmp_path, "stranger")
    config = GatewayConfig(state_dir=tmp_path, ota=OtaConfig(
        self_confirm_wait_s=0.0, reboot_window_s=5.0, public_key=public))
    registry = Registry(config.registry_path)
    registry.add(ADDRESS, name="AutoWatering", bonded=True, firmware_version="3.1.0")
    service = OtaService(config, registry, engine_defaults=QUICK)
    for unsigned_or_foreign in (NEW, theirs):
        access = Access(InProcessSmpDevice(OLD))
        report = await service.update(Ota(address=ADDRESS, image=unsigned_or_foreign,
                                          confirm=ConfirmPolicy.EXPLICIT), access)
        assert (report.result, report.reason) == ("failed", "invalid_image"), report
        assert "signature" in report.detail and report.uploaded_bytes == 0
    access = Access(InProcessSmpDevice(OLD))
    report = await service.update(Ota(address=ADDRESS, image=ours,
                                      confirm=ConfirmPolicy.EXPLICIT), access)
    assert report.result == "succeeded", report


@pytest.mark.parametrize(("image", "needle"), [
    (make_image((9, 2, 0, 0), firmware_body("enc", 4000), flags=0x04), "encrypted"),
    (make_image((9, 2, 0, 0), firmware_body("hdr", 4000), header_size=0x100), "header"),
    (make_image((9, 2, 0, 0), firmware_body("big", 750_000)), "slot"),
])
async def test_the_header_and_the_slot_limit_are_checked_before_a_byte_is_sent(
        service: OtaService, image: bytes, needle: str) -> None:
    # ota.md 2.6 items 3-4: FLAG_ENCRYPTED was never looked at, hdr_size never checked, and
    # no slot limit applied (only the 4 MiB download cap).
    access = Access(InProcessSmpDevice(OLD))
    report = await service.update(Ota(address=ADDRESS, image=image,
                                      confirm=ConfirmPolicy.EXPLICIT), access)
    assert report.result == "failed" and needle in report.detail, report
    assert report.uploaded_bytes == 0

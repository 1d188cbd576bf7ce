"""One firmware update from start to a typed outcome (ota.md sections 4 and 5).

preflight (image checks before any byte is sent) -> image state (skip what the device holds,
refuse while a previous update is unconfirmed) -> upload with resume across dropped links ->
verify slot 1 holds exactly the TLV hash -> mark for test -> reset -> wait for the reboot ->
decide from the post-reboot image state -> confirm policy. Nothing is ever marked for test
unless slot 1's hash equals the image's TLV hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import structlog

from firmware_bridge.errors import BridgeError, LinkLost, TransportError, TransportTimeout
from firmware_bridge.mcuboot import ImageFormatError, McubootImage, image_problems, parse_image
from firmware_bridge.ota.outcome import FailureReason, OtaOutcome, OtaResult, Phase, Progress
from firmware_bridge.ota.session_store import SessionStore, UploadSession
from firmware_bridge.ota.upload import (
    CHUNK_TIMEOUT_S,
    FIRST_CHUNK_TIMEOUT_S,
    Uploader,
    UploadPlan,
)
from firmware_bridge.smp import commands
from firmware_bridge.smp.channel import DeviceRejected, SmpChannel, SmpProtocolError
from firmware_bridge.smp.commands import ImageSlot
from firmware_bridge.smp.transport import FrameTransport

log = structlog.get_logger(__name__)
T = TypeVar("T")

Connect = Callable[[], Awaitable[FrameTransport]]

# Zephyr's "no free slot": slot 1 is the revert target of an unconfirmed running image.
RC_NO_FREE_SLOT = 9
RC_TOO_LARGE = 30
# Slot 1 still pending this long after the reset: the reset itself was lost.
RESET_LOST_AFTER_S = 10.0


class ConfirmPolicy(StrEnum):
    SELF = "self"  # the firmware confirms itself after a good boot: wait for it
    EXPLICIT = "explicit"  # the gateway confirms as soon as the new image runs
    SELF_THEN_EXPLICIT = "self-then-explicit"  # wait, then confirm if the image is healthy


@dataclass(frozen=True)
class OtaSettings:
    window: int | None = None  # None: the device's buf_count
    frame_budget: int | None = None  # None: the device's buf_size
    pre_erase: bool = False
    confirm: ConfirmPolicy = ConfirmPolicy.SELF_THEN_EXPLICIT
    slot_limit: int | None = None  # bytes; ota.md 1.6 (741 376 on the Feb-2026 layout)
    first_timeout_s: float = FIRST_CHUNK_TIMEOUT_S
    timeout_s: float = CHUNK_TIMEOUT_S
    # Between the reset's reply and the device going down (ota.md 4.9: the app waits 2.5 s).
    reset_settle_s: float = 2.5
    # MCUboot's swap through scratch takes tens of seconds on the device (ota.md 5.2 W).
    reboot_window_s: float = 180.0
    # How long the firmware gets to confirm itself (ota.md 5.3: poll every 5 s up to 60 s).
    self_confirm_wait_s: float = 60.0
    poll_s: float = 5.0
    # Reconnects during the upload before giving up; each costs at most one window.
    max_reconnects: int = 60
    reconnect_backoff_s: float = 1.0


class _Fail(Exception):
    def __init__(self, reason: FailureReason, detail: str, rc: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.rc = rc


def check_image(data: bytes, slot_limit: int | None) -> McubootImage:
    """Everything that can be known before touching the device (ota.md 2.6)."""
    try:
        image = parse_image(data)
    except ImageFormatError as exc:
        raise _Fail(FailureReason.INVALID_IMAGE, str(exc)) from exc
    for kind, message in image_problems(image, slot_limit):
        reason = FailureReason.TOO_LARGE if kind == "too_large" else FailureReason.INVALID_IMAGE
        raise _Fail(reason, message)
    return image


class FirmwareUpdate:
    def __init__(self, connect: Connect, data: bytes, *, device: str,
                 settings: OtaSettings | None = None, store: SessionStore | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.connect = connect
        self.data = data
        self.device = device
        self.settings = settings or OtaSettings()
        self.store = store
        self.on_progress = on_progress
        self.sent_bytes = 0
        self.reconnects = 0
        self._transport: FrameTransport | None = None
        self._log = log.bind(device=device)

    async def run(self) -> OtaOutcome:
        started = time.monotonic()
        image: McubootImage | None = None
        skipped = False
        try:
            image = check_image(self.data, self.settings.slot_limit)
            result, detail, skipped = await self._update(image)
            self._clear()
            return self._outcome(result, detail, image, started, skipped=skipped)
        except TransportTimeout as exc:
            return self._failed(_Fail(FailureReason.TIMEOUT, str(exc)), image, started, skipped)
        except (LinkLost, TransportError) as exc:
            return self._failed(_Fail(FailureReason.LINK_LOST, str(exc)), image, started,
                                skipped)
        except _Fail as fail:
            return self._failed(fail, image, started, skipped)

    async def recheck(self) -> OtaOutcome:
        """The later re-check of ota.md 5.3: on a routine contact, is the new image still the
        confirmed one, or did the device roll back since?"""
        started = time.monotonic()
        image: McubootImage | None = None
        try:
            image = check_image(self.data, self.settings.slot_limit)
            async with await self._channel() as channel:
                slots = await self._guard(commands.image_state(channel))
        except _Fail as fail:
            return self._failed(fail, image, started, True)
        except (LinkLost, TransportError) as exc:
            return self._failed(_Fail(FailureReason.LINK_LOST, str(exc)), image, started, True)
        running, secondary = _slot(slots, 0), _slot(slots, 1)
        new = image.image_hash
        if running is not None and running.hash == new and running.confirmed:
            return self._outcome(OtaResult.SUCCEEDED, "still running and confirmed", image,
                                 started, skipped=True)
        if secondary is not None and secondary.hash == new:
            return self._outcome(OtaResult.REVERTED, "the device rolled back to the previous "
                                 "image", image, started, skipped=True)
        return self._failed(_Fail(FailureReason.VERIFY_MISMATCH, "the new image is neither "
                                  "running confirmed nor in slot 1"), image, started, True)

    def _failed(self, fail: _Fail, image: McubootImage | None, started: float,
                skipped: bool) -> OtaOutcome:
        if fail.reason not in (FailureReason.LINK_LOST, FailureReason.TIMEOUT,
                               FailureReason.TRANSFER, FailureReason.UNREACHABLE):
            self._clear()  # a resumable failure keeps the session for the next attempt
        self._log.warning("ota_failed", reason=fail.reason.value, detail=str(fail))
        return self._outcome(OtaResult.FAILED, str(fail), image, started, fail.reason,
                             fail.rc, skipped)

    def _outcome(self, result: OtaResult, detail: str, image: McubootImage | None,
                 started: float, reason: FailureReason | None = None, rc: int | None = None,
                 skipped: bool = False) -> OtaOutcome:
        return OtaOutcome(result, detail, reason, rc,
                          image.image_hash.hex() if image else "",
                          str(image.version) if image else "", self.sent_bytes,
                          time.monotonic() - started, skipped)

    def _clear(self) -> None:
        if self.store is not None:
            self.store.clear(self.device)

    def _phase(self, phase: Phase, offset: int = 0, total: int = 0) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(phase, offset, total, 0.0, None))

    # ---- the steps ---------------------------------------------------------------------------

    async def _update(self, image: McubootImage) -> tuple[OtaResult, str, bool]:
        new = image.image_hash
        self._phase(Phase.PREFLIGHT)
        async with await self._channel() as channel:
            params = await self._guard(commands.read_params(channel))
            slots = await self._guard(commands.image_state(channel))
            running = _slot(slots, 0)
            if running is not None and running.hash == new and running.active:
                if not running.confirmed:
                    await self._confirm_policy(channel, new)
                return OtaResult.SUCCEEDED, "the device already runs this image", True
            if running is not None and running.active and not running.confirmed:
                raise _Fail(FailureReason.DEVICE_BUSY,
                            "a previous update is still unconfirmed on the device; slot 1 "
                            "holds its revert image", RC_NO_FREE_SLOT)
            secondary = _slot(slots, 1)
            skip = secondary is not None and secondary.hash == new
        if not skip:
            await self._upload(image, params)
        async with await self._channel() as channel:
            self._phase(Phase.VERIFY)
            slots = await self._guard(commands.image_state(channel))
            secondary = _slot(slots, 1)
            if secondary is None or secondary.hash != new:
                # The one rule: nothing is marked for test unless slot 1 is exactly ours.
                got = secondary.hash.hex() if secondary else "nothing"
                raise _Fail(FailureReason.VERIFY_MISMATCH,
                            f"slot 1 holds {got}, not the image's hash {new.hex()}")
            if not secondary.bootable:
                raise _Fail(FailureReason.VERIFY_MISMATCH, "slot 1 is not bootable")
            self._phase(Phase.TEST)
            slots = await self._guard(commands.mark_for_test(channel, new))
            marked = _slot(slots, 1)
            if marked is None or marked.hash != new or not marked.pending:
                raise _Fail(FailureReason.PROTOCOL, "mark for test did not leave slot 1 pending")
            self._phase(Phase.RESET)
            await self._reset(channel)
        result, detail = await self._after_reboot(new)
        return result, detail, skip

    async def _upload(self, image: McubootImage, params: commands.Params) -> None:
        settings = self.settings
        transport = self._transport
        if transport is None:
            raise LinkLost("upload: no transport was ever connected")
        plan = UploadPlan(window=max(1, settings.window or params.buf_count),
                          frame_budget=transport.frame_budget(
                              settings.frame_budget or params.buf_size),
                          first_timeout_s=settings.first_timeout_s, timeout_s=settings.timeout_s)
        session = self.store.load(self.device) if self.store else None
        resuming = session is not None and session.file_sha256 == image.file_sha256.hex()
        if self.store is not None and not resuming:
            self.store.save(UploadSession(self.device, image.file_sha256.hex(),
                                          image.image_hash.hex(), len(self.data), 0,
                                          time.time()), force=True)
        first_connection = True
        while True:
            try:
                async with await self._channel() as channel:
                    if not first_connection:
                        # A completed upload whose last reply was lost must not be
                        # restarted: off=0 would start a new upload and erase it (4.6).
                        slots = await self._guard(commands.image_state(channel))
                        done = _slot(slots, 1)
                        if done is not None and done.hash == image.image_hash:
                            return
                    elif settings.pre_erase and not resuming:
                        await self._guard(commands.erase_slot(channel))
                    first_connection = False
                    uploader = Uploader(channel, self.data, image.file_sha256, plan,
                                        self.on_progress, self._acked(image))
                    try:
                        await uploader.run()
                    finally:
                        self.sent_bytes += uploader.sent_bytes
                    return
            except (LinkLost, TransportError) as exc:
                first_connection = False
                self.reconnects += 1
                if self.reconnects > settings.max_reconnects:
                    raise _Fail(FailureReason.TRANSFER, f"upload gave up after "
                                f"{self.reconnects} reconnects: {exc}") from exc
                self._log.info("upload_link_lost", error=str(exc), reconnects=self.reconnects)
            except DeviceRejected as exc:
                raise self._rejected(exc) from exc
            except SmpProtocolError as exc:
                raise _Fail(FailureReason.PROTOCOL, str(exc)) from exc
            await asyncio.sleep(settings.reconnect_backoff_s)

    def _acked(self, image: McubootImage) -> Callable[[int], None]:
        def save(offset: int) -> None:
            if self.store is not None:
                self.store.save(UploadSession(self.device, image.file_sha256.hex(),
                                              image.image_hash.hex(), len(self.data), offset,
                                              time.time()))
        return save

    async def _reset(self, channel: SmpChannel) -> None:
        # The device rebooting before it answers is the expected case.
        with contextlib.suppress(LinkLost, TransportError):
            await commands.reset(channel)

    async def _after_reboot(self, new: bytes) -> tuple[OtaResult, str]:
        self._phase(Phase.REBOOT_WAIT)
        settings = self.settings
        # The device answers the reset before it goes down; reading its state right away
        # would see the pre-reboot slots (the app waits 2.5 s too, ota.md 4.9).
        await asyncio.sleep(settings.reset_settle_s)
        deadline = time.monotonic() + settings.reboot_window_s
        pending_since: float | None = None
        reset_again = True
        while True:
            slots = await self._reconnect_state(max(1.0, deadline - time.monotonic()))
            running, secondary = _slot(slots, 0), _slot(slots, 1)
            if running is not None and running.hash == new and running.active:
                if running.confirmed:
                    return OtaResult.SUCCEEDED, "new image running and confirmed"
                async with await self._channel() as channel:
                    return await self._confirm_policy(channel, new)
            if secondary is not None and secondary.hash == new and secondary.pending:
                now = time.monotonic()
                pending_since = pending_since or now
                if now > deadline:
                    raise _Fail(FailureReason.UNREACHABLE, "the device never rebooted into "
                                "the new image (slot 1 still pending)")
                if reset_again and now - pending_since > RESET_LOST_AFTER_S:
                    reset_again = False  # the reset was lost: send it once more (ota.md 5.3)
                    async with await self._channel() as channel:
                        await self._reset(channel)
                    await asyncio.sleep(settings.reset_settle_s)
                await asyncio.sleep(1.0)
                continue
            if secondary is not None and secondary.hash == new:
                return OtaResult.REVERTED, "the device booted the new image and reverted it"
            raise _Fail(FailureReason.REJECTED_BY_BOOTLOADER,
                        "after the reset no slot holds the new image: MCUboot rejected it")

    async def _reconnect_state(self, window_s: float) -> tuple[ImageSlot, ...]:
        deadline = time.monotonic() + window_s
        delay = 0.5
        while True:
            try:
                async with await self._channel() as channel:
                    return await commands.image_state(channel)
            except (LinkLost, TransportError) as exc:
                if time.monotonic() + delay > deadline:
                    raise _Fail(FailureReason.UNREACHABLE, f"no contact within "
                                f"{window_s:.0f} s after the reset: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 6.0)

    async def _confirm_policy(self, channel: SmpChannel, new: bytes) -> tuple[OtaResult, str]:
        self._phase(Phase.CONFIRM)
        policy = self.settings.confirm
        if policy is not ConfirmPolicy.EXPLICIT:
            deadline = time.monotonic() + self.settings.self_confirm_wait_s
            while time.monotonic() < deadline:
                running = _slot(await self._guard(commands.image_state(channel)), 0)
                if running is not None and running.hash == new and running.confirmed:
                    return OtaResult.SUCCEEDED, "the firmware confirmed itself"
                await asyncio.sleep(self.settings.poll_s)
            if policy is ConfirmPolicy.SELF:
                raise _Fail(FailureReason.TIMEOUT, "the new image did not confirm itself within "
                            f"{self.settings.self_confirm_wait_s:.0f} s; it will revert on the "
                            "next reset")
        # Health check before confirming: the device must still answer SMP (ota.md 5.4).
        await self._guard(commands.image_state(channel))
        await self._guard(commands.confirm(channel))
        running = _slot(await self._guard(commands.image_state(channel)), 0)
        if running is None or running.hash != new or not running.confirmed:
            raise _Fail(FailureReason.PROTOCOL, "confirm did not leave the new image confirmed")
        return OtaResult.SUCCEEDED, "new image running, confirmed by the gateway"

    # ---- plumbing ------------------------------------------------------------------------

    async def _channel(self) -> SmpChannel:
        try:
            transport = await self.connect()
            self._transport = transport
        except BridgeError as exc:
            raise LinkLost(f"cannot connect: {exc}") from exc
        except OSError as exc:
            raise LinkLost(f"cannot connect: {exc}") from exc
        return SmpChannel(transport)

    async def _guard(self, step: Awaitable[T]) -> T:
        """Device refusals and malformed replies end the update with their reason; link
        trouble propagates to whoever can reconnect."""
        try:
            return await step
        except DeviceRejected as exc:
            raise self._rejected(exc) from exc
        except SmpProtocolError as exc:
            raise _Fail(FailureReason.PROTOCOL, str(exc)) from exc

    def _rejected(self, exc: DeviceRejected) -> _Fail:
        if exc.rc == RC_TOO_LARGE:
            return _Fail(FailureReason.TOO_LARGE, str(exc), exc.rc)
        if exc.rc == RC_NO_FREE_SLOT:
            return _Fail(FailureReason.DEVICE_BUSY, str(exc), exc.rc)
        return _Fail(FailureReason.DEVICE_REJECTED, str(exc), exc.rc)


def _slot(slots: tuple[ImageSlot, ...], number: int) -> ImageSlot | None:
    return next((s for s in slots if s.slot == number), None)

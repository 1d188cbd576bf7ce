"""One firmware update from start to a typed outcome (ota.md sections 4 and 5).

preflight (image checks before any byte is sent) -> image state (skip what the device holds,
refuse while a previous update is unconfirmed) -> upload with resume across dropped links ->
verify slot 1 holds exactly the TLV hash -> mark for test -> reset -> wait for the reboot ->
decide from the post-reboot image state -> confirm policy. Nothing is ever marked for test
unless slot 1's hash equals the image's TLV hash.

After the upload, every step is chosen from the device's image state as read on a fresh
connection (``_finish``): a link that drops, or a reply that is lost, during verify, test,
reset, the reboot wait or confirm costs a reconnect and a re-read, and the update goes on from
what the device says (test and confirm are safe to repeat), within the update's budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from firmware_bridge.errors import BridgeError, LinkLost, TransportError, TransportTimeout
from firmware_bridge.mcuboot import (
    ImageFormatError,
    McubootImage,
    SignatureError,
    image_problems,
    parse_image,
    verify_signature,
)
from firmware_bridge.ota.outcome import (
    ConfirmPolicy,
    FailureReason,
    OtaOutcome,
    OtaResult,
    Phase,
    Progress,
)
from firmware_bridge.ota.session_store import SessionStore, UploadSession
from firmware_bridge.ota.upload import (
    CHUNK_TIMEOUT_S,
    FIRST_CHUNK_TIMEOUT_S,
    ResendTimer,
    UploadCost,
    Uploader,
    UploadPlan,
    Window,
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
# Marks for test or confirms sent without the device's state following: the device is not
# doing what img_mgmt documents; give up with a protocol error rather than loop.
MAX_STATE_WRITES = 3


@dataclass(frozen=True)
class OtaSettings:
    window: int | None = None  # None: the device's buf_count
    frame_budget: int | None = None  # None: the device's buf_size
    pre_erase: bool = False
    confirm: ConfirmPolicy = ConfirmPolicy.SELF_THEN_EXPLICIT
    slot_limit: int | None = None  # bytes; ota.md 1.6 (741 376 on the Feb-2026 layout)
    # The project's MCUboot public key (PEM): when set, an image must carry a signature it
    # verifies before a byte is sent (ota.md 2.6 item 6).
    public_key_pem: bytes | None = None
    first_timeout_s: float = FIRST_CHUNK_TIMEOUT_S
    timeout_s: float = CHUNK_TIMEOUT_S
    # None: adapt the window between 1 and the device's buf_count, starting at buf_count - 1;
    # a number (``window``) fixes it.
    # Between the reset's reply and the device going down (ota.md 4.9: the app waits 2.5 s).
    reset_settle_s: float = 2.5
    # MCUboot's swap through scratch takes tens of seconds on the device (ota.md 5.2 W).
    reboot_window_s: float = 180.0
    # How long the firmware gets to confirm itself (ota.md 5.3: poll every 5 s up to 60 s).
    self_confirm_wait_s: float = 60.0
    poll_s: float = 5.0
    # Slot 1 still pending this long after the reset: the reset itself was lost (resent once).
    reset_lost_after_s: float = 10.0
    # Reconnects during the upload before giving up; each costs at most one window.
    max_reconnects: int = 60
    # Reconnects for one control step (image state, test, confirm) before giving up.
    max_control_attempts: int = 6
    reconnect_backoff_s: float = 1.0


class _Fail(Exception):
    def __init__(self, reason: FailureReason, detail: str, rc: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.rc = rc


def check_image(data: bytes, slot_limit: int | None,
                public_key_pem: bytes | None = None) -> McubootImage:
    """Everything that can be known before touching the device (ota.md 2.6)."""
    try:
        image = parse_image(data)
    except ImageFormatError as exc:
        raise _Fail(FailureReason.INVALID_IMAGE, str(exc)) from exc
    for kind, message in image_problems(image, slot_limit):
        reason = FailureReason.TOO_LARGE if kind == "too_large" else FailureReason.INVALID_IMAGE
        raise _Fail(reason, message)
    if public_key_pem is not None:
        try:
            verify_signature(data, image, public_key_pem)
        except SignatureError as exc:
            raise _Fail(FailureReason.INVALID_IMAGE, f"signature: {exc}") from exc
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
        self.cost = UploadCost()
        self._transport: FrameTransport | None = None
        self._open: SmpChannel | None = None  # the control steps' connection, kept between them
        self._log = log.bind(device=device)

    async def run(self) -> OtaOutcome:
        started = time.monotonic()
        image: McubootImage | None = None
        skipped = False
        try:
            image = check_image(self.data, self.settings.slot_limit, self.settings.public_key_pem)
            result, detail, skipped = await self._update(image)
            self._clear()
            return self._outcome(result, detail, image, started, skipped=skipped)
        except _Fail as fail:
            return self._failed(fail, image, started, skipped)
        finally:
            await self._close()

    async def recheck(self) -> OtaOutcome:
        """The later re-check of ota.md 5.3: on a routine contact, is the new image still the
        confirmed one, or did the device roll back since?"""
        started = time.monotonic()
        image: McubootImage | None = None
        try:
            image = check_image(self.data, self.settings.slot_limit, self.settings.public_key_pem)
            slots = await self._control("image state", commands.image_state)
        except _Fail as fail:
            return self._failed(fail, image, started, True)
        finally:
            await self._close()
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
                          time.monotonic() - started, skipped,
                          frames_lost=self.cost.frames_lost,
                          windows_resent=self.cost.windows_resent, reconnects=self.reconnects,
                          window=self.cost.window)

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

        async def preflight(channel: SmpChannel) -> tuple[commands.Params,
                                                          tuple[ImageSlot, ...]]:
            return await commands.read_params(channel), await commands.image_state(channel)

        params, slots = await self._control("preflight", preflight)
        running = _slot(slots, 0)
        if running is not None and running.hash == new and running.active:
            if not running.confirmed:
                await self._finish(new, rebooted=True)
            return OtaResult.SUCCEEDED, "the device already runs this image", True
        if running is not None and running.active and not running.confirmed:
            raise _Fail(FailureReason.DEVICE_BUSY,
                        "a previous update is still unconfirmed on the device; slot 1 "
                        "holds its revert image", RC_NO_FREE_SLOT)
        secondary = _slot(slots, 1)
        skip = secondary is not None and secondary.hash == new
        if not skip:
            await self._upload(image, params)
        result, detail = await self._finish(new, rebooted=False)
        return result, detail, skip

    async def _upload(self, image: McubootImage, params: commands.Params) -> None:
        settings = self.settings
        transport = self._transport
        if transport is None:
            raise _Fail(FailureReason.LINK_LOST, "upload: no transport was ever connected")
        await self._close()  # the upload makes its own connections, one at a time
        start = settings.window or max(1, params.buf_count - 1)
        plan = UploadPlan(window=start,
                          frame_budget=transport.frame_budget(
                              settings.frame_budget or params.buf_size),
                          first_timeout_s=(settings.timeout_s if settings.pre_erase
                                           else settings.first_timeout_s),
                          timeout_s=settings.timeout_s,
                          max_window=None if settings.window else max(1, params.buf_count))
        window, timer = Window(plan.window, plan.max_window), ResendTimer(plan.timeout_s)
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
                                        self.on_progress, self._acked(image), window=window,
                                        timer=timer, cost=self.cost)
                    try:
                        await uploader.run()
                    finally:
                        self.sent_bytes += uploader.sent_bytes
                    return
            except (LinkLost, TransportError) as exc:
                first_connection = False
                self.reconnects += 1
                self.cost.window = window.size
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

    async def _finish(self, new: bytes, *, rebooted: bool) -> tuple[OtaResult, str]:
        """Verify, test, reset, wait for the reboot, confirm: each step chosen from the image
        state just read, so a step lost to a dropped link or a lost reply is found undone (or
        done) on the next read and the update goes on from there (ota.md 5.2, 5.3)."""
        settings = self.settings
        reset_at: float | None = None  # monotonic time the (last) reset went out
        resets = marks = confirms = 0
        reboot_deadline = 0.0
        self_confirm_until: float | None = None
        while True:
            if reset_at is not None and not rebooted:
                slots = await self._reconnect_state(reboot_deadline - time.monotonic())
            else:
                slots = await self._control("image state", commands.image_state)
            running, secondary = _slot(slots, 0), _slot(slots, 1)
            now = time.monotonic()
            if running is not None and running.hash == new and running.active:
                rebooted = True
                if running.confirmed:
                    if confirms:
                        return OtaResult.SUCCEEDED, "new image running, confirmed by the gateway"
                    if self_confirm_until is not None:
                        return OtaResult.SUCCEEDED, "the firmware confirmed itself"
                    return OtaResult.SUCCEEDED, "new image running and confirmed"
                self._phase(Phase.CONFIRM)
                if settings.confirm is not ConfirmPolicy.EXPLICIT and not confirms:
                    if self_confirm_until is None:
                        self_confirm_until = now + settings.self_confirm_wait_s
                    if now < self_confirm_until:
                        await asyncio.sleep(settings.poll_s)
                        continue
                    if settings.confirm is ConfirmPolicy.SELF:
                        raise _Fail(FailureReason.TIMEOUT, "the new image did not confirm "
                                    f"itself within {settings.self_confirm_wait_s:.0f} s; it "
                                    "will revert on the next reset")
                if confirms >= MAX_STATE_WRITES:
                    raise _Fail(FailureReason.PROTOCOL,
                                "confirm did not leave the new image confirmed")
                # The image state just read is the health check (ota.md 5.4): SMP answers.
                confirms += 1
                await self._control("confirm", commands.confirm)
                continue
            if secondary is not None and secondary.hash == new:
                if secondary.pending:
                    if reset_at is None or (resets < 2 and
                                            now - reset_at > settings.reset_lost_after_s):
                        if reset_at is not None:
                            self._log.info("ota_reset_resent", pending_s=round(now - reset_at))
                        self._phase(Phase.RESET)
                        await self._reset()
                        resets += 1
                        if reset_at is None:
                            reboot_deadline = now + settings.reboot_window_s
                        reset_at = now
                        self._phase(Phase.REBOOT_WAIT)
                        # The device answers the reset before it goes down; reading its state
                        # right away would see the pre-reboot slots (ota.md 4.9).
                        await asyncio.sleep(settings.reset_settle_s)
                        continue
                    if now > reboot_deadline:
                        raise _Fail(FailureReason.UNREACHABLE, "the device never rebooted into "
                                    "the new image (slot 1 still pending)")
                    await asyncio.sleep(min(1.0, settings.reset_lost_after_s / 4))
                    continue
                if reset_at is not None or rebooted:
                    return OtaResult.REVERTED, "the device booted the new image and reverted it"
                self._phase(Phase.VERIFY)
                if not secondary.bootable:
                    raise _Fail(FailureReason.VERIFY_MISMATCH, "slot 1 is not bootable")
                if marks >= MAX_STATE_WRITES:
                    raise _Fail(FailureReason.PROTOCOL,
                                "mark for test did not leave slot 1 pending")
                self._phase(Phase.TEST)
                marks += 1
                await self._control("mark for test",
                                    lambda channel: commands.mark_for_test(channel, new))
                continue
            if reset_at is not None or rebooted:
                raise _Fail(FailureReason.REJECTED_BY_BOOTLOADER,
                            "after the reset no slot holds the new image: MCUboot rejected it")
            # The one rule: nothing is marked for test unless slot 1 is exactly ours.
            got = secondary.hash.hex() if secondary else "nothing"
            raise _Fail(FailureReason.VERIFY_MISMATCH,
                        f"slot 1 holds {got}, not the image's hash {new.hex()}")

    async def _reset(self) -> None:
        """Send the reset. Its reply is optional (the device may reboot first) and a link
        that drops here may or may not have carried it: the image state read next tells,
        and a reset that never arrived is sent again (``reset_lost_after_s``)."""
        try:
            await commands.reset(await self._session_channel())
        except (LinkLost, TransportError) as exc:
            self.reconnects += 1  # whatever happened, the next step needs a new connection
            self._log.info("ota_reset_unanswered", error=str(exc))
        finally:
            await self._close()  # the device reboots: this connection is over either way

    async def _reconnect_state(self, window_s: float) -> tuple[ImageSlot, ...]:
        deadline = time.monotonic() + max(1.0, window_s)
        delay = 0.5
        while True:
            try:
                return await self._guard(commands.image_state(await self._session_channel()))
            except (LinkLost, TransportError) as exc:
                await self._close()
                if time.monotonic() + delay > deadline:
                    raise _Fail(FailureReason.UNREACHABLE, f"no contact within "
                                f"{window_s:.0f} s after the reset: {exc}") from exc
                self.reconnects += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 6.0)

    async def _control(self, what: str, step: Callable[[SmpChannel], Awaitable[T]]) -> T:
        """One control step on a fresh connection; a dropped link or a lost reply reconnects
        and runs it again (reads, test and confirm are all safe to repeat), up to
        ``max_control_attempts`` times, then fails with the last trouble's reason."""
        settings = self.settings
        attempt = 0
        while True:
            try:
                return await self._guard(step(await self._session_channel()))
            except (LinkLost, TransportError) as exc:
                await self._close()
                attempt += 1
                if attempt >= settings.max_control_attempts:
                    reason = (FailureReason.TIMEOUT if isinstance(exc, TransportTimeout)
                              else FailureReason.LINK_LOST)
                    raise _Fail(reason, f"{what}: gave up after {attempt} attempts: {exc}"
                                ) from exc
                self.reconnects += 1
                self._log.info("ota_control_retry", step=what, attempt=attempt, error=str(exc))
                await asyncio.sleep(settings.reconnect_backoff_s)

    # ---- plumbing ------------------------------------------------------------------------

    async def _session_channel(self) -> SmpChannel:
        if self._open is None:
            channel = await self._channel()
            await channel.__aenter__()
            self._open = channel
        return self._open

    async def _close(self) -> None:
        channel, self._open = self._open, None
        if channel is not None:
            await channel.__aexit__(None, None, None)

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

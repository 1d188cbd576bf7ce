"""The one way the gateway updates a controller's firmware, whoever asks (the CLI's direct
path, the daemon, later cloud jobs).

The service owns the fleet's rules around firmware_bridge's single-device engine:
- gates: never while the controller waters or a task runs or waits (ota.md 5.1), one update per
  radio at a time (in this process, and across processes by a lock file in the state
  directory), and the controller must be paired;
- the hand-over: the controller's supervisor lets go of it and answers busy meanwhile, and the
  update holds an urgent slot (``ControllerAccess.hold``);
- the session directory (resume across restarts) and the configured timeouts;
- after the reboot: Device Information's firmware revision read again and compared with the
  image's version, and BlueZ's cached GATT database refreshed when the controller's services
  no longer fit it (ota.md 5.2 step V).

How the controller is reached differs between the daemon and the CLI's direct path; that is
``ControllerAccess``. Serial and UDP endpoints (no GATT, no irrigation state) go through
``update_endpoint``, with the same engine, session store and lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import structlog

from firmware_bridge.errors import BridgeError
from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import SystemStatus
from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.ota.outcome import ConfirmPolicy, OtaOutcome, OtaResult
from firmware_bridge.ota.session_store import FileSessionStore
from firmware_bridge.ota.update import FirmwareUpdate, OtaSettings
from firmware_bridge.smp.transport import FrameTransport
from gateway.config import GatewayConfig, OtaConfig
from gateway.errors import ConfigError, ControllerBusy
from gateway.link.failures import FailureClass, classify
from gateway.ops.models import ControllerState, Ota, OtaReport
from gateway.ops.protocol import ProgressFn
from gateway.store.registry import Registry, normalise_address

log = structlog.get_logger(__name__)

Connect = Callable[[], Awaitable[FrameTransport]]


class ControllerAccess(Protocol):
    """How the service reaches one paired controller: through the daemon's supervisors, or
    directly on the radio when no daemon runs."""

    async def current_state(self, address: str) -> ControllerState:
        """State fresh enough to decide the idle gate on."""
        ...

    def hold(self, address: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Own the controller for the update (supervisor hand-over, urgent slot)."""
        ...

    async def connect_smp(self, address: str) -> FrameTransport: ...

    async def connect_gatt(self, address: str) -> GattLink: ...

    async def refresh_gatt_cache(self, address: str) -> None:
        """Make BlueZ discover the controller's services afresh (remove and re-pair)."""
        ...


# A PEM public key is a few hundred bytes (RSA-3072: ~0.6 KiB); a file far larger is not one.
MAX_KEY_BYTES = 16 * 1024


def read_public_key(ota: OtaConfig) -> bytes | None:
    """``[ota] public_key``'s PEM bytes, checked to be a public key; ConfigError naming the
    key otherwise (the daemon exits 7 before anything starts)."""
    if ota.public_key is None:
        return None
    from cryptography.hazmat.primitives import serialization

    try:
        with ota.public_key.open("rb") as file:
            pem = file.read(MAX_KEY_BYTES + 1)
        if len(pem) > MAX_KEY_BYTES:
            raise ConfigError(f"ota.public_key: {ota.public_key} is not a PEM public key "
                              "(too large)")
        serialization.load_pem_public_key(pem)
    except OSError as exc:
        raise ConfigError(f"ota.public_key: cannot read {ota.public_key}: {exc.strerror}") \
            from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"ota.public_key: {ota.public_key} is not a PEM public key "
                          f"(`imgtool getpub -k KEY -e pem` writes one)") from exc
    return pem


class OtaService:
    def __init__(self, config: GatewayConfig, registry: Registry,
                 engine_defaults: OtaSettings | None = None) -> None:
        """``engine_defaults``: the engine's device-model timings (tests shorten them); the
        configured ones and each request's own choices go on top. ConfigError when
        ``[ota] public_key`` names no readable PEM public key."""
        self.config = config
        self.registry = registry
        self.engine_defaults = engine_defaults or OtaSettings()
        self.public_key = read_public_key(config.ota)
        self._locks: dict[str, asyncio.Lock] = {}

    def settings(self, *, window: int | None, confirm: ConfirmPolicy, pre_erase: bool,
                 slot_limit: int | None) -> OtaSettings:
        """The engine's settings: its device-model defaults, the configured reboot and
        self-confirm windows, and the caller's choices."""
        ota = self.config.ota
        limit = ota.slot_limit_bytes if slot_limit is None else min(slot_limit,
                                                                    ota.slot_limit_bytes)
        return dataclasses.replace(
            self.engine_defaults, window=window, pre_erase=pre_erase, confirm=confirm,
            slot_limit=limit, reboot_window_s=ota.reboot_window_s,
            self_confirm_wait_s=ota.self_confirm_wait_s, public_key_pem=self.public_key)

    # ---- a paired controller over BLE ----------------------------------------------------

    async def update(self, request: Ota, access: ControllerAccess,
                     on_progress: ProgressFn | None = None) -> OtaReport:
        address = normalise_address(request.address)
        previous = self.registry.get(address).firmware_version
        data = request.image
        async with self._radio(self.config.link.adapter):
            state = await access.current_state(address)
            busy = state.watering()
            if busy is not None:
                raise ControllerBusy(f"{address}: {busy}; update it when the task has "
                                     "finished (nothing was uploaded)")
            async with access.hold(address):
                settings = self.settings(window=request.window, confirm=request.confirm,
                                         pre_erase=request.pre_erase,
                                         slot_limit=request.slot_limit)
                outcome = await self._engine(address, data, lambda: access.connect_smp(address),
                                             settings, on_progress).run()
                report = _report(outcome)
                if outcome.result is OtaResult.SUCCEEDED:
                    report = await self._after_reboot(address, access, report)
        log.info("ota_done", address=address, result=report.result, reason=report.reason,
                 previous_version=previous, firmware_revision=report.firmware_revision)
        return report

    async def _after_reboot(self, address: str, access: ControllerAccess,
                            report: OtaReport) -> OtaReport:
        """Read Device Information again; when the controller's attributes no longer fit what
        BlueZ cached (Service Changed missed across the image change), refresh the cache once
        and read again. A revision that differs from the image version is a warning only."""
        refreshed = False
        revision: str | None = None
        for attempt in range(2):
            try:
                revision = await self._read_revision(access, address)
                break
            except BridgeError as exc:
                kind = classify(exc).kind
                if kind is not FailureClass.GATT_MISMATCH or attempt:
                    log.warning("ota_revision_unreadable", address=address,
                                failure_class=kind.value, error=str(exc))
                    break
                log.warning("ota_gatt_cache_stale", address=address, error=str(exc),
                            action="refresh_gatt_cache")
                await access.refresh_gatt_cache(address)
                refreshed = True
        matches = None if revision is None else _same_version(revision, report.version)
        if matches is False:
            log.warning("ota_revision_mismatch", address=address, firmware_revision=revision,
                        image_version=report.version)
        if revision is not None:
            self.registry.seen(address, firmware_version=revision)
        return report.model_copy(update={"firmware_revision": revision,
                                         "revision_matches": matches,
                                         "gatt_cache_refreshed": refreshed})

    @staticmethod
    async def _read_revision(access: ControllerAccess, address: str) -> str:
        link = await access.connect_gatt(address)
        try:
            # The irrigation service must read and decode as before: a characteristic that is
            # missing or answers in another layout means the cached database is stale.
            SystemStatus.decode(await link.read(uuids.SYSTEM_STATUS))
            return (await link.read(uuids.DIS_FIRMWARE_REVISION)).decode("utf-8", "replace")
        finally:
            await link.disconnect()

    # ---- a serial or UDP endpoint ----------------------------------------------------------

    async def update_endpoint(self, device: str, data: bytes, settings: OtaSettings,
                              connect: Connect, on_progress: ProgressFn | None = None
                              ) -> OtaReport:
        """An SMP endpoint that is not a paired controller (serial console, UDP): no GATT to
        gate on or to re-read, the same engine, sessions and one-at-a-time rule."""
        async with self._radio(device):
            outcome = await self._engine(device, data, connect, settings, on_progress).run()
        report = _report(outcome)
        log.info("ota_done", device=device, result=report.result, reason=report.reason)
        return report

    # ---- plumbing ----------------------------------------------------------------------------

    def _engine(self, device: str, data: bytes, connect: Connect, settings: OtaSettings,
                on_progress: ProgressFn | None) -> FirmwareUpdate:
        return FirmwareUpdate(connect, data, device=device, settings=settings,
                              store=FileSessionStore(self.sessions_dir),
                              on_progress=on_progress)

    @property
    def sessions_dir(self) -> Path:
        return self.config.ota_sessions_dir

    @contextlib.asynccontextmanager
    async def _radio(self, radio: str) -> AsyncIterator[None]:
        """One update per radio: an asyncio lock for this process, an flock for the others
        (the CLI's direct path beside a daemon, two CLIs)."""
        lock = self._locks.setdefault(radio, asyncio.Lock())
        if lock.locked():
            raise ControllerBusy(f"another firmware update is using {radio}")
        async with lock:
            self.sessions_dir.mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() else "_" for c in radio)
            fd = os.open(self.sessions_dir / f"{safe}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ControllerBusy(f"another process is updating firmware over {radio}"
                                         ) from None
                yield
            finally:
                os.close(fd)  # closing releases the flock


def _report(outcome: OtaOutcome) -> OtaReport:
    return OtaReport(result=outcome.result.value,
                     reason=outcome.reason.value if outcome.reason else None,
                     detail=outcome.detail, rc=outcome.rc, hash=outcome.image_hash,
                     version=outcome.version, uploaded_bytes=outcome.uploaded_bytes,
                     seconds=round(outcome.seconds, 3), skipped_upload=outcome.skipped_upload,
                     frames_lost=outcome.frames_lost, windows_resent=outcome.windows_resent,
                     reconnects=outcome.reconnects, window=outcome.window)


def _same_version(revision: str, version: str) -> bool:
    """DIS may say "3.1.0" or "v3.1.0" or "3.1.0+0" for the image version "3.1.0"."""
    clean = revision.strip().lstrip("vV").split("+")[0]
    return clean == version or clean.removesuffix(".0") == version.removesuffix(".0")

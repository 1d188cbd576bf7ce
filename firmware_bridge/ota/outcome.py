"""How a firmware update ended, and how it is going: typed values, never bare strings."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ConfirmPolicy(StrEnum):
    """Who confirms a new image once it runs (ota.md 5)."""

    SELF = "self"  # the firmware confirms itself after a good boot: wait for it
    EXPLICIT = "explicit"  # the gateway confirms as soon as the new image runs
    SELF_THEN_EXPLICIT = "self-then-explicit"  # wait, then confirm if the image is healthy


class OtaResult(StrEnum):
    SUCCEEDED = "succeeded"
    REVERTED = "reverted"
    FAILED = "failed"


class FailureReason(StrEnum):
    INVALID_IMAGE = "invalid_image"  # truncated, corrupted, hash mismatch, not bootable
    TOO_LARGE = "too_large"  # larger than the target slot can hold
    WRONG_BOARD = "wrong_board"  # built for other hardware
    BAD_SIGNATURE = "bad_signature"
    DEVICE_BUSY = "device_busy"  # a previous update is still unconfirmed (slot 1 is its revert)
    DEVICE_REJECTED = "device_rejected"  # the device answered with an SMP error rc
    PROTOCOL = "protocol"  # a reply that does not fit the protocol
    TRANSFER = "transfer"  # the upload could not be completed
    VERIFY_MISMATCH = "verify_mismatch"  # slot 1 does not hold exactly the image's hash
    REJECTED_BY_BOOTLOADER = "rejected_by_bootloader"  # MCUboot erased it at boot
    LINK_LOST = "link_lost"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # no contact after the reset within the window


class Phase(StrEnum):
    PREFLIGHT = "preflight"
    UPLOAD = "upload"
    VERIFY = "verify"
    TEST = "test"
    RESET = "reset"
    REBOOT_WAIT = "reboot_wait"
    CONFIRM = "confirm"
    DONE = "done"


@dataclass(frozen=True)
class Progress:
    phase: Phase
    offset: int
    total: int
    rate_bytes_per_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.offset / self.total if self.total else 0.0


@dataclass(frozen=True)
class OtaOutcome:
    result: OtaResult
    detail: str
    reason: FailureReason | None = None
    rc: int | None = None  # the device's SMP rc for DEVICE_REJECTED
    image_hash: str = ""
    version: str = ""
    uploaded_bytes: int = 0  # bytes sent on the air, resends included
    seconds: float = 0.0
    skipped_upload: bool = False
    # What the link cost: frames that never came back, windows sent again, connections made
    # again (upload and control phases), and the window the upload settled on.
    frames_lost: int = 0
    windows_resent: int = 0
    reconnects: int = 0
    window: int = 0


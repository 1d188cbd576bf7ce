"""What became of a command: device-reported failures are values, not exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class OutcomeStatus(StrEnum):
    CONFIRMED = "confirmed"  # the controller showed the effect (notification or re-read)
    QUEUED = "queued"  # accepted behind another task; it starts when that one ends
    REFUSED = "refused"  # ATT error on the write, or a Task Queue error report
    UNCONFIRMED = "unconfirmed"  # accepted, but the effect never showed within the timeout


class TaskQueueError(IntEnum):
    """Codes of a Task Queue error report (device-ble.md 5.5)."""

    QUEUE_EMPTY = 1
    NOTHING_TO_ACT_ON = 2
    BUSY_OR_NOT_OK = 3


@dataclass(frozen=True)
class CommandOutcome:
    status: OutcomeStatus
    detail: str
    att_code: int | None = None
    queue_error: TaskQueueError | int | None = None

    @property
    def ok(self) -> bool:
        return self.status in (OutcomeStatus.CONFIRMED, OutcomeStatus.QUEUED)

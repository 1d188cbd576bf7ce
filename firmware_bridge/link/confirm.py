"""When a command is confirmed: predicates over the state events a session emits, pure and
tested as a table. A command returns only once the controller showed its effect (device-ble.md
9.3); the Task Queue's write always succeeds, so its effect is read from what follows it."""

from __future__ import annotations

from collections.abc import Callable

from firmware_bridge.gatt.codec import CurrentTask, TaskQueue, TaskQueueCommand, TaskStatus
from firmware_bridge.link.state import StateEvent

EventPredicate = Callable[[StateEvent], bool]


def after(start: float, predicate: EventPredicate) -> EventPredicate:
    return lambda event: event.monotonic >= start and predicate(event)


def task_is(*statuses: TaskStatus) -> EventPredicate:
    return lambda e: isinstance(e.value, CurrentTask) and e.value.status in statuses


TASK_QUEUE_EFFECTS: dict[TaskQueueCommand, EventPredicate] = {
    TaskQueueCommand.NOOP: lambda e: isinstance(e.value, TaskQueue),
    TaskQueueCommand.START_NEXT: task_is(TaskStatus.RUNNING),
    TaskQueueCommand.PAUSE: task_is(TaskStatus.PAUSED),
    TaskQueueCommand.RESUME: task_is(TaskStatus.RUNNING),
    TaskQueueCommand.CANCEL: lambda e: isinstance(e.value, CurrentTask) and e.value.idle,
    TaskQueueCommand.CLEAR_PENDING: lambda e: isinstance(e.value, TaskQueue)
    and not e.value.is_error_report and e.value.pending_count == 0,
}

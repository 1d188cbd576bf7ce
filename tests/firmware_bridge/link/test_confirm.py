"""When a Task Queue command counts as done, as a table: the event that confirms it and the
ones that do not (device-ble.md 9.3: the write itself always succeeds)."""

from __future__ import annotations

import pytest

from firmware_bridge.gatt.codec import NO_CHANNEL, CurrentTask, TaskQueue, TaskQueueCommand
from firmware_bridge.link.confirm import TASK_QUEUE_EFFECTS, after
from firmware_bridge.link.state import Field, Source, StateEvent, Value


def task(channel: int, status: int) -> CurrentTask:
    return CurrentTask(channel, 0, 0, 300, 10, 0, status)


def queue(pending: int, task_type: int = 0) -> TaskQueue:
    return TaskQueue(pending, 0, 0, task_type, 0)


def event(value: Value, monotonic: float = 10.0) -> StateEvent:
    field = Field.CURRENT_TASK if isinstance(value, CurrentTask) else Field.TASK_QUEUE
    return StateEvent("A", field, value, Source.NOTIFY, 0.0, monotonic)


@pytest.mark.parametrize(("command", "value", "confirmed"), [
    (TaskQueueCommand.START_NEXT, task(2, 1), True),
    (TaskQueueCommand.START_NEXT, task(2, 2), False),
    (TaskQueueCommand.PAUSE, task(2, 2), True),
    (TaskQueueCommand.PAUSE, task(2, 1), False),
    (TaskQueueCommand.RESUME, task(2, 1), True),
    (TaskQueueCommand.CANCEL, task(NO_CHANNEL, 0), True),
    (TaskQueueCommand.CANCEL, task(2, 1), False),
    (TaskQueueCommand.CLEAR_PENDING, queue(0), True),
    (TaskQueueCommand.CLEAR_PENDING, queue(2), False),
    (TaskQueueCommand.CLEAR_PENDING, queue(0, TaskQueue.ERROR_FRAME), False),
    (TaskQueueCommand.NOOP, queue(3), True),
    (TaskQueueCommand.NOOP, task(2, 1), False),
])
def test_what_confirms_a_task_queue_command(command: TaskQueueCommand, value: Value,
                                            confirmed: bool) -> None:
    assert TASK_QUEUE_EFFECTS[command](event(value)) is confirmed


def test_an_event_from_before_the_command_confirms_nothing() -> None:
    predicate = after(20.0, TASK_QUEUE_EFFECTS[TaskQueueCommand.START_NEXT])
    assert not predicate(event(task(2, 1), monotonic=19.9))
    assert predicate(event(task(2, 1), monotonic=20.0))

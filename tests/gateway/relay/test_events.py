"""Events read off two successive controller states (a table), and the snapshot's size."""

from __future__ import annotations

import json

import pytest

from gateway.ops.models import QueueView
from gateway.relay.events import Watering, derive, snapshot_data
from tests.helpers.builders import state

NOW = 100.0


@pytest.mark.parametrize(("before", "after", "watering", "expected"), [
    (None, state(), None, ["controller_reachable"]),
    (None, state(fresh=False), None, []),
    (state(), state(fresh=False), None, ["controller_unreachable"]),
    (state(fresh=False), state(), None, ["controller_reachable"]),
    (state(), state(task_ch=3), None, ["watering_started"]),
    (state(task_ch=3), state(task_ch=3, volume=10), Watering(3, 90.0), []),
    (state(task_ch=3), state(), Watering(3, 40.0, 700), ["watering_finished"]),
    (state(task_ch=3), state(task_ch=4), Watering(3, 40.0), ["watering_finished",
                                                             "watering_started"]),
    (state(), state(alarm=1), None, ["alarm_raised"]),
    (state(alarm=1), state(alarm=1), None, []),
    (state(alarm=1), state(), None, ["alarm_cleared"]),
])
def test_derived_events(before: object, after: object, watering: Watering | None,
                        expected: list[str]) -> None:
    events, _ = derive(before, after, watering, NOW)  # type: ignore[arg-type]
    assert [e.type for e in events] == expected


def test_watering_finished_carries_volume_and_duration() -> None:
    events, left = derive(state(task_ch=3), state(), Watering(3, 40.0, 700), NOW)
    assert events[0].data == {"ch": 3, "volume_ml": 700, "duration_s": 60.0} and left is None


def test_queue_events() -> None:
    before = state().model_copy(update={"task_queue": QueueView(
        pending=0, completed=1, current_channel=None, at=1.0)})
    after = state().model_copy(update={"task_queue": QueueView(
        pending=2, completed=2, current_channel=None, error=3, at=2.0)})
    events, _ = derive(before, after, None, NOW)
    assert [e.type for e in events] == ["task_queued", "task_done", "task_failed"]


def test_snapshot_is_small() -> None:
    data = snapshot_data(state(task_ch=1, volume=10, alarm=1))
    assert len(json.dumps(data)) < 2048  # cloud-api.md 11 P2: data <= 8 KiB an item

"""Builders of the values tests feed the code: a controller's state as the feed hands it to a
relay."""

from __future__ import annotations

from gateway.ops.models import AlarmView, ControllerState, LinkState, TaskView, ValveState


def state(*, task_ch: int | None = None, volume: int = 0, alarm: int | None = None,
          fresh: bool = True) -> ControllerState:
    task = None if task_ch is None else TaskView(
        channel=task_ch, mode="duration", status="running", target=300, current=10,
        total_volume_ml=volume, at=1.0)
    return ControllerState(
        address="C0:FF:EE:00:00:01", firmware_version="3.1.0", link=LinkState.CONNECTED,
        fresh=fresh, updated_at=1.0, age_s=0.0, last_failure=None, decode_problems=0,
        valves=[ValveState(channel=c, open=c == task_ch, name=None, at=1.0) for c in range(8)],
        system_status=None, flow=None,
        alarm=None if alarm is None else AlarmView(
            code=alarm, name="NO_FLOW", active=True, healed=False, data=1, device_timestamp=5,
            at=1.0),
        current_task=task, task_queue=None)

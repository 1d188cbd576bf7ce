"""The state store: flow in the controller's own calibration, and freshness from the time a
value arrived, never re-stamped."""

from __future__ import annotations

from dataclasses import replace

from firmware_bridge.gatt.codec import FlowSensor
from firmware_bridge.gatt.configuration import SystemConfig
from firmware_bridge.gatt.units import PulsesPerLitre
from firmware_bridge.link.state import Field, Source, StateEvent
from gateway.store.state import StateStore
from tests.helpers.golden import V1, V19

ADDRESS = "C0:FF:EE:00:00:00"


def event(field: Field, value: object, at: float) -> StateEvent:
    return StateEvent(ADDRESS, field, value, Source.NOTIFY, at, at)  # type: ignore[arg-type]


def test_flow_uses_the_controllers_calibration() -> None:
    now = [1000.0]
    store = StateStore(stale_after_s=10, clock=lambda: now[0])
    store.apply(event(Field.FLOW, FlowSensor(25), 1000.0))
    flow = store.snapshot(ADDRESS).flow
    assert flow is not None and flow.litres_per_minute == 2.0  # 25 * 60 / 750
    calibrated = replace(SystemConfig.decode(V19), flow_calibration=PulsesPerLitre(500))
    store.apply(event(Field.SYSTEM_CONFIG, calibrated, 1000.0))
    flow = store.snapshot(ADDRESS).flow
    assert flow is not None and flow.litres_per_minute == 3.0  # 25 * 60 / 500


def test_freshness_ages_without_restamping() -> None:
    now = [1000.0]
    store = StateStore(stale_after_s=10, clock=lambda: now[0])
    assert not store.fresh(ADDRESS)  # nothing known is not fresh
    from firmware_bridge.gatt.codec import BulkSync
    store.apply(event(Field.BULK, BulkSync.decode(V1), 1000.0))
    now[0] = 1009.0
    assert store.fresh(ADDRESS)
    now[0] = 1011.0
    state = store.snapshot(ADDRESS)
    assert state.fresh is False and state.updated_at == 1000.0
    assert state.age_s == 11.0

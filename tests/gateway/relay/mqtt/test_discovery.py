"""Home Assistant discovery payloads: golden files, the rules HA enforces that we can check
without it, and every value template rendered with Jinja2 (HA's template engine) against the
state the relay really publishes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jinja2.sandbox
import pytest

from gateway.ops.models import EnvironmentView
from gateway.relay.mqtt.commands import COMMAND_TTL_S
from gateway.relay.mqtt.discovery import (
    ControllerInfo,
    controller_messages,
    gateway_messages,
)
from gateway.relay.mqtt.topics import Topics
from tests.helpers.builders import state

GOLDEN = Path(__file__).parent / "golden"
TOPICS = Topics("autowatering", "gw1")
INFO = ControllerInfo(node="100001", address="C0:FF:EE:00:00:01", serial="100001",
                      firmware_version="3.1.0", channels=8, channel_names={0: "Lawn"},
                      has_environment=True, has_rain=True)
# The platforms this relay uses, and the device classes HA accepts for them (homeassistant
# components' DEVICE_CLASSES, for the ones we use).
DEVICE_CLASSES = {"valve": {"water", "gas"},
                  "sensor": {"volume_flow_rate", "water", "timestamp", "signal_strength",
                             "temperature", "humidity", "atmospheric_pressure", "precipitation",
                             "precipitation_intensity"},
                  "binary_sensor": {"problem", "connectivity"}, "update": {"firmware"}}


def check_golden(name: str, value: Any) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if os.environ.get("AWGW_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed; AWGW_UPDATE_GOLDEN=1 to accept"


def test_device_discovery_matches_its_golden_file() -> None:
    ((topic, payload),) = controller_messages(INFO, TOPICS, "homeassistant", "device")
    assert topic == "homeassistant/device/autowatering_100001/config"
    check_golden("controller_device", payload)
    ((gw_topic, gw_payload),) = gateway_messages(TOPICS, "homeassistant", "device")
    assert gw_topic == "homeassistant/device/autowatering_gateway_gw1/config"
    check_golden("gateway_device", gw_payload)


def test_entity_discovery_has_one_message_per_entity() -> None:
    device = controller_messages(INFO, TOPICS, "homeassistant", "device")[0][1]
    entities = controller_messages(INFO, TOPICS, "homeassistant", "entity")
    assert len(entities) == len(device["components"])
    for topic, payload in entities:
        platform = topic.split("/")[1]
        assert topic.startswith(f"homeassistant/{platform}/autowatering_100001/")
        assert "platform" not in payload and payload["device"] == device["device"]
        assert payload["availability_mode"] == "all"


def test_payloads_keep_home_assistants_rules() -> None:
    payload = controller_messages(INFO, TOPICS, "homeassistant", "device")[0][1]
    ids = [c["unique_id"] for c in payload["components"].values()]
    assert len(ids) == len(set(ids))
    assert [a["topic"] for a in payload["availability"]] == [
        "autowatering/gateway/gw1/availability", "autowatering/gateway/gw1/radio",
        "autowatering/100001/availability"]
    for key, component in payload["components"].items():
        platform = component["platform"]
        if "device_class" in component:
            assert component["device_class"] in DEVICE_CLASSES[platform], key
        for field, value in component.items():
            if field.endswith("topic"):
                assert value.startswith("autowatering/") and "+" not in value, (key, field)
        if platform == "valve":
            assert not component["reports_position"] and component["payload_open"] == "OPEN"
        if platform == "event":
            assert component["event_types"]
    assert payload["components"]["valve_0"]["name"] == "Lawn"
    assert payload["components"]["valve_1"]["name"] == "Zone 2"


def published_state(**kw: Any) -> dict[str, Any]:
    """What the relay publishes on <node>/state (MqttRelay._publish_state)."""
    env = kw.pop("env", None)
    payload = state(**kw).model_copy(update={"environment": env}).model_dump(mode="json")
    payload["updated_at_iso"] = "2026-12-01T10:00:00.000+00:00"
    payload["rssi"] = -60
    return payload


def render(template: str, value_json: dict[str, Any]) -> str:
    # HA renders in a sandbox with these basics; our templates need nothing more.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment()
    return env.from_string(template).render(value_json=value_json).strip()


@pytest.mark.parametrize(("kw", "expected"), [
    ({}, {"valve_2": "closed", "flow": "None", "task_volume": "0", "task": "idle",
          "alarm": "OFF", "status": "None", "link": "connected", "rssi": "-60",
          "last_seen": "2026-12-01T10:00:00.000+00:00"}),
    ({"task_ch": 2, "volume": 750, "alarm": 1}, {
        "valve_2": "open", "valve_3": "closed", "task_volume": "0.75",
        "task": "zone 3 running", "alarm": "ON", "temperature": "None", "rain_today": "None"}),
    ({"env": EnvironmentView(temperature_c=-3.5, humidity_pct=80.0, pressure_hpa=1001.5,
                             at=1.0)}, {"temperature": "-3.5", "humidity": "80.0",
                                        "pressure": "1001.5"}),
])
def test_every_value_template_renders_against_the_published_state(
        kw: dict[str, Any], expected: dict[str, str]) -> None:
    payload = controller_messages(INFO, TOPICS, "homeassistant", "device")[0][1]
    value = published_state(**kw)
    rendered = {key: render(c["value_template"], value)
                for key, c in payload["components"].items() if "value_template" in c}
    for key, text in expected.items():
        assert rendered[key] == text, key
    attributes = json.loads(render(payload["components"]["alarm"]["json_attributes_template"],
                                   value))
    assert isinstance(attributes, dict)
    assert attributes.get("code") == kw.get("alarm")


def test_sensors_the_controller_lacks_are_not_offered() -> None:
    bare = ControllerInfo(node="100001", address="C0:FF:EE:00:00:01", serial="100001",
                          firmware_version="3.1.0", channels=8, channel_names={})
    components = controller_messages(bare, TOPICS, "homeassistant", "device")[0][1][
        "components"]
    assert not {"temperature", "humidity", "pressure", "rain_today"} & set(components)


def test_home_assistant_is_asked_to_let_its_commands_expire() -> None:
    # Issue 18 item 3: Home Assistant (2026.x, MQTT 5) sets an MQTT 5 message expiry on the
    # commands of entities that ask for one, so the broker never hands an hour-old OPEN to a
    # gateway. Asked per entity, where HA releases before it drop the unknown key; never on the
    # run time, which HA publishes retained as the setting itself.
    payload = controller_messages(INFO, TOPICS, "homeassistant", "device")[0][1]
    for key, component in payload["components"].items():
        if "command_topic" in component and component["platform"] != "number":
            assert component["message_expiry_interval"] == COMMAND_TTL_S, key
        else:
            assert "message_expiry_interval" not in component, key
    assert "message_expiry_interval" not in payload  # the device root is a closed schema

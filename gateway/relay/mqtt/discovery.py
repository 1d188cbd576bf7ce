"""Home Assistant MQTT discovery payloads (pure): what a controller and the gateway look like to
Home Assistant. ``device_discovery`` gives one retained message per device (device-based
discovery, Home Assistant 2024.11+); ``entity_discovery`` the same entities one message each,
for older Home Assistant. An empty retained payload on the same topics removes them.

Every controller entity is available only when all of: the gateway is online, its radio is up,
and the controller is reachable with fresh state (``availability_mode: all``). State comes from
the controller's retained state topic (the typed ControllerState as JSON), so Home Assistant
and `awgw state --json` read the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.relay.mqtt.commands import COMMAND_TTL_S
from gateway.relay.mqtt.topics import OFFLINE, ONLINE, Topics

MANUFACTURER = "AutoWatering"
ORIGIN = {"name": "autowatering-gateway", "sw_version": "0.1.0",
          "support_url": "https://github.com/AlexMihai1804/AutoWatering"}
# None renders as "None", which Home Assistant's MQTT entities read as "unknown".
NONE = "None"


@dataclass(frozen=True)
class ControllerInfo:
    node: str
    address: str
    serial: str | None
    firmware_version: str | None
    channels: int
    channel_names: dict[int, str]
    has_environment: bool = False
    has_rain: bool = False


# Home Assistant (2026.x on MQTT 5) sets this message expiry on the commands of an entity that
# asks for it, so the broker drops an OPEN it could not deliver in time; older releases drop
# the unknown key. Per entity only: the device root's schema is closed in those releases.
EXPIRES = {"message_expiry_interval": COMMAND_TTL_S}


def _device_id(node: str) -> str:
    return f"autowatering_{node}"


def gateway_device_id(gateway_id: str) -> str:
    return f"autowatering_gateway_{gateway_id}"


def _availability(topics: Topics, node: str | None) -> list[dict[str, str]]:
    levels = [topics.gateway_availability, topics.radio]
    if node is not None:
        levels.append(topics.availability(node))
    return [{"topic": t, "payload_available": ONLINE, "payload_not_available": OFFLINE}
            for t in levels]


def controller_components(info: ControllerInfo, topics: Topics) -> dict[str, dict[str, Any]]:
    node = info.node
    state = topics.state(node)
    uid = _device_id(node)
    components: dict[str, dict[str, Any]] = {}
    for ch in range(info.channels):
        label = info.channel_names.get(ch) or f"Zone {ch + 1}"
        components[f"valve_{ch}"] = {
            "platform": "valve", "unique_id": f"{uid}_valve_{ch}", "name": label,
            "device_class": "water", "command_topic": topics.valve_set(node, ch),
            "payload_open": "OPEN", "payload_close": "CLOSE", "state_topic": state,
            "value_template": (f"{{{{ 'open' if value_json.valves[{ch}].open "
                               "else 'closed' }}"),
            "reports_position": False, "optimistic": False, "qos": 1, **EXPIRES}
        components[f"minutes_{ch}"] = {
            "platform": "number", "unique_id": f"{uid}_minutes_{ch}",
            "name": f"{label} run time", "command_topic": topics.minutes_set(node, ch),
            "state_topic": topics.minutes(node, ch), "min": 1, "max": 255, "step": 1,
            "mode": "box", "unit_of_measurement": "min", "entity_category": "config",
            "icon": "mdi:timer-outline", "retain": True, "qos": 1}
    components["flow"] = {
        "platform": "sensor", "unique_id": f"{uid}_flow", "name": "Flow rate",
        "device_class": "volume_flow_rate", "unit_of_measurement": "L/min",
        "state_class": "measurement", "state_topic": state, "suggested_display_precision": 2,
        "value_template": "{{ value_json.flow.litres_per_minute if value_json.flow "
                          f"else '{NONE}' }}}}"}
    components["task_volume"] = {
        "platform": "sensor", "unique_id": f"{uid}_task_volume", "name": "Watered this task",
        "device_class": "water", "unit_of_measurement": "L",
        "state_class": "total_increasing", "state_topic": state,
        "suggested_display_precision": 2,
        "value_template": "{{ (value_json.current_task.total_volume_ml / 1000) "
                          "if value_json.current_task else 0 }}"}
    components["status"] = {
        "platform": "sensor", "unique_id": f"{uid}_status", "name": "System status",
        "state_topic": state, "icon": "mdi:information-outline",
        "value_template": "{{ value_json.system_status.name if value_json.system_status "
                          f"else '{NONE}' }}}}"}
    components["task"] = {
        "platform": "sensor", "unique_id": f"{uid}_task", "name": "Current task",
        "state_topic": state, "icon": "mdi:sprinkler-variant",
        "value_template": "{% set t = value_json.current_task %}{{ 'idle' if not t else "
                          "'zone ' ~ (t.channel + 1) ~ ' ' ~ t.status }}"}
    components["alarm"] = {
        "platform": "binary_sensor", "unique_id": f"{uid}_alarm", "name": "Alarm",
        "device_class": "problem", "state_topic": state,
        "value_template": "{{ 'ON' if value_json.alarm and value_json.alarm.active "
                          "else 'OFF' }}",
        "json_attributes_topic": state,
        "json_attributes_template": "{{ (value_json.alarm or {}) | tojson }}"}
    components["watering_event"] = {
        "platform": "event", "unique_id": f"{uid}_watering_event", "name": "Watering",
        "state_topic": topics.event(node, "watering_finished"),
        "event_types": ["watering_finished"], "icon": "mdi:water-check"}
    components["alarm_event"] = {
        "platform": "event", "unique_id": f"{uid}_alarm_event", "name": "Alarm raised",
        "state_topic": topics.event(node, "alarm_raised"), "event_types": ["alarm_raised"],
        "icon": "mdi:alert"}
    components["link"] = {
        "platform": "sensor", "unique_id": f"{uid}_link", "name": "Link",
        "state_topic": state, "entity_category": "diagnostic",
        "value_template": "{{ value_json.link }}"}
    components["last_seen"] = {
        "platform": "sensor", "unique_id": f"{uid}_last_seen", "name": "Last refreshed",
        "device_class": "timestamp", "state_topic": state, "entity_category": "diagnostic",
        "value_template": f"{{{{ value_json.updated_at_iso or '{NONE}' }}}}"}
    components["rssi"] = {
        "platform": "sensor", "unique_id": f"{uid}_rssi", "name": "Signal strength",
        "device_class": "signal_strength", "unit_of_measurement": "dBm",
        "state_class": "measurement", "state_topic": state, "entity_category": "diagnostic",
        "enabled_by_default": False,
        "value_template": f"{{{{ value_json.rssi if value_json.rssi is not none else "
                          f"'{NONE}' }}}}"}
    components["radio"] = {
        "platform": "sensor", "unique_id": f"{uid}_radio", "name": "Radio",
        "icon": "mdi:access-point", "state_topic": state, "entity_category": "diagnostic",
        "value_template": f"{{{{ value_json.radio or '{NONE}' }}}}"}
    if info.has_environment:
        for key, name, device_class, unit, field in (
                ("temperature", "Temperature", "temperature", "°C", "temperature_c"),
                ("humidity", "Humidity", "humidity", "%", "humidity_pct"),
                ("pressure", "Pressure", "atmospheric_pressure", "hPa", "pressure_hpa")):
            components[key] = {
                "platform": "sensor", "unique_id": f"{uid}_{key}", "name": name,
                "device_class": device_class, "unit_of_measurement": unit,
                "state_class": "measurement", "state_topic": state,
                "value_template": f"{{{{ value_json.environment.{field} if "
                                  f"value_json.environment else '{NONE}' }}}}"}
    if info.has_rain:
        components["rain_today"] = {
            "platform": "sensor", "unique_id": f"{uid}_rain_today", "name": "Rain today",
            "device_class": "precipitation", "unit_of_measurement": "mm",
            "state_class": "total_increasing", "state_topic": state,
            "value_template": f"{{{{ value_json.rain.today_mm if value_json.rain else "
                              f"'{NONE}' }}}}"}
        components["rain_rate"] = {
            "platform": "sensor", "unique_id": f"{uid}_rain_rate", "name": "Rain rate",
            "device_class": "precipitation_intensity", "unit_of_measurement": "mm/h",
            "state_class": "measurement", "state_topic": state,
            "value_template": f"{{{{ value_json.rain.rate_mm_h if value_json.rain else "
                              f"'{NONE}' }}}}"}
    components["firmware"] = {
        "platform": "update", "unique_id": f"{uid}_firmware", "name": "Firmware",
        "device_class": "firmware", "state_topic": topics.update(node),
        "command_topic": topics.update_install(node), "payload_install": "install",
        "entity_category": "config", "qos": 1, **EXPIRES}
    components["resync"] = {
        "platform": "button", "unique_id": f"{uid}_resync", "name": "Re-sync",
        "command_topic": topics.resync(node), "payload_press": "PRESS",
        "entity_category": "config", "icon": "mdi:sync", "qos": 1, **EXPIRES}
    return components


def controller_device(info: ControllerInfo, topics: Topics) -> dict[str, Any]:
    device: dict[str, Any] = {
        "identifiers": [_device_id(info.node)], "name": f"AutoWatering {info.serial or info.node}",
        "manufacturer": MANUFACTURER, "model": "Irrigation controller",
        "connections": [["bluetooth", info.address.lower()]],
        "via_device": gateway_device_id(topics.gateway_id)}
    if info.firmware_version:
        device["sw_version"] = info.firmware_version
    if info.serial:
        device["serial_number"] = info.serial
    return device


def gateway_components(topics: Topics) -> dict[str, dict[str, Any]]:
    uid = gateway_device_id(topics.gateway_id)
    return {
        "radio": {"platform": "binary_sensor", "unique_id": f"{uid}_radio", "name": "Radio",
                  "device_class": "connectivity", "state_topic": topics.radio,
                  "payload_on": ONLINE, "payload_off": OFFLINE,
                  "entity_category": "diagnostic"},
        "outbox": {"platform": "sensor", "unique_id": f"{uid}_outbox", "name": "Outbox depth",
                   "state_topic": topics.gateway_state, "state_class": "measurement",
                   "unit_of_measurement": "items", "entity_category": "diagnostic",
                   "value_template": "{{ value_json.outbox_depth }}"},
    }


def gateway_device(topics: Topics) -> dict[str, Any]:
    return {"identifiers": [gateway_device_id(topics.gateway_id)],
            "name": "AutoWatering gateway", "manufacturer": MANUFACTURER,
            "model": "Home gateway", "sw_version": ORIGIN["sw_version"]}


def device_discovery(prefix: str, object_id: str, device: dict[str, Any],
                     components: dict[str, dict[str, Any]],
                     availability: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
    """(topic, payload) of one device-based discovery message."""
    return (f"{prefix}/device/{object_id}/config", {
        "device": device, "origin": ORIGIN, "components": components,
        "availability": availability, "availability_mode": "all", "qos": 1})


def entity_discovery(prefix: str, object_id: str, device: dict[str, Any],
                     components: dict[str, dict[str, Any]],
                     availability: list[dict[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """(topic, payload) per entity, for Home Assistant before device-based discovery."""
    messages = []
    for key, component in components.items():
        config = {k: v for k, v in component.items() if k != "platform"}
        config.update({"device": device, "origin": ORIGIN, "availability": availability,
                       "availability_mode": "all"})
        messages.append((f"{prefix}/{component['platform']}/{object_id}/{key}/config", config))
    return messages


def controller_messages(info: ControllerInfo, topics: Topics, prefix: str,
                        style: str) -> list[tuple[str, dict[str, Any]]]:
    components = controller_components(info, topics)
    device = controller_device(info, topics)
    availability = _availability(topics, info.node)
    object_id = _device_id(info.node)
    if style == "entity":
        return entity_discovery(prefix, object_id, device, components, availability)
    return [device_discovery(prefix, object_id, device, components, availability)]


def gateway_messages(topics: Topics, prefix: str, style: str) -> list[tuple[str, dict[str, Any]]]:
    device = gateway_device(topics)
    components = gateway_components(topics)
    availability = [{"topic": topics.gateway_availability, "payload_available": ONLINE,
                     "payload_not_available": OFFLINE}]
    object_id = gateway_device_id(topics.gateway_id)
    if style == "entity":
        return entity_discovery(prefix, object_id, device, components, availability)
    return [device_discovery(prefix, object_id, device, components, availability)]

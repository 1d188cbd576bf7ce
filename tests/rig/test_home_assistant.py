"""End to end against a REAL Home Assistant (the pinned release, ./dev.sh test installs it):
the daemon on the rig publishes discovery to mosquitto, Home Assistant builds the devices and
entities, and its services (valve, number, button, update) reach the virtual controller."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.broker import MosquittoBroker
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig
from tests.helpers.home_assistant import HomeAssistant, venv
from tests.helpers.mqtt import NODE, Listener, daemon

pytestmark = [
    pytest.mark.rig,
    pytest.mark.rig_options(controllers=1, template=ControllerConfig(0, 0, "", time_scale=60.0)),
    pytest.mark.skipif(venv() is None, reason="AWGW_HA_VENV not set: run ./dev.sh test"),
]
DEV = "autowatering_100001"
# Discovery, HA's platform set-up and the first retained states: seconds; a loaded machine
# more. An update over the rig's BLE link (60 kB), reboot and confirm: well under a minute.
SEEN_WITHIN_S = 60.0
UPDATED_WITHIN_S = 120.0
# entity id -> (device_class, unit) as Home Assistant must show them.
EXPECTED: dict[str, tuple[str | None, str | None]] = {
    f"valve.{DEV}_zone_1": ("water", None),
    f"number.{DEV}_zone_1_run_time": (None, "min"),
    f"sensor.{DEV}_flow_rate": ("volume_flow_rate", "L/min"),
    f"sensor.{DEV}_watered_this_task": ("water", "L"),
    f"sensor.{DEV}_system_status": (None, None),
    f"sensor.{DEV}_current_task": (None, None),
    f"binary_sensor.{DEV}_alarm": ("problem", None),
    f"event.{DEV}_watering": (None, None),
    f"event.{DEV}_alarm_raised": (None, None),
    f"sensor.{DEV}_link": (None, None),
    f"sensor.{DEV}_last_refreshed": ("timestamp", None),
    f"button.{DEV}_re_sync": (None, None),
    f"update.{DEV}_firmware": ("firmware", None),
    # The virtual controller has the environmental sensor and a rain gauge.
    f"sensor.{DEV}_temperature": ("temperature", "°C"),
    f"sensor.{DEV}_humidity": ("humidity", "%"),
    f"sensor.{DEV}_pressure": ("atmospheric_pressure", "hPa"),
    f"sensor.{DEV}_rain_today": ("precipitation", "mm"),
    f"sensor.{DEV}_rain_rate": ("precipitation_intensity", "mm/h"),
}


async def until(predicate: Any, limit_s: float) -> None:
    async with asyncio.timeout(limit_s):
        while not await predicate():  # noqa: ASYNC110 - Home Assistant is polled over REST
            await asyncio.sleep(0.5)


async def test_home_assistant_builds_the_devices_and_drives_the_controller(
        rig: Rig, tmp_path: Path) -> None:
    staged = tmp_path / "firmware" / "staged"
    staged.mkdir(parents=True)
    (staged / "100001.bin").write_bytes(make_image((9, 2, 0, 0), firmware_body("ha", 60_000)))
    async with MosquittoBroker() as broker, HomeAssistant(broker.port) as ha, \
            daemon(rig, tmp_path, broker.port, "keep",
                   # Still [mqtt]: the update entity's install is allowed when asked for.
                   'allowed_ops = ["valve_open", "valve_close", "refresh", "state", '
                   '"update_install"]\n[ota]\nself_confirm_wait_s = 2\n'), \
            Listener(broker.port, f"{NODE}/result") as results:

        async def shown(entity: str, state: str | None = None) -> bool:
            current = await ha.state(entity)
            return current is not None and current["state"] != "unavailable" and (
                state is None or current["state"] == state)

        await until(lambda: shown(f"valve.{DEV}_zone_1", "closed"), SEEN_WITHIN_S)
        await until(lambda: shown(f"update.{DEV}_firmware", "on"), SEEN_WITHIN_S)

        # Every entity on the controller's device, with the right class and unit.
        device = await ha.template(f"{{{{ device_id('valve.{DEV}_zone_1') }}}}")
        entities = json.loads(await ha.template(
            f"{{{{ device_entities('{device}') | tojson }}}}"))
        states = await ha.states()
        for entity, (device_class, unit) in EXPECTED.items():
            assert entity in entities, entity
            attributes = states[entity]["attributes"]
            assert attributes.get("device_class") == device_class, entity
            assert attributes.get("unit_of_measurement") == unit, entity
        assert len([e for e in entities if e.startswith("valve.")]) == 8
        assert states[f"sensor.{DEV}_temperature"]["state"] == "21.5"  # the sim's reading
        assert states[f"binary_sensor.{DEV}_alarm"]["state"] == "off"

        async def attr(name: str) -> str:
            return await ha.template(f"{{{{ device_attr('{device}', '{name}') }}}}")

        assert await attr("manufacturer") == "AutoWatering"
        assert await attr("model") == "Irrigation controller"
        assert await attr("sw_version") == "3.1.0"
        gateway = await ha.template("{{ device_id('binary_sensor."
                                    "autowatering_gateway_radio') }}")
        assert await attr("via_device_id") == gateway

        # Services reach the controller.
        await ha.call("number", "set_value", entity_id=f"number.{DEV}_zone_3_run_time",
                      value=2)
        await until(lambda: shown(f"number.{DEV}_zone_3_run_time", "2"), SEEN_WITHIN_S)
        await ha.call("valve", "open_valve", entity_id=f"valve.{DEV}_zone_3")

        async def zone_3(is_open: bool) -> bool:
            on_device = bool((await rig.status(0))["valve_states"] & (1 << 2))
            return on_device == is_open and await shown(f"valve.{DEV}_zone_3",
                                                        "open" if is_open else "closed")

        await until(lambda: zone_3(True), SEEN_WITHIN_S)
        await ha.call("valve", "close_valve", entity_id=f"valve.{DEV}_zone_3")
        await until(lambda: zone_3(False), SEEN_WITHIN_S)
        await ha.call("button", "press", entity_id=f"button.{DEV}_re_sync")

        async def replied(op: str) -> bool:
            return any(json.loads(p).get("op") == op and json.loads(p)["ok"]
                       for p in results.on(f"{NODE}/result"))

        await until(lambda: replied("refresh"), SEEN_WITHIN_S)

        # The update entity installs the staged image, with progress, to the new version.
        await ha.call("update", "install", entity_id=f"update.{DEV}_firmware")

        async def installed() -> bool:
            current = await ha.state(f"update.{DEV}_firmware")
            return bool(current and current["attributes"].get("installed_version") == "9.2.0"
                        and current["state"] == "off")

        await until(installed, UPDATED_WITHIN_S)
        assert await replied("update_install")
        status = await rig.status(0)
        assert any(i["slot"] == 0 and i["version"] == "9.2.0" for i in status["images"])
        assert "Skipping pip installation" in ha.log.read_text()  # the log is the right one
        assert ha.problems() == []

"""The MQTT relay through the daemon, on the rig, against a real mosquitto: a watering started
at the controller reaches MQTT within 1 s on a kept link and within one refresh period on a
shared one; Home Assistant's valve command opens the zone on the controller and is confirmed;
a controller powered off turns unavailable within the stale limit and back when it returns."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.broker import MosquittoBroker
from gateway.sim.rig import Rig
from tests.helpers.mqtt import NODE, REFRESH_S, Listener, daemon, publish

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(controllers=1)]
# Kept link: the valve notification crosses the link model (~30 ms) and the feed settles 50 ms;
# the bound. Shared link: the next visit, within the refresh period, plus a connect.
KEPT_WITHIN_S = 1.0
SHARED_WITHIN_S = REFRESH_S + 8.0
# The stale limit is twice the refresh period (StateStore), and the feed ticks every 5 s.
STALE_WITHIN_S = 2 * REFRESH_S + 5.0 + 5.0


def state_of(listener: Listener) -> dict[str, Any] | None:
    seen = listener.on(f"{NODE}/state")
    return json.loads(seen[-1]) if seen else None


def valve_open(listener: Listener, channel: int) -> bool:
    current = state_of(listener)
    return bool(current and current["valves"][channel]["open"])


async def wait(predicate: Any, limit_s: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - polled record
            await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize(("policy", "within_s"), [("keep", KEPT_WITHIN_S),
                                                  ("share", SHARED_WITHIN_S)])
async def test_a_watering_at_the_controller_reaches_mqtt(rig: Rig, tmp_path: Path,
                                                         policy: str, within_s: float) -> None:
    async with MosquittoBroker() as broker, daemon(rig, tmp_path, broker.port, policy), \
            Listener(broker.port, f"{NODE}/#") as mqtt:
        await mqtt.until(lambda: bool((state_of(mqtt) or {}).get("fresh")))
        if policy == "keep":
            await mqtt.until(lambda: (state_of(mqtt) or {}).get("link") == "connected")
        await rig.water(0, 5, 2)
        took = await wait(lambda: valve_open(mqtt, 5), within_s + 5.0)
        assert took <= within_s, f"{policy}: {took:.2f} s"


async def test_home_assistants_valve_command_opens_the_zone(rig: Rig, tmp_path: Path) -> None:
    async with MosquittoBroker() as broker, daemon(rig, tmp_path, broker.port, "keep"), \
            Listener(broker.port, f"{NODE}/#") as mqtt:
        await mqtt.until(lambda: bool(mqtt.on(f"{NODE}/availability")))
        await publish(broker.port, f"{NODE}/minutes/2/set", "3")
        await asyncio.sleep(0.3)
        await publish(broker.port, f"{NODE}/valve/2/set", "OPEN")
        await mqtt.until(lambda: bool(mqtt.on(f"{NODE}/result")))
        reply = json.loads(mqtt.on(f"{NODE}/result")[-1])
        assert reply["ok"] and reply["result"]["status"] == "confirmed", reply
        await mqtt.until(lambda: valve_open(mqtt, 2))
        assert (await rig.status(0))["valve_states"] & (1 << 2)  # open on the controller


async def test_a_powered_off_controller_turns_unavailable_and_back(rig: Rig,
                                                                   tmp_path: Path) -> None:
    availability = f"{NODE}/availability"
    async with MosquittoBroker() as broker, daemon(rig, tmp_path, broker.port, "share"), \
            Listener(broker.port, f"{NODE}/#") as mqtt:
        await mqtt.until(lambda: mqtt.on(availability)[-1:] == [b"online"])
        await rig.fault(0, "power_loss")
        await wait(lambda: mqtt.on(availability)[-1:] == [b"offline"], STALE_WITHIN_S)
        await rig.fault(0, "power_restore")
        await wait(lambda: mqtt.on(availability)[-1:] == [b"online"], SHARED_WITHIN_S + 10)


async def test_a_killed_gateway_is_shown_offline_by_its_last_will(rig: Rig,
                                                                   tmp_path: Path) -> None:
    gateway = "autowatering/gateway/+/availability"
    async with MosquittoBroker() as broker, Listener(broker.port, gateway) as mqtt, \
            daemon(rig, tmp_path, broker.port, "share") as proc:
        await mqtt.until(lambda: [p for _, p, _ in mqtt.got][-1:] == [b"online"])
        proc.kill()  # no goodbye: only the broker's last will can tell
        # The socket closed without a DISCONNECT: the will goes out at once. A lost network
        # (nothing closes) takes the broker 1.5 keepalives (5 s here): the bound.
        await wait(lambda: [p for _, p, _ in mqtt.got][-1:] == [b"offline"], 1.5 * 5 + 5)

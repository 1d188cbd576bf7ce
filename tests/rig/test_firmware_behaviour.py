"""The firmware as it is (device-ble.md Δ21, Δ22, task queue error frames), reproduced by the
virtual controller and read correctly by the gateway: over raw GATT, and through
`awgw state --json` as a person would see it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient

from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import CurrentTask, TaskQueue, TaskQueueCommand, ValveControl
from gateway.sim.controller.device import TICK_S
from gateway.sim.controller.irrigation import NO_FLOW_DETECT_S, NO_FLOW_RETRY_S
from gateway.sim.rig import Rig
from tests.helpers.cli import FIRST, Cli

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(controllers=1)]
# The irrigation model's own times: NO_FLOW after NO_FLOW_DETECT_S without pulses, re-checked
# (and so healed) every NO_FLOW_RETRY_S; an alarm or fault shows within a model tick.
NO_FLOW_MODEL_S = NO_FLOW_DETECT_S + NO_FLOW_RETRY_S + TICK_S
HEAL_MODEL_S = NO_FLOW_RETRY_S + TICK_S
ALARM_MODEL_S = TICK_S
# A change shows in the first `awgw state` that starts after it, so a limit is the model's time
# plus this many reads. Reads are timed on the machine the test runs on (a process start and a
# BLE connect: ~2 s idle here, several times that on a loaded machine or a Pi).
READS_OF_SLACK = 3


class Reader:
    """Polls `awgw state --json` and knows what one poll costs here, now."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.read_s = 0.0

    async def state(self) -> dict[str, Any]:
        started = time.monotonic()
        state = await self.cli.run("state", FIRST, "--json")
        self.read_s = max(self.read_s, time.monotonic() - started)
        return dict(state)

    async def alarm_until(self, predicate: Any, model_s: float) -> dict[str, Any]:
        if not self.read_s:
            await self.state()
        async with asyncio.timeout(model_s + READS_OF_SLACK * self.read_s):
            while True:
                state = await self.state()
                if state["alarm"] is not None and predicate(state["alarm"]):
                    return dict(state["alarm"])
                await asyncio.sleep(0.5)


@pytest.fixture
def cli(rig: Rig, tmp_path: Path) -> Cli:
    return Cli(rig, tmp_path)


@pytest.fixture
def reader(cli: Cli) -> Reader:
    return Reader(cli)


async def gatt(address: str) -> BleakClient:
    client = BleakClient(address, bluez={"adapter": "hci0"}, timeout=10)
    await client.connect()
    return client


async def test_a_healed_no_flow_alarm_reads_inactive(rig: Rig, cli: Cli, reader: Reader) -> None:
    await cli.run("pair", FIRST, "--json")
    await rig.fault(0, "line_flow", channel=3, pps=0)  # a blocked line
    assert (await cli.run("valve", FIRST, "3", "open", "--minutes", "5", "--json"))["ok"]
    raised = await reader.alarm_until(lambda a: a["code"] == 1 and a["active"], NO_FLOW_MODEL_S)
    assert raised["name"] == "NO_FLOW" and raised["data"] >= 1 and not raised["healed"]
    await rig.fault(0, "line_flow", channel=3, pps=25)  # the line flows again
    healed = await reader.alarm_until(lambda a: a["healed"], HEAL_MODEL_S)
    # The firmware re-sends NO_FLOW with data 0: still code 1, but healed, not active.
    assert healed["code"] == 1 and healed["data"] == 0 and healed["active"] is False
    state = await cli.run("state", FIRST, "--json")
    assert state["system_status"]["name"] == "OK"


async def test_freeze_lockout_is_signed_and_its_clear_is_told_from_zero_degrees(
        rig: Rig, cli: Cli, reader: Reader) -> None:
    await cli.run("pair", FIRST, "--json")
    await rig.fault(0, "freeze", temperature_c_x10=-125)
    cold = await reader.alarm_until(lambda a: a["code"] == 3, ALARM_MODEL_S)
    assert cold["active"] and cold["temperature_c"] == -12.5 and cold["data"] == 65411
    await rig.fault(0, "thaw")
    cleared = await reader.alarm_until(lambda a: a["code"] == 3 and a["data"] == 0, ALARM_MODEL_S)
    assert cleared["active"] is False and cleared["healed"]
    await rig.fault(0, "freeze", temperature_c_x10=0)  # a real lockout at 0.0 °C
    zero = await reader.alarm_until(lambda a: a["code"] == 3 and a["active"], ALARM_MODEL_S)
    assert zero["data"] == 0 and zero["temperature_c"] == 0.0
    state = await cli.run("state", FIRST, "--json")
    assert state["system_status"]["name"] == "FREEZE_LOCKOUT"
    await rig.fault(0, "freeze", stale=1)
    stale = await reader.alarm_until(lambda a: a["sensor_stale"], ALARM_MODEL_S)
    assert stale["active"] and stale["temperature_c"] is None


async def test_an_unknown_alarm_code_is_relayed_as_unknown(rig: Rig, cli: Cli,
                                                           reader: Reader) -> None:
    await cli.run("pair", FIRST, "--json")
    await rig.raise_alarm(0, 42, 7)
    alarm = await reader.alarm_until(lambda a: a["code"] == 42, ALARM_MODEL_S)
    assert alarm["name"] == "UNKNOWN" and alarm["active"] and alarm["data"] == 7


async def test_valve_runs_longer_than_the_firmware_keeps_are_refused_before_writing(
        rig: Rig, cli: Cli, reader: Reader) -> None:
    await cli.run("pair", FIRST, "--json")
    refused = await cli.run("valve", FIRST, "2", "open", "--minutes", "300", expect=2)
    assert "1..255" in refused and "Δ21" in refused
    state = await cli.run("state", FIRST, "--json")
    assert state["current_task"] is None and state["task_queue"]["pending"] == 0


async def test_the_virtual_controller_wraps_minutes_as_the_firmware_does(rig: Rig) -> None:
    client = await gatt(rig.controllers[0].address)
    try:
        # What an app that trusts the 1..1440 validation would write: 1440 runs 160 minutes.
        await client.write_gatt_char(uuids.VALVE_CONTROL, ValveControl(2, 0, 1440).encode(),
                                     response=True)
        await asyncio.sleep(0.3)
        task = CurrentTask.decode(await client.read_gatt_char(uuids.CURRENT_TASK))
        assert task.channel_id == 2 and task.target_value == 160 * 60
        queue = TaskQueue.decode(await client.read_gatt_char(uuids.TASK_QUEUE))
        assert queue.current_value == 160
    finally:
        await client.disconnect()


async def test_task_queue_error_frame_keeps_the_running_channel(rig: Rig) -> None:
    client = await gatt(rig.controllers[0].address)
    frames: list[TaskQueue] = []
    try:
        await client.start_notify(uuids.TASK_QUEUE,
                                  lambda _c, d: frames.append(TaskQueue.decode(bytes(d))))
        await client.write_gatt_char(uuids.VALVE_CONTROL,
                                     ValveControl.duration_task(4, 5).encode(), response=True)
        await asyncio.sleep(0.3)
        # "Start next" with nothing queued while channel 4 waters: error 1, channel kept.
        await client.write_gatt_char(
            uuids.TASK_QUEUE, TaskQueue.command_frame(TaskQueueCommand.START_NEXT).encode(),
            response=True)
        await asyncio.sleep(0.3)
        errors = [f for f in frames if f.is_error_report]
        assert errors and errors[-1].error_code == 1 and errors[-1].current_channel == 4
    finally:
        await client.disconnect()

"""The MQTT relay against a real mosquitto started here: retained state and availability,
discovery, events through a broker outage (in order, once), and commands, good and bad."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_bridge.ota.outcome import Phase, Progress
from gateway.clock import Clock, LoopClock
from gateway.config import DEFAULT_MQTT_OPS, MqttConfig
from gateway.errors import ConfigError, ControllerBusy
from gateway.ops.health import CloudStatus, HubStatus
from gateway.ops.models import (
    Claim,
    ClaimResult,
    CommandResult,
    ControllerState,
    DeviceEntry,
    GetState,
    Ota,
    OtaReport,
    Pair,
    Refresh,
    Request,
    ScanEntry,
    Unclaim,
    Unpair,
    ValveClose,
    ValveOpen,
)
from gateway.ops.protocol import ProgressFn
from gateway.relay.events import DerivedEvent
from gateway.relay.mqtt.commands import COMMAND_TTL_S
from gateway.relay.mqtt.password import read_password
from gateway.relay.mqtt.relay import (
    BACKOFF_MAX_S,
    MAX_CONCURRENT_COMMANDS,
    MqttRelay,
    command_ttl_s,
    event_message,
)
from gateway.relay.mqtt.topics import Topics
from gateway.relay.offers import OfferBoard
from gateway.sim.broker import MosquittoBroker
from gateway.sim.images import firmware_body, make_image
from gateway.store.outbox import Outbox, StoredItem
from tests.helpers import cancel_and_wait, until
from tests.helpers.builders import state
from tests.helpers.fakes import VirtualClock
from tests.helpers.mqtt import Listener, publish

ADDRESS = "C0:FF:EE:00:00:01"
SERIAL = "100001"
PREFIX = "autowatering"
# Messages cross loopback in milliseconds; the relay's first reconnect waits its backoff
# (1-2 s here, the rng fixed at 1); a loaded machine gets several times that.
ARRIVES_WITHIN_S = 15.0


@dataclass
class FakeOps:
    """The typed operations, recording what the relay asked for."""

    asked: list[Request] = field(default_factory=list)
    busy: bool = False
    # Set: valve commands wait for it (a controller slow to answer, a queue behind it).
    hold: asyncio.Event | None = None

    async def _command(self, request: ValveOpen | ValveClose) -> CommandResult:
        self.asked.append(request)
        if self.hold is not None:
            await self.hold.wait()
        if self.busy:
            raise ControllerBusy(f"{request.address} is busy with a firmware update")
        return CommandResult(address=request.address, command=request.name, ok=True,
                             status="confirmed", detail="valve confirmed")

    async def valve_open(self, request: ValveOpen) -> CommandResult:
        return await self._command(request)

    async def valve_close(self, request: ValveClose) -> CommandResult:
        return await self._command(request)

    async def refresh(self, request: Refresh) -> ControllerState:
        self.asked.append(request)
        return state()

    async def state(self, request: GetState) -> ControllerState:
        self.asked.append(request)
        return state()

    async def scan(self) -> list[ScanEntry]:
        raise AssertionError("not asked")

    async def pair(self, request: Pair) -> DeviceEntry:
        raise AssertionError("not asked")

    async def unpair(self, request: Unpair) -> DeviceEntry:
        self.asked.append(request)
        raise AssertionError("not on the allow-list: never reached")

    async def devices(self) -> list[DeviceEntry]:
        raise AssertionError("not asked")

    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport:
        self.asked.append(request)
        for offset in (0, 30_000, 60_000):
            if on_progress is not None:
                on_progress(Progress(Phase.UPLOAD, offset, 60_000, 30_000.0, None))
            await asyncio.sleep(0.2)
        return OtaReport(result="succeeded", reason=None, detail="confirmed", rc=None, hash="",
                         version="9.2.0", uploaded_bytes=60_000, seconds=0.6,
                         skipped_upload=False, firmware_revision="9.2.0")

    async def cloud_status(self) -> CloudStatus:
        raise AssertionError("not asked")

    async def claim(self, request: Claim) -> ClaimResult:
        raise AssertionError("not asked")

    async def unclaim(self, request: Unclaim) -> ClaimResult:
        raise AssertionError("not asked")

    async def status(self) -> HubStatus:
        raise AssertionError("not asked")


@dataclass
class Setup:
    broker: MosquittoBroker
    relay: MqttRelay
    ops: FakeOps
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, clock: Clock | None = None) -> AsyncIterator[Setup]:
    async with MosquittoBroker() as broker:
        ops = FakeOps()
        config = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, keepalive_s=5)
        relay = MqttRelay(config, "gw1", Outbox(tmp_path / "mqtt.db", "gw1"), ops,
                          rng=lambda: 0.5, clock=clock, rssi_of=lambda _a: -71,
                          radio_of=lambda _a: "garden")
        task = asyncio.create_task(relay.run(), name="mqtt relay under test")
        try:
            async with asyncio.timeout(ARRIVES_WITHIN_S):
                while not relay.connected:  # noqa: ASYNC110 - the relay exposes a flag
                    await asyncio.sleep(0.02)
            yield Setup(broker, relay, ops, task)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_state_availability_and_discovery_are_retained(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        s.relay.observe(ADDRESS, SERIAL, state(task_ch=2, volume=40))
        node = f"{PREFIX}/{SERIAL}"
        await asyncio.sleep(0.5)
        async with Listener(s.broker.port, f"{PREFIX}/#", "homeassistant/#") as late:
            # Each of the listener's two subscriptions brings its own retained messages.
            await late.until(lambda: bool(late.on(f"{node}/state")) and bool(
                late.on("homeassistant/device/autowatering_100001/config")))
            shown = json.loads(late.on(f"{node}/state")[-1])
            assert shown["address"] == ADDRESS and shown["current_task"]["channel"] == 2
            # Home Assistant's diagnostics: the radio serving it and the best signal heard.
            assert (shown["radio"], shown["rssi"]) == ("garden", -71)
            assert late.on(f"{node}/availability") == [b"online"]
            assert late.on(f"{PREFIX}/gateway/gw1/availability") == [b"online"]
            assert late.on(f"{PREFIX}/gateway/gw1/radio") == [b"online"]
            config = json.loads(late.on("homeassistant/device/autowatering_100001/config")[-1])
            assert config["device"]["via_device"] == "autowatering_gateway_gw1"
            assert config["availability_mode"] == "all"
            assert {c["platform"] for c in config["components"].values()} >= {
                "valve", "number", "sensor", "binary_sensor", "event", "button"}
            s.relay.observe(ADDRESS, SERIAL, state(fresh=False))
            await late.until(lambda: late.on(f"{node}/availability")[-1:] == [b"offline"])
            published = s.relay.published_states
            ticked = state(fresh=False).model_copy(update={"age_s": 99.0})
            s.relay.observe(ADDRESS, SERIAL, ticked)  # a feed tick: only the age moved
            await asyncio.sleep(0.3)
            assert s.relay.published_states == published


class VirtualBackoff(VirtualClock):
    """Backoffs pass in virtual time; the relay's waits for news (its state tick) stay real, so
    a connected relay does not tick through virtual seconds at the speed of the event loop.
    Clearing ``going`` keeps a backoff from ending (its virtual time has passed) until the test
    sets it again:
    the test's own subscriber is on the broker before the relay comes back."""

    def __init__(self) -> None:
        super().__init__()
        self.going = asyncio.Event()
        self.going.set()

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        await self.going.wait()

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> bool:
        return await LoopClock().wait(event, timeout_s)


# A restart (the broker is back at once) and the 60 s outage, in virtual time: the
# relay's backoff reaches its cap meanwhile, so it is back within BACKOFF_MAX_S of the broker.
@pytest.mark.parametrize("outage_s", [1.0, 60.0])
async def test_events_survive_a_broker_outage_in_order_once(tmp_path: Path,
                                                            outage_s: float) -> None:
    clock = VirtualBackoff()
    async with running(tmp_path, clock) as s:
        topic = f"{PREFIX}/{SERIAL}/event/test"
        async with Listener(s.broker.port, topic) as before:
            for n in range(20):
                s.relay.record_event(SERIAL, DerivedEvent("test", {"n": n}))
            await before.until(lambda: len(before.on(topic)) == 20)
        await s.broker.stop()
        s.relay.observe(ADDRESS, SERIAL, state(task_ch=1))
        for n in range(20, 60):
            s.relay.record_event(SERIAL, DerivedEvent("test", {"n": n}))
        down_at = clock.now()
        # The outage passes in the relay's own backoffs (virtual time), not in the test's.
        await until(lambda: clock.now() - down_at >= outage_s and not s.relay.connected,
                    ARRIVES_WITHIN_S, "the outage passed")
        clock.going.clear()
        await s.broker.start()
        back_at = clock.now()
        async with Listener(s.broker.port, topic, f"{PREFIX}/{SERIAL}/state") as after:
            clock.going.set()
            await until(lambda: s.relay.connected, ARRIVES_WITHIN_S, "the relay reconnected")
            assert clock.now() - back_at <= BACKOFF_MAX_S
            assert outage_s < 2 or max(clock.waited) == pytest.approx(BACKOFF_MAX_S * 0.5)
            await after.until(lambda: len(after.on(topic)) >= 40)
            await asyncio.sleep(0.5)
            numbers = [json.loads(p)["n"] for p in after.on(topic)]
            assert numbers == list(range(20, 60))  # in order, once, nothing lost
            # The broker forgot its retained messages; the relay republished the current state.
            await after.until(lambda: bool(after.on(f"{PREFIX}/{SERIAL}/state")))
            assert json.loads(after.on(f"{PREFIX}/{SERIAL}/state")[-1])["current_task"][
                "channel"] == 1
        assert s.relay.connects >= 2


def last(s: Setup) -> Request:
    return s.ops.asked[-1]


async def _command(s: Setup, topic: str, payload: str | bytes) -> dict[str, Any]:
    result = f"{PREFIX}/{SERIAL}/result"
    async with Listener(s.broker.port, result) as replies:
        await publish(s.broker.port, topic, payload)
        await replies.until(lambda: bool(replies.on(result)))
        answer: dict[str, Any] = json.loads(replies.on(result)[0])
    return answer


async def test_commands_reach_the_typed_operations(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        s.relay.observe(ADDRESS, SERIAL, state())
        base = f"{PREFIX}/{SERIAL}"
        done = await _command(s, f"{base}/command", json.dumps(
            {"op": "valve_open", "channel": 2, "minutes": 5, "id": "a1"}))
        assert done["ok"] and done["id"] == "a1" and done["status"] == "done"
        assert last(s) == ValveOpen(address=ADDRESS, channel=2, minutes=5)
        await publish(s.broker.port, f"{base}/minutes/3/set", "7")
        await asyncio.sleep(0.3)
        await _command(s, f"{base}/valve/3/set", "OPEN")
        assert last(s) == ValveOpen(address=ADDRESS, channel=3, minutes=7)
        await _command(s, f"{base}/valve/4/set", "OPEN")
        assert last(s) == ValveOpen(address=ADDRESS, channel=4, minutes=10)
        await _command(s, f"{base}/valve/3/set", "CLOSE")
        assert last(s) == ValveClose(address=ADDRESS, channel=3)
        await _command(s, f"{base}/resync/press", "PRESS")
        assert last(s) == Refresh(address=ADDRESS)
        s.ops.busy = True
        busy = await _command(s, f"{base}/valve/3/set", "CLOSE")
        assert busy["status"] == "busy" and not busy["ok"]


@pytest.mark.parametrize(("payload", "status", "needle"), [
    ("{not json", "invalid", "Expecting"),
    ("[1, 2]", "invalid", "JSON object"),
    ('{"op": "valve_open", "channel": "two", "minutes": 5}', "invalid", "channel"),
    ('{"op": "valve_open", "channel": 2, "minutes": 300}', "invalid", "minutes"),
    ('{"op": "valve_open", "channel": 9, "minutes": 5}', "invalid", "channel"),
    ('{"op": "launch"}', "invalid", "op"),
    ('{"op": "unpair"}', "not_allowed", "allowed_ops"),
    ('{"op": "valve_close", "channel": 1, "address": "AA:BB:CC:DD:EE:FF"}', "invalid",
     "send no address"),
    ("x" * 5000, "invalid", "exceeds"),
])
async def test_bad_commands_get_an_error_reply_and_do_nothing(tmp_path: Path, payload: str,
                                                              status: str, needle: str) -> None:
    async with running(tmp_path) as s:
        s.relay.observe(ADDRESS, SERIAL, state())
        answer = await _command(s, f"{PREFIX}/{SERIAL}/command", payload)
        assert not answer["ok"] and answer["status"] == status and needle in answer["detail"]
        assert s.ops.asked == []


async def test_a_retained_command_is_never_executed(tmp_path: Path) -> None:
    async with MosquittoBroker() as broker:
        # Left on the broker by a script before the gateway (re)started.
        await publish(broker.port, f"{PREFIX}/{SERIAL}/valve/2/set", "OPEN", retain=True)
        result = f"{PREFIX}/{SERIAL}/result"
        async with Listener(broker.port, result) as replies:
            ops = FakeOps()
            config = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port,
                            allowed_ops=(*DEFAULT_MQTT_OPS, "update_install"))
            relay = MqttRelay(config, "gw1", Outbox(tmp_path / "mqtt.db", "gw1"), ops)
            relay.observe(ADDRESS, SERIAL, state())
            task = asyncio.create_task(relay.run(), name="relay")
            try:
                await replies.until(lambda: bool(replies.on(result)))
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        stale = json.loads(replies.on(result)[0])
        assert stale["status"] == "invalid" and "retained" in stale["detail"]
        assert ops.asked == []


async def test_an_unknown_controller_gets_an_error_reply(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        result = f"{PREFIX}/999999/result"
        async with Listener(s.broker.port, result) as replies:
            await publish(s.broker.port, f"{PREFIX}/999999/valve/1/set", "OPEN")
            await replies.until(lambda: bool(replies.on(result)))
            assert json.loads(replies.on(result)[0])["status"] == "unknown_controller"
        assert s.ops.asked == []


async def test_an_unpaired_controller_leaves_home_assistant(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        s.relay.observe(ADDRESS, SERIAL, state())
        config = "homeassistant/device/autowatering_100001/config"
        async with Listener(s.broker.port, config) as seen:
            await seen.until(lambda: bool(seen.on(config)))
            s.relay.forget(ADDRESS, SERIAL)
            await seen.until(lambda: seen.on(config)[-1] == b"")
        async with Listener(s.broker.port, config) as later:
            await asyncio.sleep(0.5)
            assert later.on(config) == []  # no retained config left


async def test_the_update_entity_installs_a_staged_image_with_progress(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / f"{SERIAL}.bin").write_bytes(make_image((9, 2, 0, 0), firmware_body("s", 4000)))
    async with MosquittoBroker() as broker:
        ops = FakeOps()
        config = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port,
                            allowed_ops=(*DEFAULT_MQTT_OPS, "update_install"))
        relay = MqttRelay(config, "gw1", Outbox(tmp_path / "mqtt.db", "gw1"), ops,
                          staged_dir=staged)
        task = asyncio.create_task(relay.run(), name="relay")
        update = f"{PREFIX}/{SERIAL}/update"
        try:
            async with Listener(broker.port, update, f"{PREFIX}/{SERIAL}/result") as mqtt:
                relay.observe(ADDRESS, SERIAL, state())
                await mqtt.until(lambda: bool(mqtt.on(update)))
                offered = json.loads(mqtt.on(update)[-1])
                assert (offered["installed_version"], offered["latest_version"]) == (
                    "3.1.0", "9.2.0") and not offered["in_progress"]
                await publish(broker.port, f"{update}/install", "install")
                await mqtt.until(lambda: bool(mqtt.on(f"{PREFIX}/{SERIAL}/result")))
                reply = json.loads(mqtt.on(f"{PREFIX}/{SERIAL}/result")[-1])
                assert reply["ok"] and reply["result"]["version"] == "9.2.0", reply
                # The entity's last state is its own message: on another topic than the
                # result, so it may land after it (CI read it too early once).
                await mqtt.until(lambda: not json.loads(mqtt.on(update)[-1])["in_progress"])
                seen = [json.loads(p) for p in mqtt.on(update)]
                percentages = [s["update_percentage"] for s in seen if s["in_progress"]]
                assert percentages and percentages == sorted(percentages)
                assert not seen[-1]["in_progress"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        image = (staged / f"{SERIAL}.bin").read_bytes()
        assert isinstance(ops.asked[-1], Ota) and ops.asked[-1].image == image


async def test_home_assistants_birth_message_brings_discovery_back(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        s.relay.observe(ADDRESS, SERIAL, state())
        config = "homeassistant/device/autowatering_100001/config"
        async with Listener(s.broker.port, config) as first:
            await first.until(lambda: bool(first.on(config)))
        await publish(s.broker.port, config, b"", retain=True)  # HA (or a person) cleared it
        async with Listener(s.broker.port, config) as cleared:
            await asyncio.sleep(0.3)
            assert cleared.on(config) == []
            await publish(s.broker.port, "homeassistant/status", "online")
            await cleared.until(lambda: bool(cleared.on(config) and cleared.on(config)[-1]))


@dataclass(frozen=True)
class Installed:
    status: str
    reason: str | None
    detail: Any


async def test_the_update_entity_installs_a_cloud_release(tmp_path: Path) -> None:
    asked: list[str] = []

    async def cloud_install(address: str, progress: Callable[[int, str], None]) -> Installed:
        asked.append(address)
        for pct in (10, 50, 95):
            progress(pct, "upload")
            await asyncio.sleep(0.1)
        return Installed("succeeded", None, {"fw_version": "9.3.0"})

    async with MosquittoBroker() as broker:
        config = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port,
                            allowed_ops=(*DEFAULT_MQTT_OPS, "update_install"))
        board = OfferBoard()
        board.serve(cloud_install)
        relay = MqttRelay(config, "gw1", Outbox(tmp_path / "mqtt.db", "gw1"), FakeOps(),
                          offers=board)
        task = asyncio.create_task(relay.run(), name="relay")
        update = f"{PREFIX}/{SERIAL}/update"
        try:
            async with Listener(broker.port, update, f"{PREFIX}/{SERIAL}/result") as mqtt:
                relay.observe(ADDRESS, SERIAL, state())
                board.offered(ADDRESS, SERIAL, "9.3.0")  # what the cloud's release check found
                await mqtt.until(lambda: any(json.loads(p)["latest_version"] == "9.3.0"
                                             for p in mqtt.on(update)))
                await publish(broker.port, f"{update}/install", "install")
                await mqtt.until(lambda: bool(mqtt.on(f"{PREFIX}/{SERIAL}/result")))
                reply = json.loads(mqtt.on(f"{PREFIX}/{SERIAL}/result")[-1])
                assert reply["ok"] and reply["result"]["detail"]["fw_version"] == "9.3.0"
                assert any(json.loads(p)["in_progress"] for p in mqtt.on(update))
        finally:
            await cancel_and_wait(task)
        assert asked == [ADDRESS]


def test_the_broker_password_comes_from_a_credential_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "mqtt-password"
    file.write_text("from-file\n")
    config = MqttConfig(password_file=file)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_password(config) == "from-file"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "awgw-mqtt-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert read_password(config) == "from-systemd"  # the credential wins
    assert read_password(MqttConfig()) == "from-systemd"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert read_password(MqttConfig()) is None
    (credentials / "awgw-mqtt-password").write_text("")  # install.sh's empty placeholder
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert read_password(config) == "from-file"
    file.unlink()  # a password file the config names but nobody wrote
    with pytest.raises(ConfigError, match=r"mqtt\.password_file"):
        read_password(config)


@given(st.text(max_size=30), st.text(max_size=60) | st.just('{"event_type": "x+y"}'))
def test_an_outbox_event_becomes_a_message_with_a_clean_topic_or_none(
        controller: str, body: str) -> None:
    # hostile-edges L2: a wildcard in a topic raised ValueError at publish, ended the relay,
    # and the item, still in the outbox, ended it again after every restart.
    topics = Topics("autowatering", "gw")
    item = StoredItem(1, controller, "event", "k", 1, 0.0, len(body), body)
    message = event_message(topics, item)
    if message is not None:
        topic, _payload = message
        assert not set(topic) & {"+", "#", "\0"} and topic.isascii()


def test_a_good_outbox_event_keeps_its_key() -> None:
    item = StoredItem(1, "100001", "event", "gw:100001:e:7", 7, 0.0, 0,
                      '{"event_type": "watering_started", "ch": 2}')
    topic, payload = event_message(Topics("autowatering", "gw"), item) or ("", "")
    assert topic == "autowatering/100001/event/watering_started"
    assert json.loads(payload)["event_id"] == "gw:100001:e:7"


async def test_a_command_past_its_expiry_is_answered_expired_and_never_run(
        tmp_path: Path) -> None:
    # hostile-edges L3 / issue item 3: a flood queued valve OPENs that ran minutes later.
    async with running(tmp_path) as s:
        s.relay.observe(ADDRESS, SERIAL, state())
        s.ops.hold = asyncio.Event()
        base = f"{PREFIX}/{SERIAL}"
        for channel in range(MAX_CONCURRENT_COMMANDS):  # every slot taken by a slow command
            await publish(s.broker.port, f"{base}/valve/{channel % 8}/set", "CLOSE")
        await until(lambda: len(s.ops.asked) == MAX_CONCURRENT_COMMANDS)
        result = f"{base}/result"
        async with Listener(s.broker.port, result) as replies:
            expiry = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            expiry.MessageExpiryInterval = 1
            async with aiomqtt.Client("127.0.0.1", s.broker.port,
                                      protocol=aiomqtt.ProtocolVersion.V5) as person:
                await person.publish(f"{base}/command", json.dumps(
                    {"op": "valve_open", "channel": 2, "minutes": 5, "id": "late"}), qos=1,
                    properties=expiry)
            await asyncio.sleep(1.5)  # the queue is still full when its second runs out
            s.ops.hold.set()
            await replies.until(lambda: any(json.loads(p).get("id") == "late"
                                            for p in replies.on(result)))
            late = next(json.loads(p) for p in replies.on(result)
                        if json.loads(p).get("id") == "late")
        assert late["status"] == "expired" and not late["ok"]
        assert ValveOpen(address=ADDRESS, channel=2, minutes=5) not in s.ops.asked
        assert s.relay.commands_expired == 1


def test_a_commands_time_to_live_is_its_expiry_within_thirty_seconds() -> None:
    def message(expiry: int | None) -> aiomqtt.Message:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if expiry is not None:
            properties.MessageExpiryInterval = expiry
        return aiomqtt.Message("t", b"", 1, False, 1, properties)

    assert command_ttl_s(message(None)) == COMMAND_TTL_S == 30.0
    assert command_ttl_s(message(5)) == 5.0
    assert command_ttl_s(message(3600)) == COMMAND_TTL_S


async def test_two_hubs_with_one_gateway_id_are_told_apart_and_reported(tmp_path: Path) -> None:
    # hostile-edges M4: a state directory copied to a second hub shares the gateway id, so both
    # use the client id awgw-<id> and end each other's broker session at every reconnect,
    # with nothing in the log but "disconnected". Each must now say that another process
    # speaks for its id, and where it runs.
    async with MosquittoBroker() as broker:
        config = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, keepalive_s=5)
        first = MqttRelay(config, "gw1", Outbox(tmp_path / "a.db", "gw1"), FakeOps(),
                          rng=lambda: 0.5)
        second = MqttRelay(config, "gw1", Outbox(tmp_path / "b.db", "gw1"), FakeOps(),
                           rng=lambda: 0.5)
        async with asyncio.TaskGroup() as tasks:
            runs = [tasks.create_task(first.run())]
            await until(lambda: first.connected, ARRIVES_WITHIN_S)
            runs.append(tasks.create_task(second.run()))
            await until(lambda: first.identity_clash() is not None
                        and second.identity_clash() is not None, ARRIVES_WITHIN_S)
            for run in runs:
                run.cancel()
        for relay, other in ((first, second), (second, first)):
            clash = relay.identity_clash()
            assert clash is not None and f"pid {other.identity.me.pid}" in clash


async def test_a_restarted_hub_is_not_taken_for_another(tmp_path: Path) -> None:
    # Its own announcement from the run before is still retained on the broker.
    async with MosquittoBroker() as broker:
        config = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, keepalive_s=5)
        for _ in range(2):
            relay = MqttRelay(config, "gw1", Outbox(tmp_path / "a.db", "gw1"), FakeOps(),
                              rng=lambda: 0.5)
            async with asyncio.TaskGroup() as tasks:
                run = tasks.create_task(relay.run())
                await until(partial(getattr, relay, "connected"), ARRIVES_WITHIN_S)
                listener_saw: list[bytes] = []
                async with aiomqtt.Client("127.0.0.1", broker.port) as probe:
                    await probe.subscribe(relay.topics.gateway_instance)
                    async with asyncio.timeout(ARRIVES_WITHIN_S):
                        async for message in probe.messages:
                            assert isinstance(message.payload, bytes)
                            listener_saw.append(message.payload)
                            break
                await asyncio.sleep(0.5)
                run.cancel()
            assert relay.identity_clash() is None
            assert json.loads(listener_saw[0])["token"] == relay.identity.me.token

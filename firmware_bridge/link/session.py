"""A live session with one connected controller (device-ble.md section 9).

The session brings the link up (firmware version, snapshot, subscriptions, reads after
subscribing, optional time sync, zone names), then polls what never notifies, and turns every
notification and read into a typed ``StateEvent`` on ``events``. Commands return only once the
controller showed their effect; the Task Queue's always-successful write is resolved into a
real outcome from its notification.

No daemon logic: the caller decides when to connect, how long to stay, and what to do with
errors (which arrive as firmware_bridge exceptions from ``bring_up`` and ``run``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo

import structlog

from firmware_bridge.errors import AttRefused, DecodeError
from firmware_bridge.gatt import commands, uuids
from firmware_bridge.gatt.codec import (
    NO_CHANNEL,
    AlarmCode,
    AlarmStatus,
    CurrentTask,
    CurrentTaskCommand,
    RtcConfig,
    TaskQueue,
    TaskQueueCommand,
    TaskStatus,
    ValveControl,
)
from firmware_bridge.gatt.configuration import (
    ChannelConfig,
    SystemConfig,
)
from firmware_bridge.gatt.fragments import (
    EnvDataReassembler,
    RawSplitReassembler,
    UnifiedReassembler,
    is_unified_fragment,
)
from firmware_bridge.gatt.history import (
    HistoryQuery,
    HistoryResult,
    HistoryType,
    RealtimeEvent,
    is_realtime_event,
    parse_history,
)
from firmware_bridge.gatt.timesync import needs_sync, time_sync
from firmware_bridge.link.confirm import TASK_QUEUE_EFFECTS, EventPredicate, after
from firmware_bridge.link.decoding import DECODERS
from firmware_bridge.link.gatt_link import GattLink, NotifyCallback
from firmware_bridge.link.outcome import CommandOutcome, OutcomeStatus, TaskQueueError
from firmware_bridge.link.priority_lock import PriorityLock
from firmware_bridge.link.state import DecodeProblem, Field, Source, StateEvent, Value

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Per GATT operation: the spec recommends 5-10 s (9.2); a healthy link answers in < 100 ms, and
# BlueZ's own ATT timeout is 30 s, so 10 s fails a hung peer long before BlueZ would.
GATT_OP_TIMEOUT_S = 10.0
# How long a command waits for the controller to show its effect: the spec's suggested 10 s
# (section 12, Q11); the firmware starts a queued task within one task-loop turn (< 1 s).
CONFIRM_TIMEOUT_S = 10.0
# The app pauses 40-50 ms between a selector write and its read (4.2).
SELECT_PAUSE_S = 0.045
# Spacing between subscriptions: the app's 50-100 ms (9.1 step 5) protects the device's
# 8-buffer notification pool from the snapshots several subscriptions push at once.
SUBSCRIBE_SPACING_S = 0.05
# The whole history response streams ~2 ms per fragment; 5 s is the app's guard (8.3).
HISTORY_TIMEOUT_S = 5.0
EXPECTED_MTU = 247

FIXED_SIZES = {uuids.CURRENT_TASK: 21, uuids.HYDRAULIC_STATUS: 48, uuids.SYSTEM_CONFIG: 56,
               uuids.CHANNEL_CONFIG: 76}
ESSENTIAL_SUBSCRIPTIONS = (uuids.ALARM_STATUS, uuids.SYSTEM_STATUS, uuids.CURRENT_TASK,
                           uuids.VALVE_CONTROL, uuids.TASK_QUEUE, uuids.FLOW_SENSOR)
P1_SUBSCRIPTIONS = (uuids.ENVIRONMENTAL_DATA, uuids.RAIN_DATA, uuids.DIAGNOSTICS,
                    uuids.HYDRAULIC_STATUS, uuids.HISTORY, uuids.TIMEZONE_CONFIG)


class Clock(Protocol):
    """Wall time for stamps, monotonic time for schedules, and the session's pauses: injected
    so that tests can run a session's pacing in virtual time."""

    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    # The C functions themselves: a notification's stamps cost no Python frame. (``monotonic``
    # first: once ``time`` is bound here, the name no longer means the module.)
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class PollPlan:
    """What never (or unreliably) notifies, and how often to read it (device-ble.md 9.2)."""

    bulk_s: float = 60.0
    bulk_watering_s: float = 30.0
    status_s: float = 60.0  # System Status (6/7 are never notified), Env Data, Rain Data
    slow_s: float = 600.0  # Diagnostics, Hydraulic Status
    read_channel_names: bool = True
    time_zone: str | None = None  # set: keep the device clock and DST rules in sync

    def scaled(self, period_s: float) -> PollPlan:
        """The same plan with every fast period capped at ``period_s``."""
        return PollPlan(min(self.bulk_s, period_s), min(self.bulk_watering_s, period_s),
                        min(self.status_s, period_s), self.slow_s, self.read_channel_names,
                        self.time_zone)


class ControllerSession:
    def __init__(self, link: GattLink, *, plan: PollPlan | None = None,
                 clock: Clock | None = None, op_timeout_s: float = GATT_OP_TIMEOUT_S,
                 confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
                 sink: Callable[[StateEvent | DecodeProblem], None] | None = None,
                 problems: Callable[[DecodeProblem], None] | None = None) -> None:
        """``sink`` takes every event as it is decoded, in order, on the notification's own
        callback (no queue and no task between a notification and the state it updates:
        bench/relay_latency.py); it must not block. Without one, events wait in ``events``.
        ``problems`` takes the values that did not decode, if they go elsewhere."""
        self.link = link
        self._address = link.address  # read for every notification; a link keeps its peer
        self.plan = plan or PollPlan()
        self.clock = clock or SystemClock()
        self.op_timeout_s = op_timeout_s
        self.confirm_timeout_s = confirm_timeout_s
        self.events: asyncio.Queue[StateEvent | DecodeProblem] = asyncio.Queue()
        self._sink = sink or self.events.put_nowait
        self._problems: Callable[[DecodeProblem], None] = problems or self._sink
        self.latest: dict[Field, StateEvent] = {}
        self.channels: dict[int, ChannelConfig] = {}
        self.num_channels = 8
        self._lock = PriorityLock()
        # Command frames handed to the link (counted before the write: one that failed may
        # still have reached the controller). A command that fails with this unchanged sent
        # nothing, so its caller may run it again on another link.
        self.commands_sent = 0
        self._waiters: list[tuple[EventPredicate, asyncio.Future[StateEvent]]] = []
        self._env = EnvDataReassembler()
        self._history = UnifiedReassembler()
        self._history_done: asyncio.Future[HistoryResult] | None = None
        # Only values longer than one notification can be split (8.5); at MTU 247 none are,
        # and a short frame is then a malformed one, not half of a value.
        self._raw = {uuid: RawSplitReassembler(size) for uuid, size in FIXED_SIZES.items()
                     if size > link.mtu - 3}
        self._log = log.bind(address=link.address)
        # Set once a command can be sent and its confirmation seen (essential subscriptions
        # in, current task and queue known).
        self.commands_ready = asyncio.Event()
        # Set once the P1 subscriptions (History among them) are in place.
        self.history_ready = asyncio.Event()

    # ---- bring-up --------------------------------------------------------------------------

    async def bring_up(self) -> None:
        """The connection bring-up of device-ble.md 9.1; raises on link failures. The
        subscriptions commands are confirmed by come first, so a waiting command can go out
        (``commands_ready``) while the rest of the snapshot is still being read."""
        if self.link.mtu < EXPECTED_MTU:
            self._log.warning("mtu_below_expected", mtu=self.link.mtu, expected=EXPECTED_MTU)
        version = (await self._read(uuids.DIS_FIRMWARE_REVISION)).decode("utf-8", "replace")
        self._emit(Field.FIRMWARE_VERSION, version, Source.SNAPSHOT)
        await self._subscribe_all(ESSENTIAL_SUBSCRIPTIONS)
        # Alarm's read buffer only fills while subscribed (5.7); read after subscribing.
        for uuid in (uuids.CURRENT_TASK, uuids.TASK_QUEUE, uuids.ALARM_STATUS):
            await self._poll(uuid, Source.SNAPSHOT)
        self.commands_ready.set()
        if self.link.has(uuids.DIS_SERIAL_NUMBER):
            serial = (await self._read(uuids.DIS_SERIAL_NUMBER)).decode("utf-8", "replace")
            self._emit(Field.SERIAL, serial, Source.SNAPSHOT)
        config = await self._poll(uuids.SYSTEM_CONFIG, Source.SNAPSHOT)
        if isinstance(config, SystemConfig):
            self.num_channels = min(max(config.num_channels, 1), 8)
        await self._subscribe_all(P1_SUBSCRIPTIONS)
        self.history_ready.set()
        # Most characteristics push nothing on subscribe: read each once now.
        for uuid in (uuids.SYSTEM_STATUS, uuids.FLOW_SENSOR, uuids.RTC_CONFIG,
                     uuids.TIMEZONE_CONFIG, uuids.ENVIRONMENTAL_DATA, uuids.RAIN_DATA,
                     uuids.DIAGNOSTICS):
            await self._poll(uuid, Source.SNAPSHOT)
        if self.plan.time_zone is not None:
            await self.sync_time_if_needed(ZoneInfo(self.plan.time_zone))
        if self.plan.read_channel_names and self.link.has(uuids.CHANNEL_CONFIG):
            for channel in range(self.num_channels):
                value = await self.read_selected(uuids.CHANNEL_CONFIG, channel)
                if isinstance(value, ChannelConfig):
                    self.channels[value.channel_id] = value
        # The Bulk Snapshot last: it is what marks the controller's state as refreshed, so
        # it must not predate the rest of the snapshot.
        await self._poll(uuids.BULK_SYNC, Source.SNAPSHOT)

    async def _subscribe_all(self, wanted: tuple[str, ...]) -> None:
        for uuid in wanted:
            if self.link.has(uuid):
                async with self._lock.hold(PriorityLock.BACKGROUND):
                    await self._timed(self.link.subscribe(uuid, self._handler(uuid)))
                await self.clock.sleep(SUBSCRIBE_SPACING_S)

    # ---- steady state ----------------------------------------------------------------------

    async def run(self) -> None:
        """Poll forever per the plan; returns never, raises when the link fails."""
        plan = self.plan
        now = self.clock.monotonic()
        due = {"bulk": now + self._bulk_period(), "status": now + plan.status_s,
               "slow": now + plan.slow_s}
        while True:
            now = self.clock.monotonic()
            if now >= due["bulk"]:
                await self._poll(uuids.BULK_SYNC)
                due["bulk"] = now + self._bulk_period()
            if now >= due["status"]:
                for uuid in (uuids.SYSTEM_STATUS, uuids.ENVIRONMENTAL_DATA, uuids.RAIN_DATA):
                    await self._poll(uuid)
                due["status"] = now + plan.status_s
            if now >= due["slow"]:
                await self._poll(uuids.DIAGNOSTICS)
                if self.link.has(uuids.HYDRAULIC_STATUS):
                    await self.read_selected(uuids.HYDRAULIC_STATUS, NO_CHANNEL)
                due["slow"] = now + plan.slow_s
            await self.clock.sleep(max(0.0, min(due.values()) - self.clock.monotonic()))

    async def refresh(self) -> None:
        """One full poll now (what a share-policy visit does before releasing the link)."""
        for uuid in (uuids.BULK_SYNC, uuids.SYSTEM_STATUS, uuids.CURRENT_TASK,
                     uuids.TASK_QUEUE, uuids.ALARM_STATUS, uuids.FLOW_SENSOR):
            await self._poll(uuid)

    def _bulk_period(self) -> float:
        event = self.latest.get(Field.CURRENT_TASK)
        task = event.value if event is not None else None
        watering = isinstance(task, CurrentTask) and not task.idle
        return self.plan.bulk_watering_s if watering else self.plan.bulk_s

    # ---- commands --------------------------------------------------------------------------

    async def open_valve(self, channel: int, minutes: int) -> CommandOutcome:
        """Water ``channel`` for ``minutes``; confirmed by the valve opening, or QUEUED when
        another channel waters now (one valve at a time)."""
        frame = ValveControl.duration_task(channel, minutes).encode()
        queued_before = self._pending_count()

        def opened(event: StateEvent) -> bool:
            value = event.value
            if isinstance(value, ValveControl):
                return value.channel_id == channel and value.is_open
            if isinstance(value, CurrentTask):
                return value.channel_id == channel and value.status == TaskStatus.RUNNING
            return False

        def queued(event: StateEvent) -> bool:
            value = event.value
            return (isinstance(value, TaskQueue) and not value.is_error_report
                    and value.current_channel not in (channel, NO_CHANNEL)
                    and value.pending_count > queued_before)

        return await self._command(uuids.VALVE_CONTROL, frame, opened, queued,
                                   f"open channel {channel} for {minutes} min")

    async def open_valve_again(self, channel: int, minutes: int) -> CommandOutcome:
        """``open_valve`` on a new link after one that ended once its write was sent: that
        write may have started the task. Current Task tells: the channel waters (it did),
        nothing waters (it did not: open now; a task of a minute or more cannot have ended
        already), or another channel waters, and then whether the first write queued behind
        it is unknown (the Task Queue shows a count, not its channels): never opened twice."""
        task = await self._poll(uuids.CURRENT_TASK)
        if not isinstance(task, CurrentTask):
            return CommandOutcome(OutcomeStatus.UNCONFIRMED, f"open channel {channel}: "
                                  "Current Task unreadable after the link ended")
        if not task.idle and task.channel_id == channel:
            return CommandOutcome(OutcomeStatus.CONFIRMED, f"open channel {channel}: it "
                                  "waters (the write sent before the link ended started it)")
        if not task.idle:
            return CommandOutcome(OutcomeStatus.UNCONFIRMED, f"open channel {channel}: the "
                                  f"link ended after the write, while channel "
                                  f"{task.channel_id} waters; whether it was queued behind "
                                  f"it is unknown (see the task queue)")
        return await self.open_valve(channel, minutes)

    async def close_valve(self, channel: int) -> CommandOutcome:
        """Stop the task watering ``channel`` (Current Task stop, device-ble.md 9.3)."""
        if channel == NO_CHANNEL:
            return await self._command(
                uuids.VALVE_CONTROL, ValveControl.master(False).encode(),
                lambda e: isinstance(e.value, ValveControl) and e.value.is_master
                and not e.value.is_open, None, "close master valve")
        task = await self._poll(uuids.CURRENT_TASK)
        if not isinstance(task, CurrentTask) or task.idle or task.channel_id != channel:
            return CommandOutcome(OutcomeStatus.CONFIRMED, f"channel {channel} is not watering")

        def closed(event: StateEvent) -> bool:
            value = event.value
            if isinstance(value, ValveControl):
                return value.channel_id == channel and not value.is_open
            return isinstance(value, CurrentTask) and value.channel_id != channel

        return await self._command(uuids.CURRENT_TASK, commands.current_task(
            CurrentTaskCommand.STOP), closed, None, f"close channel {channel}")

    async def task_queue_command(self, command: TaskQueueCommand) -> CommandOutcome:
        """The Task Queue write always succeeds (5.5): a failure shows only as an error report
        notification, a success only as its effect. Wait for whichever comes first."""
        effect = TASK_QUEUE_EFFECTS[command]

        def answered(event: StateEvent) -> bool:
            value = event.value
            return (isinstance(value, TaskQueue) and value.is_error_report) or effect(event)

        outcome = await self._command(uuids.TASK_QUEUE, commands.task_queue(command), answered,
                                      None, f"task queue {command.name.lower()}")
        report = self.latest.get(Field.TASK_QUEUE)
        if (outcome.status == OutcomeStatus.CONFIRMED and report is not None
                and isinstance(report.value, TaskQueue) and report.value.is_error_report):
            code = report.value.current_value
            try:
                error: TaskQueueError | int = TaskQueueError(code)
            except ValueError:
                error = code
            return CommandOutcome(OutcomeStatus.REFUSED, f"{command.name.lower()} refused "
                                  f"by the controller (error {code})", queue_error=error)
        return outcome

    async def clear_alarm(self, code: AlarmCode | None = None) -> CommandOutcome:
        return await self._command(
            uuids.ALARM_STATUS, commands.alarm_clear(code),
            lambda e: isinstance(e.value, AlarmStatus) and e.value.empty, None,
            "clear alarm")

    async def sync_time_if_needed(self, zone: ZoneInfo) -> bool:
        """Keep the device's clock and DST rules right for ``zone``; True if it wrote.
        RTC goes first and Timezone after it, because an RTC write erases the rules (5.8)."""
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        sync = time_sync(now, zone)
        rtc = self.latest.get(Field.RTC)
        tz = self.latest.get(Field.TIMEZONE)
        rtc_stale = rtc is None or not isinstance(rtc.value, RtcConfig) or needs_sync(
            rtc.value, now, zone)
        rules_differ = self.link.has(uuids.TIMEZONE_CONFIG) and (
            tz is None or tz.value != sync.timezone)
        if not rtc_stale and not rules_differ:
            return False
        async with self._lock.hold(PriorityLock.URGENT):
            if rtc_stale:
                await self._timed(self.link.write(uuids.RTC_CONFIG, sync.rtc.encode()))
            if rtc_stale or rules_differ:
                await self._timed(self.link.write(uuids.TIMEZONE_CONFIG,
                                                  sync.timezone.encode()))
        await self._poll(uuids.RTC_CONFIG)
        await self._poll(uuids.TIMEZONE_CONFIG)
        self._log.info("device_time_synced", zone=zone.key, clock_written=rtc_stale,
                       offset_min=sync.rtc.utc_offset_minutes)
        return True

    async def read_selected(self, uuid: str, channel: int) -> Value | None:
        """Select + pause + read as one uninterruptible unit (4.2)."""
        async with self._lock.hold(PriorityLock.BACKGROUND):
            await self._timed(self.link.write(uuid, commands.selector(
                channel, allow_active=uuid == uuids.HYDRAULIC_STATUS)))
            await self.clock.sleep(SELECT_PAUSE_S)
            raw = await self._timed(self.link.read(uuid))
        return self._decode_and_emit(uuid, raw, Source.POLL)

    async def history(self, channel: int) -> HistoryResult:
        """Detailed watering history of ``channel`` (page 0, 50 entries)."""
        # The answer comes as notifications: a query sent before the subscription (a command
        # may run as soon as the essentials are up) would never be answered.
        async with asyncio.timeout(HISTORY_TIMEOUT_S):
            await self.history_ready.wait()
        loop = asyncio.get_running_loop()
        self._history_done = loop.create_future()
        try:
            async with self._lock.hold(PriorityLock.BACKGROUND):
                await self._timed(self.link.write(uuids.HISTORY, HistoryQuery(
                    channel, HistoryType.DETAILED).encode()))
            async with asyncio.timeout(HISTORY_TIMEOUT_S):
                return await self._history_done
        finally:
            self._history_done = None

    async def _command(self, uuid: str, frame: bytes, confirmed: EventPredicate,
                       queued: EventPredicate | None, what: str) -> CommandOutcome:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[StateEvent] = loop.create_future()
        queued_future: asyncio.Future[StateEvent] = loop.create_future()
        self._waiters.append((confirmed, done))
        if queued is not None:
            self._waiters.append((queued, queued_future))
        asked = self.clock.monotonic()
        try:
            try:
                async with self._lock.hold(PriorityLock.URGENT):
                    # Only what arrives after the write can answer it: a throttled
                    # notification of an earlier change must not confirm this command.
                    sent = self.clock.monotonic()
                    self._waiters = [(after(sent, p), f)
                                     if f in (done, queued_future) else (p, f)
                                     for p, f in self._waiters]
                    self.commands_sent += 1
                    await self._timed(self.link.write(uuid, frame))
            except AttRefused as exc:
                return CommandOutcome(OutcomeStatus.REFUSED, f"{what}: refused with ATT "
                                      f"0x{exc.code:02x}", att_code=exc.code)
            written = self.clock.monotonic()
            finished, _ = await asyncio.wait({done, queued_future},
                                             timeout=self.confirm_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            # Where a slow command spent its time (bench/fleet.py names the slowest).
            self._log.debug("command_timing", what=what, lock_wait_s=round(sent - asked, 3),
                            write_s=round(written - sent, 3),
                            answer_s=round(self.clock.monotonic() - written, 3))
            if done in finished:
                return CommandOutcome(OutcomeStatus.CONFIRMED, what)
            if queued_future in finished:
                return CommandOutcome(OutcomeStatus.QUEUED, f"{what}: queued behind the "
                                      "running task")
            # No confirming notification: re-read before reporting (9.3).
            for probe in (uuids.CURRENT_TASK, uuids.TASK_QUEUE, uuids.BULK_SYNC):
                await self._poll(probe)
                last = self.latest.get(DECODERS[probe][0])
                if last is not None and confirmed(last):
                    return CommandOutcome(OutcomeStatus.CONFIRMED, f"{what} (seen on re-read)")
            return CommandOutcome(OutcomeStatus.UNCONFIRMED, f"{what}: accepted but not seen "
                                  f"within {self.confirm_timeout_s:.0f} s")
        finally:
            self._waiters = [w for w in self._waiters if w[1] not in (done, queued_future)]
            for future in (done, queued_future):
                future.cancel()

    def _pending_count(self) -> int:
        event = self.latest.get(Field.TASK_QUEUE)
        if event is not None and isinstance(event.value, TaskQueue):
            return event.value.pending_count
        return 0

    # ---- plumbing --------------------------------------------------------------------------

    async def _timed(self, operation: Awaitable[T]) -> T:
        async with asyncio.timeout(self.op_timeout_s):
            return await operation

    async def _read(self, uuid: str) -> bytes:
        async with self._lock.hold(PriorityLock.BACKGROUND):
            return await self._timed(self.link.read(uuid))

    async def _poll(self, uuid: str, source: Source = Source.POLL) -> Value | None:
        if not self.link.has(uuid):
            return None
        raw = await self._read(uuid)
        return self._decode_and_emit(uuid, raw, source)

    def _decode_and_emit(self, uuid: str, raw: bytes, source: Source) -> Value | None:
        field, decoder = DECODERS[uuid]
        try:
            value = decoder(raw)
        except DecodeError as exc:
            self._problem(uuid, raw, str(exc))
            return None
        self._emit(field, value, source)
        return value

    def _emit(self, field: Field, value: Value, source: Source) -> None:
        event = StateEvent(self._address, field, value, source, self.clock.time(),
                           self.clock.monotonic())
        if field != Field.HISTORY_EVENT:
            self.latest[field] = event
        self._sink(event)
        if self._waiters:
            self._confirm(event)

    def _confirm(self, event: StateEvent) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate(event):
                future.set_result(event)

    def _problem(self, uuid: str, raw: bytes, reason: str) -> None:
        self._problems(DecodeProblem(self.link.address, uuid, raw, reason, self.clock.time()))

    def _handler(self, uuid: str) -> NotifyCallback:
        """What a notification of ``uuid`` runs; it never raises. A watering controller
        notifies ~15 times a second, each at an idle loop with cold caches, where each
        Python frame between bleak and the store costs microseconds (bench/relay_latency.py:
        the chain of 18 frames cost ~45 % of bare bleak's whole CPU per notification). So a
        characteristic that decodes whole gets a function of its own with its decoder, field
        and sink bound, and bleak calls it directly."""
        if uuid not in DECODERS or uuid == uuids.ENVIRONMENTAL_DATA or uuid in self._raw:
            return lambda _sender, data: self._on_notify(uuid, bytes(data))
        field, decoder = DECODERS[uuid]
        address, latest, clock, sink = self._address, self.latest, self.clock, self._sink
        notify = Source.NOTIFY

        def on_value(_sender: object, data: bytes | bytearray) -> None:
            raw = bytes(data)
            try:
                value = decoder(raw)
            except DecodeError as exc:
                self._problem(uuid, raw, str(exc))
                return
            event = StateEvent(address, field, value, notify, clock.time(), clock.monotonic())
            latest[field] = event
            sink(event)
            if self._waiters:
                self._confirm(event)

        return on_value

    def _on_notify(self, uuid: str, data: bytes) -> None:
        """A notification of any characteristic, dispatched by its UUID; never raises."""
        if uuid == uuids.HISTORY:
            self._on_history(data)
            return
        try:
            if uuid == uuids.ENVIRONMENTAL_DATA:
                env = self._env.feed(data)
                if env is not None:
                    self._emit(Field.ENVIRONMENT, env, Source.NOTIFY)
                return
            reassembler = self._raw.get(uuid)
            if reassembler is not None:
                whole = reassembler.feed(data, self.clock.monotonic())
                if whole is None:
                    return
                data = whole
        except DecodeError as exc:
            self._problem(uuid, data, str(exc))
            return
        if uuid in DECODERS:
            self._decode_and_emit(uuid, data, Source.NOTIFY)

    def _on_history(self, data: bytes) -> None:
        if is_unified_fragment(data) or (len(data) >= 8 and data[6] == 0 and len(data) == 8):
            try:
                response = self._history.feed(data)
                result = parse_history(response) if response is not None else None
            except DecodeError as exc:
                if self._history_done is not None and not self._history_done.done():
                    self._history_done.set_exception(exc)
                else:
                    self._problem(uuids.HISTORY, data, str(exc))
                return
            if result is not None and self._history_done is not None \
                    and not self._history_done.done():
                self._history_done.set_result(result)
            return
        if is_realtime_event(data):
            self._emit(Field.HISTORY_EVENT, RealtimeEvent.decode(data), Source.NOTIFY)
            return
        self._problem(uuids.HISTORY, data, f"history frame of {len(data)} bytes fits no format")

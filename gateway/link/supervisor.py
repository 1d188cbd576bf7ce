"""One supervisor per paired controller: an explicit state machine around connect, sync, serve
commands, release, and back off by failure class.

States (``LinkState``):

    IDLE -> WAITING_SLOT -> CONNECTING -> SYNCING -> CONNECTED -> (release) -> IDLE
                 ^                                        |
                 +------------ BACKOFF <------------------+ (classified failure)
    any -> BOND_LOST (authentication, after one automatic re-pair) | FAULTED (programming error)
    CONNECTED/IDLE -> UPDATING (firmware update holds the controller) -> IDLE

SHARE visits connect, take the snapshot, run queued commands and release; KEEP holds the link
and polls. Either way a command submitted while disconnected triggers an urgent visit.
What to do after a failure is decided by ``decision.decide`` (pure); this module carries it out.
Every state change goes through ``_set``, which also tells the state store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from firmware_bridge.bleak_compat import BRING_UP_TIMEOUT_S
from firmware_bridge.errors import LinkLost
from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.link.outcome import CommandOutcome
from firmware_bridge.link.session import Clock as SessionClock
from firmware_bridge.link.session import ControllerSession, PollPlan
from firmware_bridge.link.state import DecodeProblem, Field
from gateway.clock import Clock, LoopClock
from gateway.config import LinkPolicy, LinkSettings
from gateway.errors import CommandFailed, ControllerBusy, PairingError
from gateway.link.decision import URGENT_RETRY_S, Action, Memory, decide
from gateway.link.events import first_of
from gateway.link.failures import Failure, FailureClass, classify
from gateway.link.radios.base import NoPath
from gateway.link.scheduler import Lease, Priority
from gateway.ops.models import LinkState
from gateway.store.registry import Registry
from gateway.store.state import StateStore

log = structlog.get_logger(__name__)

Connector = Callable[[str, float, Callable[[], None]], Awaitable[GattLink]]
# Called with the action decided: REPAIR_BOND (the bond is gone) or CLEAR_GATT_CACHE (the
# services cached outlived a firmware change).
Repairer = Callable[[str, Action], Awaitable[None]]
CommandFn = Callable[[ControllerSession], Awaitable[CommandOutcome]]


class Slots(Protocol):
    """Where a visit waits for radio time: one radio's ``SlotScheduler``, or the ``RadioSet``
    that picks the radio per visit."""

    def slot(self, address: str, priority: Priority, *,
             kept: bool) -> contextlib.AbstractAsyncContextManager[Lease]: ...

    def connect_turn(self, lease: Lease | None = None
                     ) -> contextlib.AbstractAsyncContextManager[None]: ...

    def promote(self, address: str) -> None: ...

    def demote(self, lease: Lease) -> None: ...

# A command waits for a slot, a connect and the controller's confirmation: connect timeout
# (15 s) + bring-up (~2 s) + confirmation (10 s) + a queue of one other visit.
COMMAND_DEADLINE_S = 60.0
# Share visits start this fraction of the refresh period apart, so that a wait for a slot and
# the visit itself fit in the rest and the state is never older than one period.
VISIT_LEAD = 0.75
# Controllers that came up together (a daemon start, a radio's failover) would visit in step
# forever, every one wanting a slot in the same second of each period, and a person's command
# would queue behind them all. So each visit comes early by a random share of the lead, never
# late: up to SPREAD_AFTER_START of it once after coming up (scatters them across the period at
# once), then up to SPREAD_STEADY (keeps them from falling back into step; costs ~3 % more
# visits).
SPREAD_AFTER_START = 0.6
SPREAD_STEADY = 0.06
# Channel names change rarely (a person renames a zone in the app); re-read them this often.
NAMES_EVERY_S = 6 * 3600.0
# bleak waits this long for BlueZ to report a disconnect complete before giving up on it.
DISCONNECT_WITHIN_S = 10.0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@dataclass
class _Command:
    name: str
    run: CommandFn
    retried: bool = False  # run again once after a failure that sent it nowhere
    # Run instead on the next link when the link ended after the command's write was sent
    # (it may have reached the controller): it reads what is true before acting again.
    rerun: CommandFn | None = None
    future: asyncio.Future[CommandOutcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Supervisor:
    def __init__(self, address: str, *, settings: LinkSettings, policy: LinkPolicy,
                 scheduler: Slots, store: StateStore, registry: Registry,
                 connector: Connector, repairer: Repairer | None = None,
                 clock: Clock | None = None, session_clock: SessionClock | None = None,
                 rng: random.Random | None = None,
                 on_stranded: Callable[[], None] | None = None) -> None:
        """``on_stranded``: told when a visit found no radio to serve it and the supervisor
        backs off; it ends with ``sighted`` once a path opens."""
        self.address = address
        self.on_stranded = on_stranded
        self.settings = settings
        self.policy = policy
        self.scheduler = scheduler
        self.store = store
        self.registry = registry
        self.connector = connector
        self.repairer = repairer
        self.clock = clock or LoopClock()
        self.session_clock = session_clock
        self.rng = rng
        self.state = LinkState.IDLE
        self.failure: Failure | None = None
        self.session: ControllerSession | None = None
        self._commands: collections.deque[_Command] = collections.deque()
        self._wake = asyncio.Event()
        # The scanner heard this controller while it was backing off after not_found.
        self._sighted = False
        self._no_path = False  # the last failure: no radio that may serve it could be chosen
        self._link_lost = asyncio.Event()
        self._control = asyncio.Event()  # policy changed or an update wants the controller
        self._update_lock = asyncio.Lock()
        # Set while this supervisor holds no link (none connecting, connected or still being
        # disconnected): an update may only connect once its visit has let go of the radio.
        self._link_free = asyncio.Event()
        self._link_free.set()
        self._memory = Memory()
        self._names_at: float | None = None
        self._log = log.bind(address=address)
        # For the metrics and the watchdog: connections made, failures by class, and when
        # the state last changed (a supervisor stuck connecting past its own timeout).
        self.connects = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.since: float | None = None  # clock time of the last state change
        store.set_link(address, self.state)

    # ---- public ----------------------------------------------------------------------------

    async def submit(self, name: str, run: CommandFn,
                     deadline_s: float = COMMAND_DEADLINE_S, *,
                     rerun: CommandFn | None = None) -> CommandOutcome:
        if self.state is LinkState.UPDATING:
            raise ControllerBusy(f"{self.address} is busy with a firmware update")
        if self.state is LinkState.BOND_LOST:
            raise PairingError(self._bond_remedy())
        if self.state is LinkState.FAULTED:
            raise CommandFailed(f"{self.address}: link supervisor stopped after an internal "
                                f"error ({self.failure.summary if self.failure else '?'})")
        command = _Command(name, run, rerun=rerun)
        self._commands.append(command)
        self._wake.set()
        self.scheduler.promote(self.address)  # a visit already queued now waits as urgent
        try:
            async with asyncio.timeout(deadline_s):
                return await asyncio.shield(command.future)
        except asyncio.CancelledError:
            # The asker left: a command not started yet is skipped; one running finishes and
            # is logged, its answer dropped (a cancelled future takes no exception, so none
            # is left unretrieved).
            self._withdraw(command)
            raise
        except TimeoutError:
            self._withdraw(command)
            reason = self.failure.summary if self.failure else self.state.value
            raise CommandFailed(f"{name} on {self.address} not done within {deadline_s:.0f} s "
                                f"(link: {reason})") from None

    @contextlib.asynccontextmanager
    async def firmware_update(self) -> AsyncIterator[None]:
        """Hold the controller for a firmware update: commands are refused as busy and the
        link is released so the updater can own it. Entered only once the visit's link is
        disconnected: an updater connecting beside a link still being torn down shares it
        with BlueZ and loses it (or its GATT objects) mid bring-up."""
        async with self._update_lock:
            self._set(LinkState.UPDATING)
            self._control.set()
            self._wake.set()
            try:
                await self._wait_link_free()
                yield
            finally:
                self._set(LinkState.IDLE, leaving_update=True)
                self._wake.set()

    async def _wait_link_free(self) -> None:
        # A visit still connecting finishes its connect and bring-up, then releases at once;
        # its disconnect is bounded by bleak's own wait. Past all that the link is wedged.
        limit_s = self.settings.connect_timeout_s + BRING_UP_TIMEOUT_S + DISCONNECT_WITHIN_S
        if not await self.clock.wait(self._link_free, limit_s):
            raise ControllerBusy(f"{self.address}: the link supervisor did not let go of the "
                                 f"controller within {limit_s:.0f} s (nothing was uploaded)")

    @property
    def waiting_for_path(self) -> bool:
        """Backing off because no radio could serve it: the radio set wakes it (``sighted``)
        as soon as one can."""
        return self._no_path and self.state is LinkState.BACKOFF

    def sighted(self) -> None:
        """The scanner hears the controller again. A backoff after ``not_found`` (a power cut,
        out of range) ends at once: waiting it out (up to 120 s) would leave the controller
        unavailable while it is heard. Other backoffs are the failure table's to keep."""
        failure = self.failure
        if self.state is LinkState.BACKOFF and failure is not None \
                and failure.kind is FailureClass.NOT_FOUND:
            self._sighted = True
            self._wake.set()

    def bond_reset(self) -> None:
        """A person re-paired the controller: leave BOND_LOST and try again."""
        self._memory = Memory()
        if self.state is LinkState.BOND_LOST:
            self._set(LinkState.IDLE)
        self._wake.set()

    def crashed(self, exc: BaseException) -> None:
        """The supervisor's loop died of a bug (its guard saw it, logs it and restarts it with
        backoff): commands waiting now fail instead of waiting out their deadline."""
        self._set(LinkState.FAULTED, leaving_update=True)
        self._fail_commands(CommandFailed(f"internal error: {type(exc).__name__}: {exc}"))

    # ---- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        next_visit = 0.0
        in_step = True  # just came up, as others may have: the next visit is spread widely
        clock = self.clock
        if self.state is LinkState.FAULTED:
            self._set(LinkState.IDLE)  # started again by its guard after a crash
        while True:
            if self.state in (LinkState.BOND_LOST, LinkState.UPDATING):
                await self._sleep_until_woken(None)
                continue
            if self.policy is LinkPolicy.SHARE and not self._commands:
                self._set(LinkState.IDLE)
                await self._sleep_until_woken(max(0.0, next_visit - clock.now()))
                if self._updating() or (not self._commands and clock.now() < next_visit):
                    continue
            started = clock.now()
            try:
                synced = await self._visit()
                self._memory = self._memory.after_success()
                # A visit pre-empted before its snapshot finished comes back as soon as a
                # slot frees up; a complete one waits for its turn.
                if not synced:
                    next_visit = clock.now()
                elif self.policy is LinkPolicy.SHARE:
                    spread = SPREAD_AFTER_START if in_step else SPREAD_STEADY
                    in_step = False
                    next_visit = started + self.settings.refresh_period_s * VISIT_LEAD * (
                        1 - spread * (self.rng or random).random())
            except Exception as exc:  # every failure is classified in _on_failure
                delay = await self._on_failure(exc)
                if delay is None:
                    raise  # a bug: the guard logs it once and restarts this loop with backoff
                if self._bond_lost():
                    continue  # waits at the top of the loop for a person (bond_reset)
                if delay > 0:
                    self._set(LinkState.BACKOFF)
                    if self._no_path and self.on_stranded is not None:
                        self.on_stranded()  # after BACKOFF: waiting_for_path holds now
                    await self._sleep_until_woken(delay, backoff=True)
                next_visit = 0.0
                in_step = True

    async def _on_failure(self, exc: BaseException) -> float | None:
        """Classify once, decide (pure), then act and log once with the class; returns the
        delay before the next visit, or None when this supervisor stops."""
        failure = classify(exc)
        self.failure = failure
        self._no_path = isinstance(exc, NoPath)
        self.failures[failure.kind.value] += 1
        self.store.set_failure(self.address, failure.kind.value)
        decision = decide(failure.kind, self._memory, can_repair=self.repairer is not None,
                          command_waiting=bool(self._commands), rng=self.rng)
        self._memory = decision.memory
        fields = {"failure_class": failure.kind.value, "error": failure.summary,
                  "attempt": decision.memory.attempt, "action": decision.action.value}
        match decision.action:
            case Action.FAULT:
                return None
            case Action.BOND_LOST:
                self._set(LinkState.BOND_LOST)
                self._log.error("bond_lost", failure_class=failure.kind.value,
                                error=failure.summary, remedy=self._bond_remedy())
                self._fail_commands(PairingError(self._bond_remedy()))
            case Action.REPAIR_BOND | Action.CLEAR_GATT_CACHE:
                # A lost bond, or a GATT cache that survived a firmware change (Service
                # Changed missed): the radio of the last connect resets what it holds.
                self._log.warning("link_failure", **fields)
                await self._repair(decision.action)
            case Action.BACKOFF:
                self._log.warning("link_failure", **fields, retry_in_s=round(decision.delay_s, 2))
        return decision.delay_s

    async def _repair(self, action: Action) -> None:
        if self.repairer is None:
            return
        try:
            await self.repairer(self.address, action)
        except Exception as exc:  # noqa: BLE001 - the next visit classifies what is still wrong
            self._log.warning("repair_failed", error=str(exc))

    def _bond_remedy(self) -> str:
        record = self.registry.find(self.address)
        passkey = " --passkey NNNNNN" if record is not None and record.passkey else ""
        return (f"{self.address} no longer accepts this gateway's bond (the controller was "
                f"reset or its 5 bond slots are full). Clear the bond on the controller if it "
                f"was reset, then run: awgw unpair {self.address} && awgw pair "
                f"{self.address}{passkey}")

    async def _visit(self) -> bool:
        """One connection; True if the full snapshot was taken."""
        urgent = bool(self._commands)
        self._set(LinkState.WAITING_SLOT)
        async with self.scheduler.slot(self.address, Priority.URGENT if urgent
                                       else Priority.BACKGROUND,
                                       kept=self.policy is LinkPolicy.KEEP) as lease:
            if self._updating():
                return False  # an update took the controller while this visit waited
            self._set(LinkState.CONNECTING)
            # A fresh event per visit: the previous link's disconnect callback may fire late
            # and must not end this visit.
            self._link_lost = asyncio.Event()
            self._link_free.clear()
            try:
                async with self.scheduler.connect_turn(lease):
                    link = await self.connector(self.address, self.settings.connect_timeout_s,
                                                self._link_lost.set)
                self.connects += 1
                try:
                    return await self._serve(link, lease)
                finally:
                    self.session = None
                    await link.disconnect()
            finally:
                self._link_free.set()

    async def _serve(self, link: GattLink, lease: Lease) -> bool:
        names_due = (self._names_at is None
                     or self.clock.now() - self._names_at > NAMES_EVERY_S)
        plan = PollPlan(read_channel_names=names_due, time_zone=self.settings.time_zone).scaled(
            self.settings.refresh_period_s)
        session = ControllerSession(link, plan=plan, clock=self.session_clock,
                                    sink=self.store.apply,
                                    problems=self._problem)
        self._set(LinkState.SYNCING)
        end = asyncio.Event()  # the visit is over by design (released, pre-empted)
        synced = asyncio.Event()  # the full snapshot is in
        try:
            async with asyncio.TaskGroup() as tasks:
                children = [
                    tasks.create_task(self._watch_link(lease, end),
                                      name=f"watch {self.address}"),
                    tasks.create_task(self._sync(session, synced, names_due),
                                      name=f"sync {self.address}"),
                    # Commands start as soon as the essential subscriptions are in; their
                    # GATT operations go ahead of the rest of the snapshot (priority lock).
                    tasks.create_task(self._serve_commands(session, lease, end, synced),
                                      name=f"commands {self.address}")]
                # Ending by design is not an exception: an external cancel arriving now must
                # still propagate, which a TaskGroup folding child errors would not guarantee.
                await end.wait()
                for child in children:
                    child.cancel()
            return synced.is_set()
        except BaseExceptionGroup as group:
            # The first real failure is what ended the visit; the rest are its echoes (other
            # tasks failing on the same dead link). Classification wants that one exception.
            raise _leaves(group)[0] from None

    async def _sync(self, session: ControllerSession, synced: asyncio.Event,
                    names_due: bool) -> None:
        await session.bring_up()
        if names_due:
            self._names_at = self.clock.now()
        self._record_seen(session)
        self.session = session
        self._set(LinkState.CONNECTED)
        synced.set()
        if self.policy is LinkPolicy.KEEP:
            await session.run()

    async def _serve_commands(self, session: ControllerSession, lease: Lease,
                              end: asyncio.Event, synced: asyncio.Event) -> None:
        await session.commands_ready.wait()
        served = False
        while True:
            if not self._commands:
                if self.policy is LinkPolicy.SHARE and synced.is_set():
                    self.scheduler.demote(lease)
                    if served:
                        # Notifications of a command's effects trail its confirmation; read
                        # them before letting go so the store is consistent, not half-old.
                        await session.refresh()
                    end.set()  # snapshot taken, commands done: release the link
                    return
                if synced.is_set():
                    self.scheduler.demote(lease)
                self._wake.clear()
                if synced.is_set():
                    await self._wake.wait()
                else:
                    await first_of(self._wake, synced)
                continue
            command = self._commands.popleft()
            if command.future.done():
                continue
            self._log.info("command_start", command=command.name)
            sent_before = session.commands_sent
            try:
                outcome = await command.run(session)
            except BaseException as exc:
                # Its own failure, or the visit cancelling it when the link died under
                # another of its tasks first: either way the command has an answer or a turn.
                self._interrupted(command, exc, sent=session.commands_sent != sent_before)
                raise
            self._log.info("command_done", command=command.name, status=outcome.status.value,
                           detail=outcome.detail)
            served = True
            if not command.future.done():
                command.future.set_result(outcome)

    async def _watch_link(self, lease: Lease, end: asyncio.Event) -> None:
        """End the visit when the link drops, a waiting command needs the slot, or a firmware
        update takes the controller."""
        self._control.clear()
        if not self._updating():  # an update that came while this visit connected goes first
            await first_of(self._link_lost, lease.preempted, self._control)
        if self._link_lost.is_set():
            raise LinkLost(f"{self.address} disconnected")
        self._log.info("link_released", preempted=lease.preempted.is_set(),
                       updating=self.state is LinkState.UPDATING)
        end.set()

    def _problem(self, problem: DecodeProblem) -> None:
        self.store.apply(problem)
        self._log.warning("decode_problem", uuid=problem.uuid, reason=problem.reason,
                          raw=problem.raw.hex())

    def _record_seen(self, session: ControllerSession) -> None:
        version = session.latest.get(Field.FIRMWARE_VERSION)
        serial = session.latest.get(Field.SERIAL)
        fw = version.value if version is not None and isinstance(version.value, str) else None
        previous = self.registry.get(self.address).firmware_version
        if fw is not None and previous is not None and fw != previous:
            # Handles may have moved (GATT caching, Service Changed): the session discovered
            # services afresh on this connect; record the change for the OTA verifier.
            self._log.info("firmware_changed", previous=previous, current=fw)
        self.registry.seen(self.address, firmware_version=fw,
                           serial=serial.value if serial is not None
                           and isinstance(serial.value, str) else None)

    # ---- helpers ---------------------------------------------------------------------------

    def _updating(self) -> bool:
        return self.state is LinkState.UPDATING

    def _bond_lost(self) -> bool:
        return self.state is LinkState.BOND_LOST

    def _set(self, state: LinkState, *, leaving_update: bool = False) -> None:
        """The one place the state changes. While an update holds the controller, the visit
        being wound down must not overwrite UPDATING; only the update's end leaves it."""
        if state is self.state or (self.state is LinkState.UPDATING and not leaving_update):
            return
        self._log.debug("link_state", state=state.value, previous=self.state.value)
        self.state = state
        self.since = self.clock.now()
        self.store.set_link(self.address, state)

    async def _sleep_until_woken(self, seconds: float | None, *, backoff: bool = False) -> None:
        """Sleep until woken or for ``seconds``. In a backoff only a command waiting shortens the
        sleep, and then to at most URGENT_RETRY_S."""
        clock = self.clock
        deadline = None if seconds is None else clock.now() + seconds
        while True:
            self._wake.clear()
            remaining = None if deadline is None else deadline - clock.now()
            if remaining is not None and remaining <= 0:
                return
            if not await clock.wait(self._wake, remaining):
                return
            if not backoff or self._sighted:
                self._sighted = False
                return
            if self._commands and deadline is not None:
                deadline = min(deadline, clock.now() + URGENT_RETRY_S)

    def _interrupted(self, command: _Command, exc: BaseException, *, sent: bool) -> None:
        if command.future.done():
            return
        if not command.retried and (not sent or command.rerun is not None):
            # Nothing reached the controller (its radio died during a read the command starts
            # with), or its write may have and the command can tell on the next link: first in
            # line again for the next visit, through whichever radio serves it then.
            command.retried = True
            if sent and command.rerun is not None:
                command.run = command.rerun
            self._commands.appendleft(command)
            self._log.info("command_retried", command=command.name, write_sent=sent,
                           error=str(exc) or type(exc).__name__)
            return
        reason = (str(exc) if not isinstance(exc, asyncio.CancelledError)
                  else "the link ended while it ran")
        command.future.set_exception(CommandFailed(f"{command.name}: {reason}"))

    def _withdraw(self, command: _Command) -> None:
        command.future.cancel()
        with contextlib.suppress(ValueError):  # already taken by a visit
            self._commands.remove(command)  # no longer urgent: nobody waits for it

    def _fail_commands(self, error: Exception) -> None:
        while self._commands:
            command = self._commands.popleft()
            if not command.future.done():
                command.future.set_exception(error)

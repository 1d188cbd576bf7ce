"""The supervision tree's guards: every long-running part of the daemon runs under a named
guard, so that a defect nobody has found yet costs that part a restart, never the hub. The
daemon's Hub owns the one ``Supervision``; the connection manager and the relays guard their own
children with it.

A guard lets cancellation through (the daemon is stopping, or the part's parent ended it). Any
other exception is logged once (class, message and the traceback, redacted by the log set-up),
marks the part down with its reason (what `awgw status`, STATUS=, `awgw doctor` and the metrics
show) and restarts it after a capped exponential backoff. A part that crashes ``max_crashes``
times within ``window_s`` stays down and says so: a restart loop is not service, and the rest of
the hub goes on without it.

One-shot children (an MQTT command, a cloud job) run under ``child``: a crash is logged once and
counted on their parent part, and the parent goes on with its next child.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from gateway.clock import Clock
from gateway.ops.health import PartHealth, PartState

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    # The first restart comes quickly: most crashes are one bad input, and the part's own
    # retry logic handles what is slow to heal.
    first_s: float = 1.0
    # No part waits longer than this between two restarts while it is still tried.
    cap_s: float = 60.0
    # A part that crashes this often within window_s is crash-looping: it stays down.
    max_crashes: int = 5
    window_s: float = 600.0

    def delay_s(self, crashes: int) -> float:
        return float(min(self.cap_s, self.first_s * 2.0 ** max(0, crashes - 1)))


DEFAULT_POLICY = RestartPolicy()


@dataclass
class _Part:
    name: str
    state: PartState = PartState.UP
    restarts: int = 0
    reason: str | None = None
    child_crashes: int = 0
    crashes: collections.deque[float] = field(default_factory=collections.deque)

    def health(self) -> PartHealth:
        return PartHealth(name=self.name, state=self.state, restarts=self.restarts,
                          reason=self.reason, child_crashes=self.child_crashes)


def root_cause(exc: BaseException) -> BaseException:
    """A part's TaskGroups wrap what went wrong in groups: the first leaf is what happened."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    leaf = root_cause(exc)
    text = str(leaf)
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


class Supervision:
    """The bookkeeping of every guarded part, by name, in the order they started."""

    def __init__(self, clock: Clock, policy: RestartPolicy = DEFAULT_POLICY) -> None:
        self.clock = clock
        self.policy = policy
        self._parts: dict[str, _Part] = {}

    def parts(self) -> list[PartHealth]:
        return [part.health() for part in self._parts.values()]

    def forget(self, name: str) -> None:
        """A part that ended for good by design (a controller unpaired)."""
        self._parts.pop(name, None)

    def _part(self, name: str) -> _Part:
        part = self._parts.get(name)
        if part is None:
            part = self._parts[name] = _Part(name)
        return part

    async def guard(self, name: str, run: Callable[[], Awaitable[None]],
                    *, on_crash: Callable[[BaseException], None] | None = None) -> None:
        """Run ``run()`` under the part ``name`` until it returns (the part finished by design:
        stopped), is cancelled (re-raised), or crash-loops (failed: returns, the part stays
        down). ``on_crash`` lets the part's owner mark its own state (a supervisor's link)."""
        part = self._part(name)
        while True:
            part.state = PartState.UP
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = self.clock.now()
                part.crashes.append(now)
                while part.crashes[0] < now - self.policy.window_s:
                    part.crashes.popleft()
                part.reason = describe(exc)
                if on_crash is not None:
                    on_crash(exc)
                cause = type(root_cause(exc)).__name__
                if len(part.crashes) >= self.policy.max_crashes:
                    part.state = PartState.FAILED
                    log.exception("part_failed", part=name, error_class=cause, error=part.reason,
                                  crashes=len(part.crashes), window_s=self.policy.window_s,
                                  remedy="the rest of the hub keeps running; restart the "
                                         "service (sudo systemctl restart awgw) and report the "
                                         "traceback")
                    return
                delay = self.policy.delay_s(len(part.crashes))
                part.state = PartState.RESTARTING
                log.exception("part_crashed", part=name, error_class=cause, error=part.reason,
                              restart_in_s=round(delay, 2))
                await self.clock.sleep(delay)
                part.restarts += 1
                log.info("part_restarted", part=name, restarts=part.restarts)
                continue
            part.state = PartState.STOPPED
            return

    async def child(self, parent: str, what: str, run: Awaitable[object]) -> bool:
        """One-shot work of ``parent`` (a command, a job): True when it completed; a crash is
        logged once and counted on the parent, never raised into the parent's TaskGroup."""
        try:
            await run
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            part = self._part(parent)
            part.child_crashes += 1
            log.exception("part_child_crashed", part=parent, child=what,
                          error_class=type(root_cause(exc)).__name__, error=describe(exc))
            return False
        return True

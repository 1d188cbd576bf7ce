"""Which radio a connect goes through: a pure function of what each radio hears, its free slots
and connects in progress, what failed through it lately, and where the controller was served
before, so the policy reads (and is tested) as a table.

Home Assistant's stack scores the same inputs per connect; its field failures are what this
adds rules for (anchors.md): a controller heard by two proxies turned permanently unavailable
after one failed connect through the far one (bleak-esphome#438), so a failure weighs against
that radio for this controller only, decays, and never takes the others out of the running;
and a stationary controller hopping between radios of similar signal costs links and history
reads, so it stays where it is (a day at least) unless its radio fails it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.ops.health import RadioKind


class PathReason(StrEnum):
    PINNED = "pinned"  # a person chose the radio (awgw pair --radio)
    STAYS = "stays"  # its radio still serves it: hysteresis
    BEST = "best"  # the best score among those that hear it
    FAILOVER = "failover"  # its radio went down, stopped hearing it or failed it
    SLOT_ELSEWHERE = "slot_elsewhere"  # its radio is full (others' links): served elsewhere
    WAIT_FOR_SLOT = "wait_for_slot"  # radios hear it but none has a free slot: wait, no error
    NOT_HEARD = "not_heard"  # no usable radio hears it
    PIN_UNUSABLE = "pin_unusable"  # pinned to a radio that is down, missing or deaf to it


# A sighting older than this does not count as hearing: a controller advertises every second
# or so while unconnected, so a minute of silence means out of range or switched off.
HEARD_WITHIN_S = 60.0
# At most one voluntary move a day (issue 19): links and history reads cost more than a few
# dB of signal.
STAY_S = 86_400.0
# A voluntary move also needs a clearly better signal. Home Assistant's advertisement
# ownership asks 16 dB of a challenger; a connect is rarer, so less is enough.
SWITCH_MARGIN_DB = 10.0
# Each connect already in progress on a radio: its controller's time is shared.
CONNECTING_PENALTY_DB = 10.0
# The last free slot is worth keeping for a person's command or the phone through a proxy.
LAST_SLOT_PENALTY_DB = 5.0
# Each recent failure through a radio to this controller; halves every FAILURE_HALF_LIFE_S.
FAILURE_PENALTY_DB = 20.0
FAILURE_HALF_LIFE_S = 600.0
# Failures (decayed) through its own radio at which a controller is moved off it at once:
# one failure within the last half-life (a weight of 1 decays from the moment it is recorded,
# so a threshold of 1 would never be reached by a single failure read a moment later).
FAILOVER_AFTER = 0.5


@dataclass(frozen=True)
class RadioView:
    name: str
    kind: RadioKind
    up: bool
    free: int  # slots free now
    limit: int
    connecting: int = 0  # connects in progress through it


@dataclass(frozen=True)
class Sighting:
    rssi: int
    age_s: float


@dataclass(frozen=True)
class PathMemory:
    """Where the controller was served, since when, and what failed through which radio
    (failure weights at ``at``; decay is applied when read)."""

    current: str | None = None
    since: float | None = None
    failures: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # weight, at

    def failure_weight(self, radio: str, now: float) -> float:
        weight, at = self.failures.get(radio, (0.0, now))
        return float(weight * 0.5 ** (max(0.0, now - at) / FAILURE_HALF_LIFE_S))

    def failed(self, radio: str, now: float) -> PathMemory:
        return PathMemory(self.current, self.since, {
            **self.failures, radio: (self.failure_weight(radio, now) + 1.0, now)})

    def served(self, radio: str, now: float) -> PathMemory:
        """A connect through ``radio`` succeeded: it is the controller's radio now, and its
        failures are forgiven."""
        moved = radio != self.current
        failures = {r: f for r, f in self.failures.items() if r != radio}
        return PathMemory(radio, now if moved or self.since is None else self.since, failures)


@dataclass(frozen=True)
class Constraints:
    pinned: str | None = None
    # A passkey-bonded controller: its bond is on the hub, and the proxy API has no passkey
    # entry, so only the hub's own adapters can serve it.
    local_only: bool = False


@dataclass(frozen=True)
class PathChoice:
    radio: str | None
    reason: PathReason
    scores: Mapping[str, float] = field(default_factory=dict)


def score(radio: RadioView, sighting: Sighting, memory: PathMemory, now: float) -> float:
    return (sighting.rssi - CONNECTING_PENALTY_DB * radio.connecting
            - (LAST_SLOT_PENALTY_DB if radio.free == 1 else 0.0)
            - FAILURE_PENALTY_DB * memory.failure_weight(radio.name, now))


def choose(radios: Sequence[RadioView], heard: Mapping[str, Sighting], memory: PathMemory,
           constraints: Constraints, now: float) -> PathChoice:
    """The radio the next connect should go through; ``heard`` is by radio name."""
    def hears(radio: RadioView) -> bool:
        sighting = heard.get(radio.name)
        return radio.up and sighting is not None and sighting.age_s <= HEARD_WITHIN_S

    candidates = [r for r in radios if hears(r)
                  and (not constraints.local_only or r.kind is RadioKind.ADAPTER)]
    if constraints.pinned is not None:
        pinned = [r for r in candidates if r.name == constraints.pinned]
        if not pinned:
            return PathChoice(None, PathReason.PIN_UNUSABLE)
        if pinned[0].free <= 0:
            return PathChoice(None, PathReason.WAIT_FOR_SLOT)
        return PathChoice(pinned[0].name, PathReason.PINNED)
    if not candidates:
        return PathChoice(None, PathReason.NOT_HEARD)
    scores = {r.name: score(r, heard[r.name], memory, now) for r in candidates}
    free = [r for r in candidates if r.free > 0]
    if not free:
        return PathChoice(None, PathReason.WAIT_FOR_SLOT, scores)
    def best_of(radios: Sequence[RadioView]) -> RadioView:
        # Ties go to the hub's own adapter (no Wi-Fi hop), then by name, so choices repeat.
        return max(radios, key=lambda r: (scores[r.name], r.kind is RadioKind.ADAPTER, r.name))

    best = best_of(free)
    current = next((r for r in candidates if r.name == memory.current), None)
    failing = memory.current is not None and (
        current is None or memory.failure_weight(memory.current, now) >= FAILOVER_AFTER)
    if failing:
        # Another radio first, however close the scores: the one that failed it is tried
        # again only when no other can serve it.
        others = [r for r in free if r.name != memory.current]
        moved = best_of(others) if others else best
        return PathChoice(moved.name, PathReason.FAILOVER, scores)
    if current is None:
        return PathChoice(best.name, PathReason.BEST, scores)
    if current.free <= 0:
        # Never unavailable while a radio that hears it has a free slot (issue 19).
        return PathChoice(best.name, PathReason.SLOT_ELSEWHERE, scores)
    settled = memory.since is not None and now - memory.since < STAY_S
    if best is current or settled or scores[best.name] < scores[current.name] + SWITCH_MARGIN_DB:
        return PathChoice(current.name, PathReason.STAYS, scores)
    return PathChoice(best.name, PathReason.BEST, scores)

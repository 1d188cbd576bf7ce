"""What a supervisor does after a failed visit: a pure function of the failure's class and what
earlier failures left behind, so the policy can be read, and tested, as a table.

The supervisor carries out the decision (log, re-pair, sleep, fault); nothing here has effects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum

from gateway.link.failures import POLICIES, FailureClass

# Consecutive GATT mismatches (missing characteristics, undecodable snapshots) before the
# GATT cache is presumed stale: one can be a glitch, two in a row after reconnecting are not.
STALE_CACHE_AFTER = 2
# A person waits on a command: retry sooner than the class's backoff, but not in a tight loop.
URGENT_RETRY_S = 2.0


class Action(StrEnum):
    BACKOFF = "backoff"  # sleep for the class's delay, then visit again
    REPAIR_BOND = "remove_bond_and_repair"  # the one automatic re-pair after a lost bond
    CLEAR_GATT_CACHE = "clear_gatt_cache_and_repair"  # BlueZ's cache outlived a firmware change
    BOND_LOST = "bond_lost"  # wait for a person to re-pair
    FAULT = "fault"  # a programming error: stop this supervisor, never retry


@dataclass(frozen=True)
class Memory:
    """What earlier failures left: reset by a good visit (``after_success``), except the
    re-pair, which is spent until a person pairs the controller again."""

    attempt: int = 0  # consecutive failed visits
    repaired: bool = False
    cache_cleared: bool = False

    def after_success(self) -> Memory:
        return Memory(repaired=self.repaired)


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float
    memory: Memory


def decide(kind: FailureClass, memory: Memory, *, can_repair: bool, command_waiting: bool,
           rng: random.Random | None = None) -> Decision:
    if kind is FailureClass.PROGRAMMING:
        return Decision(Action.FAULT, 0.0, memory)
    if kind is FailureClass.AUTHENTICATION:
        if can_repair and not memory.repaired:
            return Decision(Action.REPAIR_BOND, 0.0, replace(memory, repaired=True))
        return Decision(Action.BOND_LOST, 0.0, memory)
    memory = replace(memory, attempt=memory.attempt + 1)
    if (kind is FailureClass.GATT_MISMATCH and memory.attempt >= STALE_CACHE_AFTER
            and can_repair and not memory.cache_cleared):
        return Decision(Action.CLEAR_GATT_CACHE, 0.0, replace(memory, cache_cleared=True))
    delay = POLICIES[kind].delay(memory.attempt, rng)
    if command_waiting:
        delay = min(delay, URGENT_RETRY_S)
    return Decision(Action.BACKOFF, delay, memory)

"""The supervisor's policy after a failure, as a table: failure class and what earlier
failures left -> what to do, how long to wait, and what is remembered."""

from __future__ import annotations

import random

import pytest

from gateway.link.decision import (
    STALE_CACHE_AFTER,
    URGENT_RETRY_S,
    Action,
    Memory,
    decide,
)
from gateway.link.failures import POLICIES, FailureClass

FRESH = Memory()
REPAIRED = Memory(repaired=True)

TABLE = [
    # kind, memory, can_repair, command_waiting -> action, memory after
    (FailureClass.PROGRAMMING, FRESH, True, False, Action.FAULT, FRESH),
    (FailureClass.AUTHENTICATION, FRESH, True, False, Action.REPAIR_BOND, REPAIRED),
    (FailureClass.AUTHENTICATION, REPAIRED, True, False, Action.BOND_LOST, REPAIRED),
    (FailureClass.AUTHENTICATION, FRESH, False, False, Action.BOND_LOST, FRESH),
    (FailureClass.GATT_MISMATCH, FRESH, True, False, Action.BACKOFF, Memory(attempt=1)),
    (FailureClass.GATT_MISMATCH, Memory(attempt=STALE_CACHE_AFTER - 1), True, False,
     Action.CLEAR_GATT_CACHE, Memory(attempt=STALE_CACHE_AFTER, cache_cleared=True)),
    (FailureClass.GATT_MISMATCH, Memory(attempt=5, cache_cleared=True), True, False,
     Action.BACKOFF, Memory(attempt=6, cache_cleared=True)),
    (FailureClass.GATT_MISMATCH, Memory(attempt=1), False, False, Action.BACKOFF,
     Memory(attempt=2)),
    (FailureClass.LINK_LOST, Memory(attempt=3), True, False, Action.BACKOFF, Memory(attempt=4)),
    (FailureClass.NOT_FOUND, FRESH, True, True, Action.BACKOFF, Memory(attempt=1)),
    (FailureClass.TIMEOUT, REPAIRED, True, False, Action.BACKOFF,
     Memory(attempt=1, repaired=True)),
]


@pytest.mark.parametrize(("kind", "memory", "can_repair", "waiting", "action", "after"), TABLE)
def test_decision_table(kind: FailureClass, memory: Memory, can_repair: bool, waiting: bool,
                        action: Action, after: Memory) -> None:
    decision = decide(kind, memory, can_repair=can_repair, command_waiting=waiting,
                      rng=random.Random(1))
    assert (decision.action, decision.memory) == (action, after)
    if action is Action.BACKOFF:
        policy = POLICIES[kind]
        base = min(policy.cap_s, policy.first_s * 2 ** (after.attempt - 1))
        expected_max = min(base * 1.2, URGENT_RETRY_S) if waiting else base * 1.2
        assert 0 < decision.delay_s <= expected_max + 1e-9
        if not waiting:
            assert decision.delay_s >= base * 0.8 - 1e-9
    else:
        assert decision.delay_s == 0.0


@pytest.mark.parametrize("kind", [k for k in FailureClass
                                  if k not in (FailureClass.PROGRAMMING,
                                               FailureClass.AUTHENTICATION)])
def test_backoff_grows_and_is_capped(kind: FailureClass) -> None:
    memory, delays = Memory(cache_cleared=True), []
    for _ in range(12):
        decision = decide(kind, memory, can_repair=False, command_waiting=False,
                          rng=random.Random(7))
        memory = decision.memory
        delays.append(decision.delay_s)
    cap = POLICIES[kind].cap_s
    assert max(delays) <= cap * 1.2 and delays[-1] >= cap * 0.8
    assert memory.attempt == 12


def test_a_good_visit_forgets_failures_but_not_the_spent_repair() -> None:
    worn = Memory(attempt=7, repaired=True, cache_cleared=True)
    assert worn.after_success() == Memory(repaired=True)

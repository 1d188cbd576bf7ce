"""The path per connect, as a table: which radio, and why."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.link.paths import (
    FAILURE_HALF_LIFE_S,
    HEARD_WITHIN_S,
    STAY_S,
    Constraints,
    PathMemory,
    PathReason,
    RadioView,
    Sighting,
    choose,
)
from gateway.ops.health import RadioKind

NOW = 1_000_000.0
HUB = RadioView("hci0", RadioKind.ADAPTER, up=True, free=2, limit=3)
SHED = RadioView("shed", RadioKind.PROXY, up=True, free=3, limit=3)
GATE = RadioView("gate", RadioKind.PROXY, up=True, free=3, limit=3)
ALL = [HUB, SHED, GATE]


def seen(**rssi: int) -> dict[str, Sighting]:
    return {name: Sighting(value, 1.0) for name, value in rssi.items()}


def on(radio: str, since: float = NOW - 10) -> PathMemory:
    return PathMemory(radio, since)


CASES = [
    # name, radios, heard, memory, constraints, (radio, reason)
    ("new: the strongest", ALL, seen(hci0=-80, shed=-60, gate=-75), PathMemory(),
     Constraints(), ("shed", PathReason.BEST)),
    ("a tie goes to the hub's own adapter", ALL, seen(hci0=-70, shed=-70), PathMemory(),
     Constraints(), ("hci0", PathReason.BEST)),
    ("heard by none", ALL, {}, PathMemory(), Constraints(), (None, PathReason.NOT_HEARD)),
    ("a stale sighting is not hearing", ALL, {"shed": Sighting(-50, HEARD_WITHIN_S + 1)},
     PathMemory(), Constraints(), (None, PathReason.NOT_HEARD)),
    ("a radio that is down hears nothing",
     [HUB, RadioView("shed", RadioKind.PROXY, up=False, free=3, limit=3)],
     seen(shed=-50), PathMemory(), Constraints(), (None, PathReason.NOT_HEARD)),
    ("slots all taken: wait, never an error", [RadioView("shed", RadioKind.PROXY, True, 0, 3)],
     seen(shed=-50), PathMemory(), Constraints(), (None, PathReason.WAIT_FOR_SLOT)),
    ("a full radio is passed over for one with a slot",
     [RadioView("shed", RadioKind.PROXY, True, 0, 3), GATE], seen(shed=-50, gate=-85),
     PathMemory(), Constraints(), ("gate", PathReason.BEST)),
    ("stays on its radio within a day, however much better another is", ALL,
     seen(hci0=-85, shed=-50), on("hci0"), Constraints(), ("hci0", PathReason.STAYS)),
    ("after a day, moves for a clearly better signal", ALL, seen(hci0=-85, shed=-50),
     on("hci0", NOW - STAY_S - 1), Constraints(), ("shed", PathReason.BEST)),
    ("after a day, stays for a slightly better one", ALL, seen(hci0=-65, shed=-60),
     on("hci0", NOW - STAY_S - 1), Constraints(), ("hci0", PathReason.STAYS)),
    ("its radio went down: fails over at once", [RadioView("hci0", RadioKind.ADAPTER, False,
                                                           3, 3), SHED],
     seen(hci0=-50, shed=-80), on("hci0"), Constraints(), ("shed", PathReason.FAILOVER)),
    ("its radio no longer hears it: fails over", ALL, seen(gate=-88), on("shed"),
     Constraints(), ("gate", PathReason.FAILOVER)),
    ("one failed connect through its radio: the next goes elsewhere (bleak-esphome#438)", ALL,
     seen(shed=-60, gate=-80), on("shed").failed("shed", NOW), Constraints(),
     ("gate", PathReason.FAILOVER)),
    ("its radio full of others' links: served elsewhere, not unavailable",
     [RadioView("shed", RadioKind.PROXY, True, 0, 3), GATE], seen(shed=-60, gate=-80),
     on("shed"), Constraints(), ("gate", PathReason.SLOT_ELSEWHERE)),
    ("connects in progress weigh against a radio", [HUB, RadioView("shed", RadioKind.PROXY,
                                                                   True, 3, 3, connecting=2)],
     seen(hci0=-70, shed=-60), PathMemory(), Constraints(), ("hci0", PathReason.BEST)),
    ("pinned: only its radio", ALL, seen(hci0=-50, shed=-90), PathMemory(),
     Constraints(pinned="shed"), ("shed", PathReason.PINNED)),
    ("pinned to a radio that cannot hear it: says so, never elsewhere", ALL, seen(hci0=-50),
     PathMemory(), Constraints(pinned="shed"), (None, PathReason.PIN_UNUSABLE)),
    ("pinned to a radio named in no config", ALL, seen(hci0=-50), PathMemory(),
     Constraints(pinned="attic"), (None, PathReason.PIN_UNUSABLE)),
    ("pinned and full: waits", [RadioView("shed", RadioKind.PROXY, True, 0, 3)],
     seen(shed=-50), PathMemory(), Constraints(pinned="shed"),
     (None, PathReason.WAIT_FOR_SLOT)),
    ("a passkey controller stays on the hub's adapters", ALL, seen(hci0=-90, shed=-40),
     PathMemory(), Constraints(local_only=True), ("hci0", PathReason.BEST)),
    ("a passkey controller heard only by proxies is not heard", ALL, seen(shed=-40),
     PathMemory(), Constraints(local_only=True), (None, PathReason.NOT_HEARD)),
]


@pytest.mark.parametrize(("radios", "heard", "memory", "constraints", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_path_table(radios: list[RadioView], heard: dict[str, Sighting],
                        memory: PathMemory, constraints: Constraints,
                        expected: tuple[str | None, PathReason]) -> None:
    choice = choose(radios, heard, memory, constraints, NOW)
    assert (choice.radio, choice.reason) == expected


def test_a_failure_is_forgiven_with_time_and_by_success() -> None:
    memory = on("shed").failed("shed", NOW)
    assert memory.failure_weight("shed", NOW) == 1.0
    assert memory.failure_weight("shed", NOW + FAILURE_HALF_LIFE_S) == pytest.approx(0.5)
    later = NOW + 3 * FAILURE_HALF_LIFE_S
    assert choose(ALL, seen(shed=-60, gate=-80), memory, Constraints(), later).radio == "shed"
    assert memory.served("shed", NOW).failure_weight("shed", NOW) == 0.0


def test_serving_elsewhere_restarts_the_day() -> None:
    memory = on("hci0", NOW - STAY_S - 5).served("shed", NOW)
    assert memory.current == "shed" and memory.since == NOW
    assert on("shed", 5.0).served("shed", NOW).since == 5.0


radio_views = st.builds(RadioView, st.sampled_from(["hci0", "hci1", "shed", "gate"]),
                        st.sampled_from(list(RadioKind)), st.booleans(), st.integers(0, 9),
                        st.integers(1, 9), st.integers(0, 3))


@given(st.lists(radio_views, max_size=4, unique_by=lambda r: r.name),
       st.dictionaries(st.sampled_from(["hci0", "hci1", "shed", "gate"]),
                       st.builds(Sighting, st.integers(-110, -20), st.floats(0, 120))),
       st.sampled_from([None, "hci0", "shed"]), st.booleans(), st.floats(0, 2 * STAY_S))
def test_a_chosen_radio_is_always_up_hears_it_has_a_slot_and_keeps_the_constraints(
        radios: list[RadioView], heard: dict[str, Sighting], current: str | None,
        local_only: bool, age: float) -> None:
    memory = PathMemory(current, NOW - age)
    choice = choose(radios, heard, memory, Constraints(local_only=local_only), NOW)
    usable = [r for r in radios if r.up and r.name in heard
              and heard[r.name].age_s <= HEARD_WITHIN_S and r.free > 0
              and (not local_only or r.kind is RadioKind.ADAPTER)]
    if choice.radio is None:
        # Never unavailable while a radio that may serve it hears it and has a free slot.
        assert not usable, choice
    else:
        assert choice.radio in {r.name for r in usable}

"""HubHealth's verdict for the watchdog: a radio problem must last RADIO_GRACE_S before the
pings stop (our own power cycle is not a wedge), a supervisor stuck connecting past its own
timeout stops them at once, and the status names the reason."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from gateway.bluez.probe import AdapterProbe
from gateway.daemon.health import RADIO_GRACE_S, STUCK_MARGIN_S, HubHealth
from gateway.link.manager import ConnectionManager
from gateway.ops.models import LinkState

CONNECT_TIMEOUT_S = 15.0


class FakeProbe:
    adapter = "hci0"

    def __init__(self) -> None:
        self.problem: str | None = None

    async def check(self) -> str | None:
        return self.problem

    def close(self) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t


def health() -> tuple[HubHealth, FakeProbe, FakeClock, dict[str, Any]]:
    clock = FakeClock()
    supervisors: dict[str, Any] = {}
    manager = SimpleNamespace(settings=SimpleNamespace(connect_timeout_s=CONNECT_TIMEOUT_S),
                              supervisors=supervisors, scanner=SimpleNamespace(scanning=True))
    probe = FakeProbe()
    hub = HubHealth(cast(ConnectionManager, manager), cast(AdapterProbe, probe), clock=clock)
    return hub, probe, clock, supervisors


async def test_a_radio_problem_stops_the_pings_only_after_the_grace() -> None:
    hub, probe, clock, _ = health()
    await hub.probe_once()
    assert hub.progressing() == (True, None) and hub.radio().ok
    probe.problem = "adapter hci0 is powered off"
    await hub.probe_once()
    assert hub.progressing() == (True, None)  # a power cycle of our own looks like this
    assert hub.radio().reason == "adapter hci0 is powered off"
    clock.t += RADIO_GRACE_S / 2
    await hub.probe_once()
    assert hub.progressing()[0]
    clock.t += RADIO_GRACE_S
    await hub.probe_once()
    assert hub.progressing() == (False, "adapter hci0 is powered off")
    probe.problem = None
    await hub.probe_once()
    assert hub.progressing() == (True, None) and hub.radio().ok


async def test_a_supervisor_stuck_connecting_stops_the_pings() -> None:
    hub, _, clock, supervisors = health()
    await hub.probe_once()
    supervisors["C0:FF:EE:00:00:01"] = SimpleNamespace(state=LinkState.CONNECTING,
                                                       since=clock.t, clock=clock)
    supervisors["C0:FF:EE:00:00:02"] = SimpleNamespace(state=LinkState.WAITING_SLOT,
                                                       since=clock.t - 3600, clock=clock)
    clock.t += CONNECT_TIMEOUT_S + STUCK_MARGIN_S - 1
    assert hub.progressing() == (True, None)  # still inside its own connect timeout
    clock.t += 2
    ok, reason = hub.progressing()
    assert not ok and reason == "supervisor stuck connecting: C0:FF:EE:00:00:01"
    assert hub.radio().reason == reason  # waiting for a slot for an hour is not stuck
    supervisors["C0:FF:EE:00:00:01"].state = LinkState.CONNECTED
    assert hub.progressing() == (True, None)

"""The radio set over fake radios: which radio each connect goes through, waits that move when
a radio dies, failures that send the next connect elsewhere, pins and passkeys kept, and typed
refusals for a controller no radio may serve."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import TransportError
from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.smp.ble import BleSmpTransport
from gateway.clock import LoopClock
from gateway.link.decision import Action
from gateway.link.paths import PathReason, Sighting
from gateway.link.radios import fleet
from gateway.link.radios.base import NoPath
from gateway.link.radios.fleet import RadioSet
from gateway.link.scheduler import Priority, SlotScheduler
from gateway.ops.health import RadioKind
from gateway.store.registry import Registry

ADDRESS = "C0:FF:EE:00:00:01"
OTHER = "C0:FF:EE:00:00:02"
WITHIN_S = 5.0


class FakeRadio:
    def __init__(self, name: str, kind: RadioKind, slots: int = 1) -> None:
        self.name = name
        self.kind = kind
        self.scheduler = SlotScheduler(slots)
        self.is_up = True
        self.hears: dict[str, int] = {}
        self.fail_next: int = 0
        self.connects: list[str] = []
        self.released: list[str] = []
        self.forgot: list[str] = []
        self.refreshed: list[str] = []

    @property
    def up(self) -> bool:
        return self.is_up

    @property
    def reason(self) -> str | None:
        return None if self.is_up else f"{self.name} is down"

    def heard(self, address: str) -> Sighting | None:
        rssi = self.hears.get(address)
        return None if rssi is None or not self.is_up else Sighting(rssi, 1.0)

    async def connect(self, address: str, timeout_s: float,
                      on_disconnect: Callable[[], None]) -> GattLink:
        await asyncio.sleep(0)
        self.connects.append(address)
        if self.fail_next:
            self.fail_next -= 1
            raise TransportError(f"connect {address} through {self.name} failed")
        return object()  # type: ignore[return-value]  # the set never touches the link

    async def refresh_services(self, address: str) -> bool:
        self.refreshed.append(address)
        return self.kind is RadioKind.PROXY

    async def forget_bond(self, address: str) -> bool:
        self.forgot.append(address)
        return self.kind is RadioKind.PROXY

    async def release_orphan(self, address: str) -> bool:
        self.released.append(address)
        return False

    def smp_transport(self, address: str) -> BleSmpTransport:
        raise NotImplementedError

    async def run(self) -> None:
        await asyncio.Event().wait()

    def detail(self) -> Mapping[str, str]:
        return {}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.add(ADDRESS, name="AutoWatering", bonded=True)
    registry.add(OTHER, name="AutoWatering", bonded=True)
    return registry


def radios() -> tuple[FakeRadio, FakeRadio, FakeRadio]:
    return (FakeRadio("hci0", RadioKind.ADAPTER), FakeRadio("garden", RadioKind.PROXY),
            FakeRadio("shed", RadioKind.PROXY))


async def visit(radio_set: RadioSet, address: str) -> str:
    async with radio_set.slot(address, Priority.BACKGROUND, kept=False) as lease:
        async with radio_set.connect_turn(lease):
            await radio_set.connect(address, 1.0, lambda: None)
        assert lease.radio is not None
        return lease.radio


async def test_a_connect_goes_through_the_radio_that_hears_it_best(registry: Registry) -> None:
    hub, garden, shed = radios()
    hub.hears[ADDRESS], garden.hears[ADDRESS], shed.hears[ADDRESS] = -90, -55, -70
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert await visit(radio_set, ADDRESS) == "garden"
    assert garden.connects == [ADDRESS] and not hub.connects
    assert radio_set.serving(ADDRESS) == "garden"


async def test_a_wait_for_a_full_radio_moves_when_that_radio_dies(registry: Registry) -> None:
    hub, garden, shed = radios()
    garden.hears = {ADDRESS: -50, OTHER: -50}
    shed.hears = {ADDRESS: -80}
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    shed.scheduler.resize(0)  # full with others' links: ADDRESS must queue on the garden
    async with radio_set.slot(OTHER, Priority.BACKGROUND, kept=True):  # the garden's one slot
        waiter = asyncio.create_task(visit(radio_set, ADDRESS))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        garden.is_up = False
        garden.scheduler.close("garden lost power")
        shed.scheduler.resize(1)
        async with asyncio.timeout(WITHIN_S):
            assert await waiter == "shed"  # never an error: it waited, then moved


async def test_one_failed_connect_sends_the_next_through_another_radio(
        registry: Registry) -> None:
    """bleak-esphome#438: one failure through the far proxy must not strand the controller."""
    hub, garden, shed = radios()
    garden.hears[ADDRESS], shed.hears[ADDRESS] = -60, -64
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert await visit(radio_set, ADDRESS) == "garden"
    garden.fail_next = 1
    with pytest.raises(TransportError):
        await visit(radio_set, ADDRESS)
    assert await visit(radio_set, ADDRESS) == "shed"


async def test_a_pin_to_a_radio_not_configured_is_refused_with_its_remedy(
        registry: Registry) -> None:
    hub, garden, shed = radios()
    hub.hears = {ADDRESS: -60, OTHER: -60}
    registry.add(ADDRESS, name="AutoWatering", bonded=True, radio="barn")
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    with pytest.raises(NoPath, match=r"pinned to radio 'barn', which is not configured.*"
                                     r"awgw pair"):
        await visit(radio_set, ADDRESS)
    assert await visit(radio_set, OTHER) == "hci0"  # the others keep being served


async def test_pinned_and_passkey_controllers_stay_where_they_must(registry: Registry) -> None:
    hub, garden, shed = radios()
    hub.hears[ADDRESS], garden.hears[ADDRESS], shed.hears[ADDRESS] = -85, -50, -70
    hub.hears[OTHER], garden.hears[OTHER] = -88, -45
    registry.add(ADDRESS, name="AutoWatering", bonded=True, radio="shed")
    registry.add(OTHER, name="AutoWatering", bonded=True, passkey=True)
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert await visit(radio_set, ADDRESS) == "shed"
    assert await visit(radio_set, OTHER) == "hci0"
    shed.is_up = False  # a pin is never routed elsewhere
    with pytest.raises(NoPath, match="pin_unusable"):
        await visit(radio_set, ADDRESS)


async def test_a_restart_keeps_each_controller_on_its_radio(registry: Registry) -> None:
    """The choice's memory is in the registry: after a restart a controller stays where it
    was served (at most one voluntary move a day), though a radio that hears it a little
    better would win a fresh choice."""
    hub, garden, shed = radios()
    registry.add(ADDRESS, name="AutoWatering", bonded=True)
    garden.hears[ADDRESS], shed.hears[ADDRESS] = -60, -75
    before = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert await visit(before, ADDRESS) == "garden"
    garden.hears[ADDRESS], shed.hears[ADDRESS] = -72, -60  # shed now 12 dB better
    after = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert after.serving(ADDRESS) == "garden"
    assert await visit(after, ADDRESS) == "garden"
    assert after.last_choice[ADDRESS].reason is PathReason.STAYS
    # A restart is no failover: a radio that fails it still moves it at once.
    garden.is_up = False
    assert await visit(after, ADDRESS) == "shed"
    assert registry.get(ADDRESS).served_by == "shed"


async def test_a_controller_waiting_for_a_path_is_woken_when_one_opens(
        registry: Registry) -> None:
    """A pinned controller whose proxy lost its power waits in a not_found backoff (up to
    120 s): when the proxy is back and hears it again, the wait ends within a recheck, not at
    the backoff's end (a proxy that reconnects repeats adverts habluetooth reports once)."""
    hub, garden, shed = radios()
    hub.hears[ADDRESS], garden.hears[ADDRESS] = -80, -50
    registry.add(ADDRESS, name="AutoWatering", bonded=True, radio="garden")
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    garden.is_up = False
    assert not radio_set.has_path(ADDRESS)
    assert ADDRESS not in radio_set.last_choice  # a look: the next connect logs its own reason
    woken = asyncio.Event()
    waiting = {ADDRESS}
    rounds: list[int] = []

    def stranded() -> set[str]:
        rounds.append(len(waiting))
        return waiting

    async with asyncio.TaskGroup() as tasks:
        watch = tasks.create_task(radio_set.watch_paths(stranded, lambda _a: woken.set()))
        radio_set.stranded()
        await asyncio.sleep(fleet.PATH_RECHECK_S * 2)
        assert not woken.is_set()  # the hub hears it, but the pin holds it to the garden
        garden.is_up = True
        async with asyncio.timeout(fleet.PATH_RECHECK_S * 2):
            await woken.wait()
        # Served again: the next round finds nobody waiting, and from then on no timer runs.
        waiting.clear()
        await asyncio.sleep(fleet.PATH_RECHECK_S * 1.5)
        idle_from = len(rounds)
        await asyncio.sleep(fleet.PATH_RECHECK_S * 2.5)
        assert rounds[idle_from - 1] == 0 and len(rounds) == idle_from, rounds
        watch.cancel()


async def test_an_unheard_controller_waits_for_a_sighting_after_orphans_are_released(
        registry: Registry) -> None:
    """A controller still held by an earlier run's link does not advertise: its orphaned link
    is released so it advertises again; no radio is tried blind (a direct connect holds the
    adapter's connect turn for its whole timeout)."""
    hub, garden, shed = radios()
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    with pytest.raises(NoPath, match="not_heard"):
        await visit(radio_set, ADDRESS)
    assert hub.released == [ADDRESS] and not hub.connects and not garden.connects
    garden.hears[ADDRESS] = -60
    assert await visit(radio_set, ADDRESS) == "garden"


async def test_with_one_adapter_an_unheard_controller_is_connected_directly(
        registry: Registry) -> None:
    """The classic hub: its one adapter reaches a silent controller by address, as before."""
    hub = FakeRadio("hci0", RadioKind.ADAPTER)
    radio_set = RadioSet([hub], registry, LoopClock())
    assert await visit(radio_set, ADDRESS) == "hci0"


async def test_first_choices_wait_for_a_proxy_still_connecting_at_start(
        registry: Registry) -> None:
    """A first visit made before the proxies are up would settle the controller on a worse
    radio for a day (paths.STAY_S)."""
    hub, garden, shed = radios()
    hub.hears[ADDRESS], garden.hears[ADDRESS] = -85, -50
    garden.is_up = False
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0.2, grace_s=5.0)

    async def proxy_connects() -> None:
        await asyncio.sleep(0.5)
        garden.is_up = True

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(proxy_connects())
        assert await visit(radio_set, ADDRESS) == "garden"


async def test_a_proxy_that_never_comes_up_delays_the_start_only_by_the_grace(
        registry: Registry) -> None:
    hub, garden, shed = radios()
    hub.hears[ADDRESS] = -70
    garden.is_up = False
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0.1, grace_s=0.5)
    async with asyncio.timeout(2.0):
        assert await visit(radio_set, ADDRESS) == "hci0"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["visit", "fail", "cancel",
                                                              "down", "up"])),
                min_size=1, max_size=30))
async def test_no_path_leaks_a_slot(tmp_path_factory: pytest.TempPathFactory,
                                    steps: list[tuple[int, str]]) -> None:
    """Visits that succeed, fail, are cancelled mid-wait, and radios that die and come back:
    afterwards every radio's slots are free again (issue 19: no leak across radios)."""
    registry = Registry(tmp_path_factory.mktemp("reg") / "registry.sqlite3")
    addresses = [f"C0:FF:EE:00:01:{i:02X}" for i in range(6)]
    for address in addresses:
        registry.add(address, name="AutoWatering", bonded=True)
    hub, garden, shed = radios()
    for radio in (hub, garden, shed):
        radio.hears = {a: -60 - i for i, a in enumerate(addresses)}
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    proxies = {"garden": garden, "shed": shed}
    async with asyncio.TaskGroup() as tasks:
        pending: list[asyncio.Task[str | None]] = []
        for index, action in steps:
            address = addresses[index]
            if action in ("visit", "fail", "cancel"):
                radio = garden if index % 2 else shed
                radio.fail_next += action == "fail"
                task = tasks.create_task(_quietly(visit(radio_set, address)))
                pending.append(task)
                if action == "cancel":
                    await asyncio.sleep(0)
                    task.cancel()
            elif action == "down":
                proxy = proxies["garden" if index % 2 else "shed"]
                proxy.is_up = False
                proxy.scheduler.close(f"{proxy.name} lost power")
            else:
                proxy = proxies["garden" if index % 2 else "shed"]
                proxy.is_up = True
                proxy.scheduler.resize(1)
            await asyncio.sleep(0)
        for proxy in proxies.values():  # every radio back, so every waiter can finish
            proxy.is_up = True
            proxy.scheduler.resize(1)
    for radio in (hub, garden, shed):
        assert radio.scheduler.leases == [], radio.name
    assert radio_set.routes == {}


async def _quietly(visiting: Awaitable[str]) -> str | None:
    try:
        async with asyncio.timeout(WITHIN_S):
            return await visiting
    except (TransportError, NoPath):
        return None


async def test_a_lost_bond_is_forgotten_by_the_radio_the_last_connect_went_through(
        registry: Registry) -> None:
    """Through a proxy the bond is the ESP32's: the re-pair after an authentication failure
    went the BlueZ way (removed the hub adapter's own bond, paired on it) whatever the radio."""
    hub, garden, shed = radios()
    garden.hears[ADDRESS], hub.hears[OTHER] = -50, -40
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert await visit(radio_set, ADDRESS) == "garden"
    assert await radio_set.reset(ADDRESS, Action.REPAIR_BOND) is None  # the proxy forgot it itself
    assert garden.forgot == [ADDRESS] and not hub.forgot and not shed.forgot
    assert await visit(radio_set, OTHER) == "hci0"
    assert await radio_set.reset(OTHER, Action.REPAIR_BOND) is hub  # re-paired through it
    garden.hears[OTHER] = -30
    del hub.hears[OTHER]  # out of the adapter's range now: the next connect is the garden's
    garden.fail_next = 1
    with pytest.raises(TransportError):
        await visit(radio_set, OTHER)  # the attempt counts, though it failed
    assert await radio_set.reset(OTHER, Action.REPAIR_BOND) is None
    assert garden.forgot == [ADDRESS, OTHER]


async def test_a_stale_gatt_table_through_a_proxy_costs_its_cache_not_its_bond(
        registry: Registry) -> None:
    """The services cached outlived a firmware change: through a proxy, bleak-esphome's cache
    (and the ESP32's) is cleared and the bond kept; it was unpaired, as for a lost bond. On a
    hub adapter only removing the BlueZ device clears it: the caller re-pairs through it."""
    hub, garden, shed = radios()
    garden.hears[ADDRESS], hub.hears[OTHER] = -50, -40
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert await visit(radio_set, ADDRESS) == "garden"
    assert await radio_set.reset(ADDRESS, Action.CLEAR_GATT_CACHE) is None
    assert garden.refreshed == [ADDRESS] and not garden.forgot
    assert await visit(radio_set, OTHER) == "hci0"
    assert await radio_set.reset(OTHER, Action.CLEAR_GATT_CACHE) is hub


async def test_unpair_has_every_proxy_forget_its_bond(registry: Registry) -> None:
    """A controller served through a proxy is bonded with that ESP32: `awgw unpair` removed
    only the hub adapters' BlueZ bonds, and a re-pair through the proxy met the old bond (one
    authentication failure and an automatic reset later, it paired). The hub's own adapters
    are the caller's to clear (BlueZ), so they are not asked."""
    hub, garden, shed = radios()
    garden.hears[ADDRESS] = -50
    radio_set = RadioSet([hub, garden, shed], registry, LoopClock(), listen_s=0, grace_s=0)
    assert await visit(radio_set, ADDRESS) == "garden"
    await radio_set.unpair(ADDRESS)
    assert garden.forgot == [ADDRESS] and shed.forgot == [ADDRESS] and not hub.forgot

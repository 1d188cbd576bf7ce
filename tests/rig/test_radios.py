"""One gateway, four radios: the hub's two adapters and two ESPHome proxies (simulated, on rig
adapters, spoken to through aioesphomeapi, bleak-esphome and habluetooth) serving twelve
controllers in a garden where each controller is heard by two radios.

What must hold (issue 19): every controller served; a proxy's power loss moves its controllers
to another radio within 15 s; a radio with no free slot makes visits wait, never fail; a pinned
controller and a passkey controller stay where they must."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway import bluez
from gateway.config import GatewayConfig
from gateway.daemon.operations import ControllerOperations
from gateway.link.decision import Action
from gateway.link.failures import FailureClass
from gateway.link.manager import ConnectionManager
from gateway.link.radios import esphome
from gateway.ops.health import RadioKind
from gateway.ops.models import LinkState, Ota, Pair, Unpair
from gateway.sim.esphome.radio import BleakRadio
from gateway.sim.esphome.server import ProxyServer, ProxySettings
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig, RigOptions
from gateway.store.registry import Registry
from tests.helpers import until

# Radios at the corners of a 60 m square; three controllers along each side, so each is heard
# by the two radios at its side's ends (24-36 m away) and not by the other two (over 60 m).
# Along the two sides that run to a proxy they stand nearer the proxy (about 5 dB better).
CORNERS = {"gateway": (0.0, 0.0), "radio0": (60.0, 0.0), "radio1": (0.0, 60.0),
           "radio2": (60.0, 60.0)}
SIDES = [(30.0, 0.0), (0.0, 36.0), (30.0, 60.0), (60.0, 36.0)]
POSITIONS = {**CORNERS, **{f"controller{3 * side + k}": (x + 2.0 * (k - 1), y + 2.0 * (k - 1))
                           for side, (x, y) in enumerate(SIDES) for k in range(3)}}
GARDEN = RigOptions(controllers=12, radios=3, connect_fail_delay_s=0.5, positions=POSITIONS)
pytestmark = [pytest.mark.rig, pytest.mark.rig_options(**GARDEN.__dict__)]

# Fresh within one refresh period after the start (and after every move).
REFRESH_S = 12.0
# The failover bound.
FAILOVER_S = 15.0
# Twelve controllers over four radios of three slots, visited one connect per radio at a time.
ALL_SERVED_S = 60.0


def proxy_settings(index: int, name: str) -> ProxySettings:
    return ProxySettings(name=name, mac=f"A4:CF:12:00:01:{index:02X}",
                         bluetooth_mac=f"A4:CF:12:00:02:{index:02X}")


@contextlib.asynccontextmanager
async def gateway(rig: Rig, tmp_path: Path, *, pins: dict[int, str] | None = None,
                  passkeys: tuple[int, ...] = (), repairs: bool = False
                  ) -> AsyncIterator[tuple[ConnectionManager, dict[str, ProxyServer]]]:
    """``repairs``: the supervisors' automatic re-pair wired as the daemon wires it."""
    adapter, garden_radio, shed_radio = rig.radio_adapters
    proxies = {"garden": ProxyServer(proxy_settings(1, "garden"), BleakRadio(garden_radio)),
               "shed": ProxyServer(proxy_settings(2, "shed"), BleakRadio(shed_radio))}
    for server in proxies.values():
        await server.start()
    config = GatewayConfig.model_validate({
        "state_dir": tmp_path,
        "link": {"adapters": [{"name": "hci0"}, {"name": adapter}],
                 "refresh_period_s": REFRESH_S, "connect_timeout_s": 8.0},
        "radios": {"esphome": [{"name": n, "host": "127.0.0.1", "port": s.port}
                               for n, s in proxies.items()]},
        # The rig's firmware never confirms itself: the gateway confirms after this wait,
        # which is the firmware's to use, not the radios' to test.
        "ota": {"self_confirm_wait_s": 2.0}})
    registry = Registry(config.registry_path)
    for handle in rig.controllers:
        registry.add(handle.address, name="AutoWatering", bonded=True,
                     radio=(pins or {}).get(handle.index),
                     passkey=handle.index in passkeys)
    operations: list[ControllerOperations] = []

    async def repair(address: str, action: Action) -> None:
        await operations[0].repair(address, action)

    manager = ConnectionManager(config, registry, repairer=repair if repairs else None)
    operations.append(ControllerOperations(config, registry, manager))
    task = asyncio.create_task(manager.run(), name="manager under test")
    try:
        await asyncio.wait_for(manager.ready.wait(), 10)
        yield manager, proxies
    finally:
        task.cancel()
        try:
            async with asyncio.timeout(20):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            for t in asyncio.all_tasks():
                t.print_stack(limit=6)
            raise
        for server in proxies.values():
            await server.stop()


def served_by(manager: ConnectionManager, radio: str) -> list[str]:
    return [a for a in manager.supervisors if manager.radios.serving(a) == radio]


async def test_four_radios_serve_twelve_controllers_and_a_dead_proxy_hands_them_on(
        rig: Rig, tmp_path: Path) -> None:
    async with gateway(rig, tmp_path) as (manager, proxies):
        store, radios = manager.store, manager.radios
        addresses = [h.address for h in rig.controllers]
        await until(lambda: all(store.fresh(a) for a in addresses), ALL_SERVED_S)
        used = {radios.serving(a) for a in addresses}
        assert {"garden", "shed"} <= used and used & {"hci0", rig.radio_adapters[0]}, used
        # Each serving radio is one that hears the controller.
        for address in addresses:
            assert radios.serving(address) in radios.heard(address), address
        assert all(radios.radios[r].kind is RadioKind.PROXY for r in ("garden", "shed"))

        moved = served_by(manager, "garden")
        assert moved
        lost_at = time.monotonic()
        await proxies["garden"].power_loss()
        off_s = time.monotonic() - lost_at
        # Each of its controllers is connected again through another radio within 15 s.
        before = {a: manager.supervisors[a].connects for a in moved}
        try:
            await until(lambda: all(radios.serving(a) not in (None, "garden")
                                    and manager.supervisors[a].connects > before[a]
                                    for a in moved), FAILOVER_S)
        except TimeoutError:
            # What each was doing: the one CI failure of this test left no clue.
            where = {a: (radios.serving(a), manager.supervisors[a].state.value,
                         manager.supervisors[a].connects - before[a],
                         str(manager.supervisors[a].failure)) for a in moved}
            pytest.fail(f"not moved within {FAILOVER_S} s (the power loss took {off_s:.1f} s):"
                        f" {where}")
        took = time.monotonic() - lost_at
        assert took <= FAILOVER_S, took
        assert not radios.radios["garden"].up
        assert radios.radios["garden"].scheduler.leases == []  # no slot left behind
        # And nothing else stopped being served meanwhile.
        await until(lambda: all(store.fresh(a) for a in addresses), REFRESH_S * 2)


async def test_pinned_and_passkey_controllers_stay_where_they_must(
        rig: Rig, tmp_path: Path) -> None:
    # Controller 3 (between the hub and the garden proxy) pinned to the garden; controller 4
    # (same side) bonded with a passkey: only the hub's own adapters may serve it.
    async with gateway(rig, tmp_path, pins={3: "garden"}, passkeys=(4,)) as (manager, proxies):
        radios, store = manager.radios, manager.store
        pinned, passkey = rig.controllers[3].address, rig.controllers[4].address
        await until(lambda: store.fresh(pinned) and store.fresh(passkey), ALL_SERVED_S)
        assert radios.serving(pinned) == "garden"
        assert radios.radios[radios.serving(passkey) or "?"].kind is RadioKind.ADAPTER
        with capture_logs() as logs:
            await proxies["garden"].power_loss()
            await asyncio.sleep(FAILOVER_S)
            assert radios.serving(pinned) == "garden"  # waits for its radio, never elsewhere
            assert radios.radios[radios.serving(passkey) or "?"].kind is RadioKind.ADAPTER
            await proxies["garden"].power_restore()
            connects = manager.supervisors[pinned].connects
            # The proxy's reconnect backoff (at most 10 s), then a visit: the radio set wakes
            # the pinned controller's not_found backoff (up to 120 s) once the garden hears it.
            await until(lambda: manager.supervisors[pinned].connects > connects,
                        esphome.RECONNECT_CAP_S + REFRESH_S)
        assert radios.serving(pinned) == "garden"
        # A proxy that was up and lost its power is out of reach, not misconfigured: said
        # once as a warning, not as an error.
        refused = [e for e in logs if e["event"] == "radio_refused" and e["radio"] == "garden"]
        assert refused and {e["log_level"] for e in refused} == {"warning"}, refused


async def test_no_free_slot_anywhere_waits_and_never_errors(rig: Rig, tmp_path: Path) -> None:
    async with gateway(rig, tmp_path) as (manager, proxies):
        radios, store = manager.radios, manager.store
        # The side between the two proxies: heard by nothing else.
        far = [h.address for h in rig.controllers[6:9]]
        await until(lambda: all(store.fresh(a) for a in far), ALL_SERVED_S)
        for server in proxies.values():
            server.occupy_slots(3)  # the phone and another Home Assistant take every slot
        await until(lambda: all(radios.radios[n].scheduler.max_links == 0
                                for n in ("garden", "shed")), 10.0)
        target = far[0]
        command = asyncio.create_task(manager.command(
            target, "open", lambda s: s.open_valve(1, 1)))
        await asyncio.sleep(5.0)
        assert not command.done()  # waiting, not failed
        failure = manager.supervisors[target].failure
        assert failure is None or failure.kind is not FailureClass.PROGRAMMING, failure
        for server in proxies.values():
            server.occupy_slots(1)
        outcome = await asyncio.wait_for(command, 30.0)
        assert outcome.ok, outcome


async def test_an_adapter_that_disappears_hands_its_controllers_on(
        rig: Rig, tmp_path: Path) -> None:
    # Controller 1 (between the hub's two adapters) bonded with a passkey: when hci0 goes, it
    # moves to the other adapter, never to a proxy.
    async with gateway(rig, tmp_path, passkeys=(1,)) as (manager, _proxies):
        radios, store = manager.radios, manager.store
        addresses = [h.address for h in rig.controllers]
        await until(lambda: all(store.fresh(a) for a in addresses), ALL_SERVED_S)
        moved = served_by(manager, "hci0")
        assert moved
        before = {a: manager.supervisors[a].connects for a in moved}
        await rig.hub_fault("adapter_lost")
        try:
            await until(lambda: not radios.radios["hci0"].up, 5.0)
            await until(lambda: all(radios.serving(a) not in (None, "hci0")
                                    and manager.supervisors[a].connects > before[a]
                                    for a in moved), FAILOVER_S)
            passkey = rig.controllers[1].address
            assert radios.serving(passkey) == rig.radio_adapters[0]
            assert "check `bluetoothctl list`" in (radios.radios["hci0"].reason or "")
        finally:
            await rig.hub_fault("adapter_restore")
        await until(lambda: radios.radios["hci0"].up, 20.0)


async def test_a_firmware_update_through_a_proxy_in_the_daemon(rig: Rig, tmp_path: Path) -> None:
    """The daemon's own update path (ControllerOperations.ota) for a controller served by a
    proxy: its upload, its reboot and its verification all go through that proxy."""
    target = rig.controllers[7]  # between the two proxies, pinned to the shed
    async with gateway(rig, tmp_path, pins={7: "shed"}) as (manager, _proxies):
        await until(lambda: manager.store.fresh(target.address), ALL_SERVED_S)
        operations = ControllerOperations(manager.config, manager.registry, manager)
        image = make_image((9, 1, 0, 0), firmware_body("proxy", 24_000))
        report = await operations.ota(Ota(address=target.address, image=image))
        assert report.result == "succeeded", report
        assert manager.radios.serving(target.address) == "shed"


async def test_a_bond_lost_behind_a_proxy_is_forgotten_by_that_proxy(
        rig: Rig, tmp_path: Path) -> None:
    """The controller was reset and lost the bond the shed's ESP32 holds: its attributes answer
    Insufficient Authentication through that proxy. The one automatic re-pair has the proxy
    forget its bond, and its next connect pairs afresh (the controller then answers again);
    it went the BlueZ way, removing the hub adapter's own bond and pairing on an adapter that
    may not even hear the controller."""
    target = rig.controllers[7]  # between the two proxies, pinned to the shed
    async with gateway(rig, tmp_path, pins={7: "shed"}, repairs=True) as (manager, proxies):
        supervisor, store = manager.supervisors[target.address], manager.store
        await until(lambda: store.fresh(target.address), ALL_SERVED_S)
        assert target.address in proxies["shed"].bonded  # paired on its first connect
        await rig.fault(7, "lose_bonds")
        await until(lambda: proxies["shed"].unpaired == [target.address], 3 * REFRESH_S,
                    "the shed's proxy asked to forget its bond")
        assert supervisor.failure is not None
        assert supervisor.failure.kind is FailureClass.AUTHENTICATION
        refreshed = store.view(target.address).last_refresh or 0.0
        await until(lambda: (store.view(target.address).last_refresh or 0.0) > refreshed,
                    2 * REFRESH_S, "served again after the proxy paired afresh")
        assert supervisor.state is not LinkState.BOND_LOST
        assert manager.radios.serving(target.address) == "shed"
        assert manager.registry.get(target.address).bonded


async def test_a_bond_lost_behind_the_second_adapter_is_made_again_there(
        rig: Rig, tmp_path: Path) -> None:
    """The controller was reset and forgot its bonds: through the hub's second adapter, to
    which it is pinned, its encrypted attributes answer "Not paired" (BlueZ's words for ATT
    0x05). The one automatic re-pair removes that adapter's bond and pairs through it, and the
    pin stays; it went through hci0, which does not even hear the controller, and unpinned it."""
    target = rig.controllers[10]  # between the second adapter and the shed
    second = rig.radio_adapters[0]
    async with gateway(rig, tmp_path, pins={10: second}, repairs=True) as (manager, _proxies):
        supervisor, store = manager.supervisors[target.address], manager.store
        await until(lambda: store.fresh(target.address), ALL_SERVED_S)
        assert manager.radios.serving(target.address) == second
        with capture_logs() as logs:
            await rig.fault(10, "lose_bonds")
            await until(lambda: supervisor.failures[FailureClass.AUTHENTICATION.value] > 0,
                        2 * REFRESH_S, "the refused read counted as a lost bond")
            refreshed = store.view(target.address).last_refresh or 0.0
            await until(lambda: (store.view(target.address).last_refresh or 0.0) > refreshed,
                        3 * REFRESH_S, "served again after the re-pair")
        assert supervisor.state is not LinkState.BOND_LOST
        assert manager.radios.serving(target.address) == second
        record = manager.registry.get(target.address)
        assert record.radio == second and record.bonded
        assert not [e for e in logs if e["event"] == "repair_failed"], logs


async def test_unpair_removes_the_bond_of_every_hub_adapter(rig: Rig, tmp_path: Path) -> None:
    """A controller paired through the second adapter holds its bond there: unpairing removes
    it there too, not only from hci0."""
    target = rig.controllers[1]  # between the hub's two adapters
    second = rig.radio_adapters[0]
    async with gateway(rig, tmp_path) as (manager, _proxies):
        operations = ControllerOperations(manager.config, manager.registry, manager)
        await operations.pair(Pair(address=target.address, radio=second))
        assert target.address in {b.address for b in await bluez.bonds(second)}
        await operations.unpair(Unpair(address=target.address))
        assert target.address not in {b.address for b in await bluez.bonds(second)}
        assert manager.registry.find(target.address) is None


async def test_unpair_has_the_proxy_that_paired_forget_its_bond(
        rig: Rig, tmp_path: Path) -> None:
    """Served through the shed, the controller is bonded with that ESP32: unpairing has the
    proxy forget it (before, only the hub adapters' BlueZ bonds went)."""
    target = rig.controllers[7]  # between the two proxies, pinned to the shed
    async with gateway(rig, tmp_path, pins={7: "shed"}) as (manager, proxies):
        await until(lambda: manager.store.fresh(target.address), ALL_SERVED_S)
        assert target.address in proxies["shed"].bonded
        operations = ControllerOperations(manager.config, manager.registry, manager)
        await operations.unpair(Unpair(address=target.address))
        assert target.address not in proxies["shed"].bonded
        assert manager.registry.find(target.address) is None

"""A garden's faults on the simulated proxy, seen through the real aioesphomeapi client: power
loss, a Wi-Fi drop, every slot taken, and a client that sends garbage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import APIConnectionError, BluetoothGATTAPIError

from gateway.sim.esphome.radio import NO_RESOURCES, Service
from gateway.sim.esphome.server import ProxyServer, ProxySettings, mac_int
from gateway.sim.rig import Rig
from tests.gateway.sim.esphome.test_conformance import KEY, WITHIN_S, client, proxy
from tests.helpers.fakes import ProxyRadioFake

pytestmark = pytest.mark.rig
FEATURES = 0b110111


async def connect(api: APIClient, address: str) -> tuple[bool, int, int]:
    states: asyncio.Queue[tuple[bool, int, int]] = asyncio.Queue()
    await api.bluetooth_device_connect(mac_int(address), lambda *s: states.put_nowait(s),
                                       timeout=WITHIN_S, feature_flags=FEATURES,
                                       address_type=0)
    return await states.get()


async def test_every_slot_taken_is_answered_at_once_not_connected(rig: Rig) -> None:
    async with proxy(ProxySettings(slots=3)) as server, client(server, None) as api:
        server.occupy_slots(3)
        connected, _mtu, error = await asyncio.wait_for(
            connect(api, rig.controllers[0].address), 2.0)
        assert not connected and error == NO_RESOURCES
        server.occupy_slots(2)
        connected, _mtu, error = await connect(api, rig.controllers[0].address)
        assert connected and error == 0 and server.free == 0


async def test_a_wifi_drop_cuts_the_api_and_frees_the_controller(rig: Rig) -> None:
    async with proxy(ProxySettings()) as server:
        lost = asyncio.Event()
        api = await watched(server, lost)
        assert (await connect(api, rig.controllers[0].address))[0]
        await server.wifi_drop()
        async with asyncio.timeout(WITHIN_S):
            await lost.wait()
        assert server.free == server.settings.slots
        # The controller took its link back: the proxy (or anyone) can connect again.
        async with client(server, None) as again:
            assert (await connect(again, rig.controllers[0].address))[0]


async def test_power_loss_closes_the_port_until_power_returns(rig: Rig) -> None:
    async with proxy(ProxySettings()) as server:
        lost = asyncio.Event()
        api = await watched(server, lost)
        assert (await connect(api, rig.controllers[0].address))[0]
        await server.power_loss()
        async with asyncio.timeout(WITHIN_S):
            await lost.wait()
        await api.disconnect(force=True)
        with pytest.raises(APIConnectionError):
            async with client(server, None):
                pass
        await server.power_restore()
        async with client(server, None) as api:
            assert (await connect(api, rig.controllers[0].address))[0]


async def test_a_client_sending_garbage_costs_only_its_own_connection(rig: Rig) -> None:
    async with proxy(ProxySettings()) as server, client(server, None) as api:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x07garbage that is no frame")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), WITHIN_S) == b""  # closed on it
        writer.close()
        assert (await connect(api, rig.controllers[0].address))[0]


async def watched(server: ProxyServer, lost: asyncio.Event) -> APIClient:
    """A client that sets ``lost`` when its connection ends."""

    async def stopped(_expected: bool) -> None:
        lost.set()

    api = APIClient("127.0.0.1", server.port, None, client_info="awgw-test")
    await api.connect(on_stop=stopped, login=True)
    return api



async def test_the_wifi_hop_delays_every_answer_in_order(rig: Rig) -> None:
    async with proxy(ProxySettings(wifi_latency_s=0.05, noise_psk=KEY)) as server, \
            client(server, KEY) as api:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await api.device_info()
        assert loop.time() - started >= 0.05
        assert (await connect(api, rig.controllers[0].address))[0]


class _BrokenOnceLink:
    """A radio link whose first read fails in a way the sim never foresaw."""

    mtu = 247

    def __init__(self) -> None:
        self.reads = 0

    async def services(self) -> list[Service]:
        return []

    async def read(self, handle: int) -> bytes:
        self.reads += 1
        if self.reads == 1:
            raise RuntimeError("an unforeseen radio fault")
        return b"\x01"

    async def write(self, handle: int, data: bytes, response: bool) -> None:
        return None

    async def read_descriptor(self, handle: int) -> bytes:
        return b""

    async def write_descriptor(self, handle: int, data: bytes) -> None:
        return None

    async def notify(self, handle: int, on_data: Callable[[bytes], None] | None) -> None:
        return None

    async def pair(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None


async def test_a_gatt_request_that_fails_unforeseen_is_answered_and_the_next_served() -> None:
    server = ProxyServer(ProxySettings(), ProxyRadioFake(_BrokenOnceLink))
    await server.start()
    try:
        async with client(server, None) as api:
            address = "C0:FF:EE:00:00:00"
            assert (await connect(api, address))[0]
            with pytest.raises(BluetoothGATTAPIError):
                await api.bluetooth_gatt_read(mac_int(address), 0x10, timeout=WITHIN_S)
            assert await api.bluetooth_gatt_read(mac_int(address), 0x10,
                                                 timeout=WITHIN_S) == b"\x01"
    finally:
        await server.stop()


async def test_a_connect_that_fails_unforeseen_is_answered_and_frees_its_slot() -> None:
    """Before, the connect's task died with the exception, unseen, and the client waited out
    its own timeout with the slot still taken."""
    attempts: list[int] = []

    def link() -> _BrokenOnceLink:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("an unforeseen radio fault")
        return _BrokenOnceLink()

    server = ProxyServer(ProxySettings(slots=1), ProxyRadioFake(link))
    await server.start()
    try:
        async with client(server, None) as api:
            connected, _mtu, error = await asyncio.wait_for(
                connect(api, "C0:FF:EE:00:00:00"), 2.0)
            assert not connected and error != 0
            assert server.free == 1
            assert (await asyncio.wait_for(connect(api, "C0:FF:EE:00:00:00"), 2.0))[0]
    finally:
        await server.stop()


class _PairingLink(_BrokenOnceLink):
    """A link up whose pairing is still going on (the ESP32 answers the controller's security
    request) when the proxy loses its power."""

    def __init__(self) -> None:
        super().__init__()
        self.pairing = asyncio.Event()
        self.disconnected = False

    async def pair(self) -> None:
        self.pairing.set()
        await asyncio.Event().wait()

    async def disconnect(self) -> None:
        self.disconnected = True


async def test_power_lost_mid_connect_leaves_no_link_behind() -> None:
    """A link the connect had made but not yet handed over outlived the ESP32's power: the
    controller stayed connected to nobody, did not advertise, and no other radio could reach
    it (rig test of four radios: a moved controller's connects timed out for 8 s)."""
    links: list[_PairingLink] = []

    def link() -> _PairingLink:
        links.append(_PairingLink())
        return links[-1]

    server = ProxyServer(ProxySettings(), ProxyRadioFake(link))
    await server.start()
    try:
        async with client(server, None) as api:
            asking = asyncio.create_task(api.bluetooth_device_connect(
                mac_int("C0:FF:EE:00:00:00"), lambda *_: None, timeout=WITHIN_S,
                feature_flags=FEATURES, address_type=0))
            async with asyncio.timeout(WITHIN_S):
                while not links:  # noqa: ASYNC110 - the fake has no event for it
                    await asyncio.sleep(0.01)
                await links[0].pairing.wait()
            await server.power_loss()
            assert links[0].disconnected
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)
    finally:
        await server.stop()


class _SlowToCloseLink(_BrokenOnceLink):
    """A link whose disconnect takes its time, as a BLE link's does (the peer's ack, up to the
    supervision timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()
        self.may_close = asyncio.Event()

    async def disconnect(self) -> None:
        self.closing.set()
        await self.may_close.wait()


async def test_a_closing_link_stays_in_the_allocated_list_until_its_disconnect_is_answered(
) -> None:
    """The slot reports are what bleak-esphome reconciles against: a report that drops an
    address before its ``connected=False`` reads as a phantom connection ("Reconciling stale
    connection ... not in allocated list"), as ESPHome's firmware, which keeps the address
    until the close event, never sends."""
    links: list[_SlowToCloseLink] = []

    def link() -> _SlowToCloseLink:
        links.append(_SlowToCloseLink())
        return links[-1]

    first, second = "C0:FF:EE:00:00:01", "C0:FF:EE:00:00:02"
    seen: list[tuple[str, object]] = []
    server = ProxyServer(ProxySettings(slots=3), ProxyRadioFake(link))
    await server.start()
    try:
        async with client(server, None) as api:
            api.subscribe_bluetooth_connections_free(
                lambda _free, _limit, allocated: seen.append(("slots", set(allocated))))
            states: asyncio.Queue[bool] = asyncio.Queue()

            def on_state(connected: bool, _mtu: int, _error: int) -> None:
                seen.append(("state", connected))
                states.put_nowait(connected)

            await api.bluetooth_device_connect(mac_int(first), on_state, timeout=WITHIN_S,
                                               feature_flags=FEATURES, address_type=0)
            assert await asyncio.wait_for(states.get(), WITHIN_S)
            closing = asyncio.create_task(api.bluetooth_device_disconnect(mac_int(first)))
            await asyncio.wait_for(links[0].closing.wait(), WITHIN_S)
            # Another connect changes the slots while the first link is still closing.
            assert (await asyncio.wait_for(connect(api, second), WITHIN_S))[0]
            assert server.free == 1  # the closing link still holds its slot
            links[0].may_close.set()
            await asyncio.wait_for(closing, WITHIN_S)
            await asyncio.sleep(0.1)  # the slot report that follows the answer
    finally:
        for each in links:
            each.may_close.set()
        await server.stop()
    up, answered = seen.index(("state", True)), seen.index(("state", False))
    assert all(mac_int(first) in report for kind, report in seen[up:answered]
               if kind == "slots" and isinstance(report, set)), seen
    assert ("slots", {mac_int(second)}) in seen[answered:], seen


async def test_a_connect_to_a_closing_link_is_answered_once_the_link_is_closed() -> None:
    links: list[_SlowToCloseLink] = []

    def link() -> _SlowToCloseLink:
        links.append(_SlowToCloseLink())
        return links[-1]

    address = "C0:FF:EE:00:00:01"
    server = ProxyServer(ProxySettings(slots=1), ProxyRadioFake(link))
    await server.start()
    try:
        async with client(server, None) as api:
            assert (await asyncio.wait_for(connect(api, address), WITHIN_S))[0]
            closing = asyncio.create_task(api.bluetooth_device_disconnect(mac_int(address)))
            await asyncio.wait_for(links[0].closing.wait(), WITHIN_S)
            states: asyncio.Queue[bool] = asyncio.Queue()
            again = asyncio.create_task(api.bluetooth_device_connect(
                mac_int(address), lambda connected, *_: states.put_nowait(connected),
                timeout=WITHIN_S, feature_flags=FEATURES, address_type=0))
            await asyncio.sleep(0.1)
            assert states.empty() and len(links) == 1  # not answered from the closing link
            links[0].may_close.set()
            await asyncio.wait_for(closing, WITHIN_S)
            # The closed link's answer, then the new link's.
            assert [await asyncio.wait_for(states.get(), WITHIN_S) for _ in range(2)] == [
                False, True]
            await again
            assert len(links) == 2 and server.free == 0
    finally:
        for each in links:
            each.may_close.set()
        await server.stop()

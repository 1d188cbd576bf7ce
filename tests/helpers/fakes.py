"""Fakes behind the real interfaces: a GattLink served by the simulator's irrigation model, an
SMP device served by the simulator's SMP server and slots, and clocks in virtual time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from firmware_bridge.errors import AttRefused, CharacteristicMissing, LinkLost
from firmware_bridge.gatt import uuids
from firmware_bridge.link.gatt_link import NotifyCallback
from firmware_bridge.smp.wire import HEADER_SIZE, decode_payload, parse_header
from gateway.sim.controller.irrigation import AttError, IrrigationConfig, IrrigationModel
from gateway.sim.controller.mcuboot_flash import NRF52840_GEOMETRY, McubootFlash
from gateway.sim.controller.smp_server import SmpServer, SmpServerConfig
from gateway.sim.esphome.radio import Advert, RadioLink

ALL_UUIDS = {v for k, v in vars(uuids).items() if k.isupper() and isinstance(v, str)
             and v.count("-") == 4}


class ModelLink:
    """A connected controller whose GATT server is the simulator's model, in-process."""

    def __init__(self, address: str, model: IrrigationModel | None = None) -> None:
        self._address = address
        self.model = model or IrrigationModel(IrrigationConfig(), on_change=self._changed)
        self.model.on_change = self._changed
        self.callbacks: dict[str, NotifyCallback] = {}
        self.connected = True
        self.reads = 0
        self.fail_next: Exception | None = None
        # The next write reaches the controller, then the link dies before it is answered.
        self.dies_after_write = False
        self.on_disconnect: Callable[[], None] | None = None
        self.firmware_revision = "3.1.0"
        # Characteristics BlueZ's (stale) cache does not show: reads of them fail as missing.
        self.hidden: set[str] = set()

    def _changed(self, uuid: str, value: bytes) -> None:
        callback = self.callbacks.get(uuid)
        if callback is not None and self.connected:
            asyncio.get_running_loop().call_soon(callback, uuid, value)

    @property
    def address(self) -> str:
        return self._address

    @property
    def mtu(self) -> int:
        return 247

    @property
    def is_connected(self) -> bool:
        return self.connected

    def has(self, uuid: str) -> bool:
        return uuid in ALL_UUIDS and uuid not in (uuids.SMP_CHARACTERISTIC, *self.hidden)

    def _check(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if not self.connected:
            raise LinkLost(f"{self._address} not connected")

    async def read(self, uuid: str) -> bytes:
        await asyncio.sleep(0)
        self._check()
        if uuid in self.hidden:
            raise CharacteristicMissing(f"read {uuid[-4:]}: characteristic not found")
        self.reads += 1
        if uuid == uuids.DIS_FIRMWARE_REVISION:
            return self.firmware_revision.encode()
        if uuid == uuids.DIS_SERIAL_NUMBER:
            return b"100001"
        return self.model.read(uuid)

    async def write(self, uuid: str, data: bytes) -> None:
        await asyncio.sleep(0)
        self._check()
        try:
            self.model.write(uuid, data)
        except AttError as exc:
            raise AttRefused(exc.code, f"write {uuid[-4:]}") from exc
        if self.dies_after_write:
            self.dies_after_write = False
            self.drop()
            raise LinkLost(f"write {uuid[-4:]}: {self._address} disconnected")

    async def subscribe(self, uuid: str, callback: NotifyCallback) -> None:
        self._check()
        self.callbacks[uuid] = callback

    async def disconnect(self) -> None:
        self.connected = False

    def drop(self) -> None:
        """The link dies under the session, as a power loss does."""
        self.connected = False
        if self.on_disconnect is not None:
            self.on_disconnect()


class VirtualClock:
    """The supervisor's Clock in virtual time: a wait that nothing ends within a few turns of
    the event loop jumps the clock to its deadline, so backoffs and refresh periods pass at
    once while every real interaction (links, commands) still runs in order."""

    # Turns of the loop a wait yields first: a wake-up already on its way (a command being
    # submitted, a link callback) lands within a couple of turns.
    SETTLE_TURNS = 5

    def __init__(self) -> None:
        self.now_s = 0.0
        self.waited: list[float] = []

    def now(self) -> float:
        return self.now_s

    # The session's clock: real wall time for stamps (the state store ages values by it),
    # virtual monotonic time and pauses.
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)
        self.waited.append(seconds)
        self.now_s += max(0.0, seconds)

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> bool:
        if timeout_s is None:
            await event.wait()
            return True
        for _ in range(self.SETTLE_TURNS):
            if event.is_set():
                return True
            await asyncio.sleep(0)
        if event.is_set():
            return True
        self.waited.append(timeout_s)
        self.now_s += timeout_s
        return False


class InProcessSmpDevice:
    """A controller's SMP server and MCUboot slots in this process: ``connect()`` hands out a
    FrameTransport to it. A reset boots the flash once its reply is out (the reply comes
    first, as on the device), and the transport then reports the link lost."""

    def __init__(self, factory_image: bytes, buf_size: int = 384, buf_count: int = 4) -> None:
        self.flash = McubootFlash(NRF52840_GEOMETRY, factory_image)
        self.server = SmpServer(self.flash, SmpServerConfig(buf_size=buf_size,
                                                            buf_count=buf_count))
        self.connects = 0
        self.uploaded = 0  # data bytes in upload requests
        self.boots = 0

    async def connect(self) -> InProcessSmpTransport:
        self.connects += 1
        return InProcessSmpTransport(self)


class InProcessSmpTransport:
    def __init__(self, device: InProcessSmpDevice) -> None:
        self.device = device
        self.replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise LinkLost("in-process SMP link closed")
        header = parse_header(data)
        if (header.group, header.cmd) == (1, 1):
            payload = decode_payload(data[HEADER_SIZE:])
            self.device.uploaded += len(payload.get("data", b""))
        reply = self.device.server.handle(data)
        if reply.frame is not None:
            self.replies.put_nowait(reply.frame)
        if reply.reset_after_s is not None:
            self.device.flash.boot()
            self.device.boots += 1
            self.closed = True
            self.replies.put_nowait(None)

    async def receive(self) -> bytes:
        frame = await self.replies.get()
        if frame is None:
            raise LinkLost("in-process SMP device rebooted")
        return frame

    async def disconnect(self) -> None:
        self.closed = True

    def frame_budget(self, buf_size: int) -> int:
        return buf_size


class ProxyRadioFake:
    """A simulated proxy's radio that hears nothing; each connect gets ``link()``'s link, or
    fails the test when none is given (it connects no device)."""

    def __init__(self, link: Callable[[], RadioLink] | None = None) -> None:
        self._link = link

    async def start_scan(self, on_advert: Callable[[Advert], None]) -> None:
        return None

    async def stop_scan(self) -> None:
        return None

    async def connect(self, address: str, on_lost: Callable[[], None]) -> RadioLink:
        if self._link is None:
            raise AssertionError(f"this test connects no device (asked for {address})")
        return self._link()

    async def forget(self, address: str) -> None:
        return None

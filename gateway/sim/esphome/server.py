"""A simulated ESPHome Bluetooth proxy: the native API server of an ESP32 running ESPHome's
``bluetooth_proxy`` (active connections, remote caching, raw advertisements, cache clearing),
with its radio on the rig, answering the real aioesphomeapi client (and so bleak-esphome and
habluetooth) message for message.

What it does as the firmware does (esphome/components/bluetooth_proxy, api):
- device info names the proxy, its MACs and its Bluetooth feature flags;
- advertisements go out in batches of raw AD structures to the subscribed client;
- a fixed number of connection slots, their free/limit counts sent on subscription and on
  every change; a connect with no free slot is answered at once, not connected;
- services (one message each, then done), reads, writes, notifications, descriptor access
  and cache clearing, each failure as a GATT error message for its handle;
- when the API client goes away its BLE connections are dropped (the ESP does that too).

Faults a garden has: ``power_loss`` (everything gone, the port closed until ``power_restore``),
``wifi_drop`` (API connections cut, BLE links dropped, the server still there), a different
Noise key than the client's (``MAC failure``), and slots taken by others
(``occupy_slots``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aioesphomeapi import api_pb2 as pb
from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO
from google.protobuf.message import DecodeError, Message

from gateway.sim.esphome.framing import FrameError, NoiseFramer, PlainFramer, decode_psk
from gateway.sim.esphome.radio import (
    ATT_UNLIKELY_ERROR,
    GATT_ERROR,
    NO_RESOURCES,
    PEER_TERMINATED,
    Advert,
    ProxyRadio,
    RadioError,
    RadioLink,
)

log = structlog.get_logger("gateway.sim.esphome")

PROTO_TO_TYPE: dict[type[Message], int] = {v: k for k, v in MESSAGE_TYPE_TO_PROTO.items()}
# What an ESPHome 2026 proxy announces (aioesphomeapi's BluetoothProxyFeature).
PASSIVE_SCAN, ACTIVE_CONNECTIONS, REMOTE_CACHING = 1 << 0, 1 << 1, 1 << 2
PAIRING, CACHE_CLEARING, RAW_ADVERTISEMENTS = 1 << 3, 1 << 4, 1 << 5
FEATURES = (PASSIVE_SCAN | ACTIVE_CONNECTIONS | REMOTE_CACHING | PAIRING | CACHE_CLEARING
            | RAW_ADVERTISEMENTS)
API_VERSION = (1, 12)
ESPHOME_VERSION = "2026.11.0"
# The firmware sends advertisements in batches at most this often (ESPHome: 100 ms) ...
ADVERT_BATCH_S = 0.1
# ... of at most this many (ESPHome's FLUSH_BATCH_SIZE).
ADVERT_BATCH = 16
# A client message larger than this is not one an API client sends to a proxy.
MAX_MESSAGE = 16 * 1024


def mac_int(address: str) -> int:
    return int(address.replace(":", ""), 16)


def mac_str(value: int) -> str:
    raw = f"{value:012X}"
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


def uuid_ints(uuid: str) -> list[int]:
    raw = int(uuid.replace("-", ""), 16)
    return [raw >> 64, raw & ((1 << 64) - 1)]


@dataclass
class ProxySettings:
    name: str = "garden-proxy"
    mac: str = "A4:CF:12:00:00:01"
    bluetooth_mac: str = "A4:CF:12:00:00:03"
    # Base64 of 32 bytes; None: plaintext (an ESPHome node without ``api: encryption:``).
    noise_psk: str | None = None
    slots: int = 3
    # The Wi-Fi hop between the gateway and the ESP32, one way: every message the proxy sends
    # arrives this much later, in order (a home Wi-Fi adds a few ms; 0: loopback only).
    wifi_latency_s: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port, kept across power_restore


@dataclass
class _Slot:
    address: int
    owner: _Session
    link: RadioLink | None = None
    notifying: set[int] = field(default_factory=set)
    # Set while its link closes: the firmware keeps the address allocated until the close
    # event, then answers ``connected=False`` and reports the slots, in that order.
    closing: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class ProxyServer:
    def __init__(self, settings: ProxySettings, radio: ProxyRadio) -> None:
        self.settings = settings
        self.radio = radio
        self._psk = decode_psk(settings.noise_psk) if settings.noise_psk else None
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._slots: dict[int, _Slot] = {}
        self.occupied = 0  # slots held by clients outside the rig (a fault)
        self.forced_slots: tuple[int, int] | None = None  # (free, limit) reported (a fault)
        self.port = settings.port
        self._advert_subscribers: set[_Session] = set()
        self._pending_adverts: list[Advert] = []
        self._flusher: asyncio.Task[None] | None = None
        self.powered = False
        # The devices whose bond a client had the ESP32 forget (an unpair request), in order.
        self.unpaired: list[str] = []
        # The devices the ESP32 holds a bond with: it pairs on its first connect to each (it
        # answers the controller's security request, Just Works), and again after an unpair.
        self.bonded: set[str] = set()
        # The ESP32's BLE stack takes one GAP procedure per peer at a time: an unpair that
        # arrives while a connect still pairs waits for it, and cannot be undone by it.
        self._gap: dict[int, asyncio.Lock] = {}

    def gap(self, address: int) -> asyncio.Lock:
        return self._gap.setdefault(address, asyncio.Lock())

    # ---- life ----------------------------------------------------------------------------------

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.settings.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.powered = True
        return self.port

    async def stop(self) -> None:
        await self.power_loss()

    async def power_loss(self) -> None:
        """The ESP32 loses power: no port, no API connection, no BLE link (the controllers see
        their links time out)."""
        self.powered = False
        if self._server is not None:
            self._server.close()
        await self._drop_sessions()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def power_restore(self) -> None:
        await self.start()

    async def wifi_drop(self) -> None:
        """The API connections are cut (Wi-Fi gone); the ESP drops its BLE links with them."""
        await self._drop_sessions()

    def occupy_slots(self, count: int) -> None:
        """Slots held by someone else (another Home Assistant, a phone through the proxy)."""
        self.occupied = max(0, min(count, self.settings.slots))
        for session in list(self._sessions):
            session.send_free()

    def garbage_adverts(self, count: int = 32) -> None:
        """Adverts no radio could have heard: AD structures whose lengths run past the end,
        zero and oversized lengths, an all-ones address, an impossible RSSI."""
        junk = [b"\xff", b"\x1f\x09AW", b"\x00\x00\x00", bytes(range(62)), b"\x02\x01"]
        for i in range(count):
            self._on_advert(Advert("FF:FF:FF:FF:FF:FF" if i % 2 else f"00:00:00:00:00:{i:02X}",
                                   i % 3, 127 if i % 4 == 0 else -200, junk[i % len(junk)]))

    def report_slots(self, free: int, limit: int) -> None:
        """A slot report no real proxy sends (more free than its limit, say)."""
        self.forced_slots = (free, limit)
        self.report_free()

    def report_closed(self, address: str) -> None:
        """The close event of a link a client already gave up (a connect it abandoned, its
        BLE disconnect slow): reported to every client, whatever it now waits for."""
        for session in list(self._sessions):
            session.send(pb.BluetoothDeviceConnectionResponse(address=mac_int(address),
                                                              connected=False))

    async def _drop_sessions(self) -> None:
        sessions = list(self._sessions)
        for session in sessions:
            session.abort()
        for session in sessions:
            await session.stopped()  # a connect cut short has let go of its link
        for slot in list(self._slots.values()):
            await self.release(slot, notify=False)
        await self.radio.stop_scan()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self._advert_subscribers.clear()

    # ---- slots ---------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return max(0, self.settings.slots - self.occupied - len(self._slots))

    def allocated(self) -> list[int]:
        return list(self._slots)

    # What a client connection does with the slots: through these, never the dict itself.
    def slot(self, address: int) -> _Slot | None:
        return self._slots.get(address)

    def claim(self, address: int, owner: _Session) -> _Slot:
        slot = self._slots[address] = _Slot(address, owner)
        return slot

    def holds(self, slot: _Slot) -> bool:
        """``slot`` is still the one allocated to its address (not released, not replaced)."""
        return self._slots.get(slot.address) is slot

    def lost(self, slot: _Slot) -> None:
        """Free ``slot``, its link not closed: it dropped by itself, or ``release`` closes it."""
        if self.holds(slot):
            del self._slots[slot.address]
        slot.link = None

    async def release(self, slot: _Slot, *, notify: bool = True) -> None:
        """Free the slot. ``notify``: report the slots at once; a release that answers a
        connection reports them itself, after its answer, in the firmware's order."""
        link = slot.link
        slot.closing = True  # allocated until its link is closed
        try:
            if link is not None:
                await link.disconnect()
        finally:
            self.lost(slot)
            slot.closed.set()
        if notify:
            self.report_free()

    def report_free(self) -> None:
        for session in list(self._sessions):
            session.send_free()

    # ---- advertisements ------------------------------------------------------------------------

    def unsubscribe_adverts(self, session: _Session) -> None:
        self._advert_subscribers.discard(session)

    async def subscribe_adverts(self, session: _Session) -> None:
        self._advert_subscribers.add(session)
        await self.radio.start_scan(self._on_advert)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_adverts(), name="proxy adverts")

    def _on_advert(self, advert: Advert) -> None:
        if self._advert_subscribers:
            self._pending_adverts.append(advert)
            del self._pending_adverts[:-256]  # a slow client loses old ones, as the ESP does

    async def _flush_adverts(self) -> None:
        while True:
            await asyncio.sleep(ADVERT_BATCH_S)
            while self._pending_adverts:
                batch = self._pending_adverts[:ADVERT_BATCH]
                del self._pending_adverts[:ADVERT_BATCH]
                message = pb.BluetoothLERawAdvertisementsResponse(advertisements=[
                    pb.BluetoothLERawAdvertisement(address=mac_int(a.address), rssi=a.rssi,
                                                   address_type=a.address_type, data=a.data)
                    for a in batch])
                for session in list(self._advert_subscribers):
                    session.send(message)

    # ---- connections ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, reader, writer)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            self._advert_subscribers.discard(session)
            for slot in [s for s in self._slots.values() if s.owner is session]:
                await self.release(slot)
            if not self._advert_subscribers:
                await self.radio.stop_scan()

    def framer(self) -> PlainFramer | NoiseFramer:
        if self._psk is None:
            return PlainFramer()
        return NoiseFramer(self._psk, self.settings.name, self.settings.mac)


class _Session:
    """One API client connection."""

    def __init__(self, server: ProxyServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.framer = server.framer()
        self.free_subscribed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        # GATT operations run one after another, in the order they came, as the ESP32's
        # Bluetooth task runs them: a Write Without Response stream (SMP) must keep its order.
        # One GATT request at a time, as the firmware's connection handles them: (address,
        # handle, the work answering it).
        self._gatt: asyncio.Queue[tuple[int, int, Callable[[], Awaitable[None]]]] = \
            asyncio.Queue()
        # What waits out the Wi-Fi latency, in order: (due, bytes).
        self._air: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._airborne = 0  # messages sent but not yet arrived

    def abort(self) -> None:
        """The ESP32 is gone (power, Wi-Fi): its connection and everything in flight end now."""
        self.closing = True
        self.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()

    async def stopped(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _flush(self) -> None:
        if self.framer.outgoing and not self.writer.is_closing():
            data = b"".join(self.framer.outgoing)
            latency = self.server.settings.wifi_latency_s
            if latency > 0:
                self._airborne += 1
                self._air.put_nowait((asyncio.get_running_loop().time() + latency, data))
            else:
                self.writer.write(data)
        self.framer.outgoing.clear()

    async def _wifi(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self._air.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not self.writer.is_closing():
                self.writer.write(data)
            self._airborne -= 1

    def send(self, message: Message) -> None:
        if self.closing:
            return
        self.framer.send(PROTO_TO_TYPE[type(message)], message.SerializeToString())
        self._flush()

    def send_free(self) -> None:
        if self.free_subscribed:
            free, limit = self.server.forced_slots or (self.server.free,
                                                       self.server.settings.slots)
            self.send(pb.BluetoothConnectionsFreeResponse(
                free=free, limit=limit, allocated=self.server.allocated()))

    async def _gatt_worker(self) -> None:
        while True:
            address, handle, work = await self._gatt.get()
            try:
                await work()
            except Exception as exc:
                # A radio fault the sim did not foresee: the ESP32 answers that request with
                # an error and goes on serving the next, instead of leaving every later
                # request of this client unanswered.
                log.exception("proxy_gatt_failed", address=mac_str(address), handle=handle,
                              error=f"{type(exc).__name__}: {exc}")
                self.send(pb.BluetoothGATTErrorResponse(address=address, handle=handle,
                                                        error=ATT_UNLIKELY_ERROR))

    async def run(self) -> None:
        self._spawn(self._gatt_worker, "proxy gatt")
        self._spawn(self._wifi, "proxy wifi")
        try:
            while not self.closing:
                data = await self.reader.read(4096)
                if not data:
                    return
                messages = self.framer.feed(data)
                self._flush()
                if self.framer.refused is not None:
                    log.info("proxy_refused_client", reason=self.framer.refused)
                    await self.writer.drain()
                    return
                for kind, payload in messages:
                    if not self._handle(kind, payload):
                        return
                await self.writer.drain()
        except (FrameError, ConnectionError) as exc:
            log.info("proxy_client_dropped", error=str(exc))
        finally:
            # What is still crossing the Wi-Fi (a refusal, a goodbye) arrives before the close.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0 + 2 * self.server.settings.wifi_latency_s):
                    while self._airborne and not self.closing:  # noqa: ASYNC110
                        await asyncio.sleep(self.server.settings.wifi_latency_s)
            for task in list(self._tasks):
                task.cancel()
            await self.stopped()
            self.writer.transport.abort()

    def _spawn(self, work: Callable[[], Any], name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handle(self, kind: int, payload: bytes) -> bool:
        """Answer one message; False: the client said goodbye."""
        cls = MESSAGE_TYPE_TO_PROTO.get(kind)
        if cls is None or len(payload) > MAX_MESSAGE:
            log.info("proxy_ignored_message", type=kind, size=len(payload))
            return True
        try:
            msg = cls.FromString(payload)
        except DecodeError as exc:
            raise FrameError(f"message type {kind} does not decode: {exc}") from exc
        s = self.server
        match msg:
            case pb.HelloRequest():
                self.send(pb.HelloResponse(api_version_major=API_VERSION[0],
                                           api_version_minor=API_VERSION[1],
                                           server_info=f"{s.settings.name} (ESPHome "
                                                       f"{ESPHOME_VERSION})",
                                           name=s.settings.name))
            case pb.AuthenticationRequest():
                pass  # no password: the firmware answers nothing
            case pb.DeviceInfoRequest():
                self.send(pb.DeviceInfoResponse(
                    name=s.settings.name, friendly_name=s.settings.name,
                    mac_address=s.settings.mac, bluetooth_mac_address=s.settings.bluetooth_mac,
                    esphome_version=ESPHOME_VERSION, model="esp32dev", manufacturer="Espressif",
                    compilation_time="Dec  1 2026, 12:00:00",
                    bluetooth_proxy_feature_flags=FEATURES,
                    api_encryption_supported=s.settings.noise_psk is not None))
            case pb.ListEntitiesRequest():
                self.send(pb.ListEntitiesDoneResponse())
            case pb.SubscribeStatesRequest() | pb.SubscribeLogsRequest() | \
                    pb.SubscribeHomeassistantServicesRequest() | \
                    pb.SubscribeHomeAssistantStatesRequest():
                pass
            case pb.PingRequest():
                self.send(pb.PingResponse())
            case pb.DisconnectRequest():
                self.send(pb.DisconnectResponse())
                return False
            case pb.SubscribeBluetoothLEAdvertisementsRequest():
                self._spawn(lambda: s.subscribe_adverts(self), "proxy advert subscribe")
            case pb.UnsubscribeBluetoothLEAdvertisementsRequest():
                s.unsubscribe_adverts(self)
            case pb.SubscribeBluetoothConnectionsFreeRequest():
                self.free_subscribed = True
                self.send_free()
            case pb.BluetoothDeviceRequest():
                self._device_request(msg)
            case pb.BluetoothGATTGetServicesRequest():
                self._gatt.put_nowait((msg.address, 0, lambda: self._services(msg.address)))
            case pb.BluetoothGATTReadRequest() | pb.BluetoothGATTReadDescriptorRequest():
                self._gatt.put_nowait((msg.address, msg.handle, lambda: self._read(msg)))
            case pb.BluetoothGATTWriteRequest() | pb.BluetoothGATTWriteDescriptorRequest():
                self._gatt.put_nowait((msg.address, msg.handle, lambda: self._write(msg)))
            case pb.BluetoothGATTNotifyRequest():
                self._gatt.put_nowait((msg.address, msg.handle, lambda: self._notify(msg)))
            case _:
                log.info("proxy_ignored_message", type=type(msg).__name__)
        return True

    # ---- Bluetooth -----------------------------------------------------------------------------

    def _device_request(self, msg: pb.BluetoothDeviceRequest) -> None:
        kind = msg.request_type
        if kind in (pb.BLUETOOTH_DEVICE_REQUEST_TYPE_CONNECT,
                    pb.BLUETOOTH_DEVICE_REQUEST_TYPE_CONNECT_V3_WITH_CACHE,
                    pb.BLUETOOTH_DEVICE_REQUEST_TYPE_CONNECT_V3_WITHOUT_CACHE):
            self._connect(msg.address)
        elif kind == pb.BLUETOOTH_DEVICE_REQUEST_TYPE_DISCONNECT:
            self._spawn(lambda: self._disconnect(msg.address), "proxy disconnect")
        elif kind == pb.BLUETOOTH_DEVICE_REQUEST_TYPE_CLEAR_CACHE:
            self.send(pb.BluetoothDeviceClearCacheResponse(address=msg.address, success=True))
        elif kind == pb.BLUETOOTH_DEVICE_REQUEST_TYPE_PAIR:
            # Pairing through a proxy bonds the ESP32, and there is no passkey entry in the
            # API: refused, as the gateway never asks (passkey controllers stay local).
            self.send(pb.BluetoothDevicePairingResponse(address=msg.address, paired=False,
                                                        error=0x05))
        elif kind == pb.BLUETOOTH_DEVICE_REQUEST_TYPE_UNPAIR:
            self._spawn(lambda: self._unpair(msg.address), "proxy unpair")

    async def _unpair(self, address: int) -> None:
        s = self.server
        s.unpaired.append(mac_str(address))
        async with s.gap(address):
            try:
                await s.radio.forget(mac_str(address))
            except RadioError as exc:
                self.send(pb.BluetoothDeviceUnpairingResponse(address=address, success=False,
                                                              error=exc.code))
                return
            s.bonded.discard(mac_str(address))  # the next connect pairs
        self.send(pb.BluetoothDeviceUnpairingResponse(address=address, success=True))

    def _connect(self, address: int) -> None:
        s = self.server
        slot = s.slot(address)
        if slot is not None and slot.closing:
            # The ESP32 connects again once the closing link is gone.
            async def after_close(closed: asyncio.Event = slot.closed) -> None:
                await closed.wait()
                self._connect(address)

            self._spawn(after_close, f"proxy connect after close {mac_str(address)}")
            return
        if slot is not None:
            if slot.link is not None and slot.owner is self:
                self.send(pb.BluetoothDeviceConnectionResponse(address=address, connected=True,
                                                               mtu=slot.link.mtu))
            return  # a connect in progress answers when it ends
        if s.free <= 0:
            self.send(pb.BluetoothDeviceConnectionResponse(address=address, connected=False,
                                                           error=NO_RESOURCES))
            return
        slot = s.claim(address, self)
        self._spawn(lambda: self._connect_slot(slot), f"proxy connect {mac_str(address)}")
        s.report_free()

    async def _connect_slot(self, slot: _Slot) -> None:
        s = self.server

        def lost() -> None:
            if s.holds(slot) and slot.link is not None and not slot.closing:
                s.lost(slot)
                self.send(pb.BluetoothDeviceConnectionResponse(
                    address=slot.address, connected=False, error=PEER_TERMINATED))
                s.report_free()

        async with s.gap(slot.address):
            try:
                link = await s.radio.connect(mac_str(slot.address), lost)
            except RadioError as exc:
                log.info("proxy_connect_failed", address=mac_str(slot.address), error=str(exc))
                await self._connect_failed(slot, exc.code)
                return
            except Exception as exc:
                # A radio fault the sim did not foresee: the ESP32 answers the connect as
                # failed and frees the slot, where a dead task would leave the client waiting.
                log.exception("proxy_connect_failed", address=mac_str(slot.address),
                              error=f"{type(exc).__name__}: {exc}")
                await self._connect_failed(slot, GATT_ERROR)
                return
            address = mac_str(slot.address)
            try:
                if s.holds(slot) and address not in s.bonded:
                    await link.pair()
                    s.bonded.add(address)
            except RadioError as exc:  # as on an ESP32: the link stays, unencrypted
                log.info("proxy_pairing_failed", address=address, error=str(exc))
            except asyncio.CancelledError:
                # The ESP32 lost its power or its client mid-connect: no link outlives that
                # (the controller would stay connected to nobody, silent to every radio).
                await asyncio.shield(link.disconnect())
                raise
        if not s.holds(slot):  # disconnected while connecting or pairing
            await link.disconnect()
            return
        slot.link = link
        self.send(pb.BluetoothDeviceConnectionResponse(address=slot.address, connected=True,
                                                       mtu=link.mtu))

    async def _connect_failed(self, slot: _Slot, error: int) -> None:
        await self.server.release(slot, notify=False)
        # The answer, then the slot report (bluetooth_connection.cpp reset_connection_): a
        # report that drops the address first reads to bleak-esphome as a phantom.
        self.send(pb.BluetoothDeviceConnectionResponse(address=slot.address, connected=False,
                                                       error=error))
        self.server.report_free()

    async def _disconnect(self, address: int) -> None:
        slot = self.server.slot(address)
        if slot is not None:
            await self.server.release(slot, notify=False)
        self.send(pb.BluetoothDeviceConnectionResponse(address=address, connected=False))
        if slot is not None:
            self.server.report_free()

    def _link(self, address: int, handle: int) -> RadioLink | None:
        slot = self.server.slot(address)
        if slot is None or slot.link is None or slot.closing:
            self.send(pb.BluetoothGATTErrorResponse(address=address, handle=handle,
                                                    error=PEER_TERMINATED))
            return None
        return slot.link

    async def _services(self, address: int) -> None:
        link = self._link(address, 0)
        if link is None:
            return
        try:
            services = await link.services()
        except RadioError as exc:
            self.send(pb.BluetoothGATTErrorResponse(address=address, error=exc.code))
            return
        for service in services:
            self.send(pb.BluetoothGATTGetServicesResponse(address=address, services=[
                pb.BluetoothGATTService(uuid=uuid_ints(service.uuid), handle=service.handle,
                                        characteristics=[
                    pb.BluetoothGATTCharacteristic(
                        uuid=uuid_ints(c.uuid), handle=c.handle, properties=c.properties,
                        descriptors=[pb.BluetoothGATTDescriptor(uuid=uuid_ints(d.uuid),
                                                                handle=d.handle)
                                     for d in c.descriptors])
                    for c in service.characteristics])]))
        self.send(pb.BluetoothGATTGetServicesDoneResponse(address=address))

    async def _read(self, msg: pb.BluetoothGATTReadRequest
                    | pb.BluetoothGATTReadDescriptorRequest) -> None:
        link = self._link(msg.address, msg.handle)
        if link is None:
            return
        try:
            if isinstance(msg, pb.BluetoothGATTReadRequest):
                data = await link.read(msg.handle)
            else:
                data = await link.read_descriptor(msg.handle)
        except RadioError as exc:
            self.send(pb.BluetoothGATTErrorResponse(address=msg.address, handle=msg.handle,
                                                    error=exc.code))
            return
        self.send(pb.BluetoothGATTReadResponse(address=msg.address, handle=msg.handle,
                                               data=data))

    async def _write(self, msg: pb.BluetoothGATTWriteRequest
                     | pb.BluetoothGATTWriteDescriptorRequest) -> None:
        link = self._link(msg.address, msg.handle)
        if link is None:
            return
        try:
            if isinstance(msg, pb.BluetoothGATTWriteRequest):
                await link.write(msg.handle, msg.data, msg.response)
                answer = msg.response
            else:
                await link.write_descriptor(msg.handle, msg.data)
                answer = True
        except RadioError as exc:
            self.send(pb.BluetoothGATTErrorResponse(address=msg.address, handle=msg.handle,
                                                    error=exc.code))
            return
        if answer:
            self.send(pb.BluetoothGATTWriteResponse(address=msg.address, handle=msg.handle))

    async def _notify(self, msg: pb.BluetoothGATTNotifyRequest) -> None:
        link = self._link(msg.address, msg.handle)
        if link is None:
            return
        address, handle = msg.address, msg.handle

        def data(value: bytes) -> None:
            self.send(pb.BluetoothGATTNotifyDataResponse(address=address, handle=handle,
                                                         data=value))

        try:
            await link.notify(handle, data if msg.enable else None)
        except RadioError as exc:
            log.info("proxy_notify_failed", address=mac_str(address), handle=handle,
                     error=str(exc))
            self.send(pb.BluetoothGATTErrorResponse(address=address, handle=handle,
                                                    error=exc.code))
            return
        self.send(pb.BluetoothGATTNotifyResponse(address=address, handle=handle))

"""One virtual AutoWatering controller: GATT server, advertiser, SMP server, link model, faults.

Runs in its own process (``python -m gateway.sim.controller``) on its own BlueZoo adapter, so a
power loss is a real process death and a reboot a real re-registration, as on the device.
"""


import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any, cast

import structlog
from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from firmware_bridge.gatt import uuids
from firmware_bridge.smp.wire import HEADER_SIZE, parse_header
from gateway.sim.controller.config import ControllerConfig, Faults, version_tuple
from gateway.sim.controller.control import CONTROL_PATH, ControlInterface
from gateway.sim.controller.flash_store import FlashStore
from gateway.sim.controller.gatt_app import (
    ADV_PATH,
    APP_ROOT,
    GattCharacteristic,
    GattService,
    LEAdvertisement,
    att_error,
)
from gateway.sim.controller.irrigation import AttError, IrrigationConfig, IrrigationModel, Schedule
from gateway.sim.controller.link_model import LinkParams, LinkScheduler
from gateway.sim.controller.smp_server import SmpServer, SmpServerConfig, TransportLimits
from gateway.sim.images import firmware_body, make_image
from gateway.sim.radios import PERIPHERAL_RADIOS_BUS_NAME

log = structlog.get_logger(__name__)

# The firmware restarts advertising ~0.8 s after a disconnect (device-ble.md section 2).
READVERTISE_DELAY_S = 0.8
# BlueZoo calls Confirm() after delivering each notification; waiting for it keeps dbus-fast's
# writer from breaking under bursts. A live central confirms within ~1 ms (tens of ms when the
# rig is busy); one that is gone or not yet subscribed never does, and a real controller drops
# that notification at once (bt_gatt_notify: -ENOTCONN). At 1 s, a few such in a row held
# every later notification back for seconds: a valve's close was confirmed 4.9 s late
# (bench/fleet.py, seed 5).
CONFIRM_TIMEOUT_S = 0.2
# MCUboot plus the app's start-up before the radio is back (no serial-recovery wait modelled).
BOOT_TIME_S = 0.5
TICK_S = 0.2

# Notification throttling per characteristic (device-ble.md 4.3): minimum spacing in seconds.
THROTTLE_S = {
    uuids.ALARM_STATUS: 0.0,
    uuids.SYSTEM_STATUS: 0.05,
    uuids.VALVE_CONTROL: 0.05,
    uuids.CURRENT_TASK: 0.05,
    uuids.TASK_QUEUE: 0.05,
    uuids.FLOW_SENSOR: 0.2,
    uuids.RTC_CONFIG: 0.2,
}
# Faults after which the device cannot answer the request that triggered them.
LINK_ENDING_FAULTS = {"drop_link", "reboot", "busy", "mute"}
# Characteristics whose every notification is an event that must not be coalesced away.
UNTHROTTLED_EVENTS = {uuids.ALARM_STATUS, uuids.SMP_CHARACTERISTIC, uuids.HISTORY,
                      uuids.TIMEZONE_CONFIG}
# Device Information is open; the irrigation service needs an encrypted link (3.1).
DIS_UUIDS = {uuids.DIS_FIRMWARE_REVISION, uuids.DIS_SERIAL_NUMBER, uuids.DIS_HARDWARE_REVISION}
# Characteristics that push their current value right after a subscription (4.3).
SNAPSHOT_ON_SUBSCRIBE = (uuids.ALARM_STATUS, uuids.TIMEZONE_CONFIG, uuids.DIAGNOSTICS,
                         uuids.RAIN_DATA, uuids.HYDRAULIC_STATUS)


class VirtualController:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.adapter_path = f"/org/bluez/hci{config.adapter_id}"
        self.bus: MessageBus | None = None
        self.link = LinkScheduler(LinkParams(config.interval_ms / 1000, config.packets_per_event,
                                             config.mtu))
        self.faults = Faults()
        self.connected_device: str | None = None
        self.advertising = False
        self._chars: dict[str, GattCharacteristic] = {}
        self._services: list[tuple[str, GattService]] = []
        self._pending: dict[str, bytes] = {}
        self._last_sent: dict[str, float] = {}
        self._events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._notify_wakeup = asyncio.Event()
        self._confirmed = asyncio.Event()
        self._smp_buffer = bytearray()
        self._smp_lock = asyncio.Lock()
        # One SMP work queue, as on the device: requests from every transport are handled one
        # at a time, so flash time is serialised whoever sends.
        self._smp_work = asyncio.Lock()
        self._smp_inbox: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._gatt_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._rebooting = False
        self.boots = 0
        self._running_version: str | None = None  # parsed from slot 0 after each boot
        self.store = FlashStore(Path(config.state_dir) / "flash")
        factory = make_image(version_tuple(config.firmware_version),
                             firmware_body(f"factory-{config.firmware_version}",
                                           config.factory_image_size))
        self.flash = self.store.load(config.flash_geometry(), factory)
        self.smp = SmpServer(self.flash, SmpServerConfig(
            buf_size=config.buf_size, buf_count=config.buf_count,
            mcumgr_params=config.mcumgr_params, indefinite_cbor=config.indefinite_cbor))
        self.model = self._new_model()
        self._trace = (open(Path(config.trace_dir) / f"{config.address}.trace", "a",  # noqa: SIM115 - lives as long as the controller
                            buffering=1) if config.trace_dir else None)

    def _new_model(self) -> IrrigationModel:
        schedules: tuple[Schedule, ...] = ()
        if self.config.schedule_every_s:
            schedules = (Schedule(channel=self.config.index % 8, minutes=1,
                                  every_s=self.config.schedule_every_s, first_after_s=2.0),)
        return IrrigationModel(
            IrrigationConfig(nominal_pps=self.config.nominal_pps, schedules=schedules,
                             time_scale=self.config.time_scale),
            on_change=self._on_model_change,
        )

    # ---- GATT table ------------------------------------------------------------------------

    def _build_gatt(self) -> None:
        mtu = self.config.mtu
        irrigation_path = f"{APP_ROOT}/service0"
        dis_path = f"{APP_ROOT}/service1"
        self._services = [(irrigation_path, GattService(uuids.IRRIGATION_SERVICE)),
                          (dis_path, GattService(uuids.DEVICE_INFORMATION_SERVICE))]
        table: list[tuple[str, str, list[str]]] = [
            (irrigation_path, uuids.VALVE_CONTROL, ["read", "write", "notify"]),
            (irrigation_path, uuids.FLOW_SENSOR, ["read", "notify"]),
            (irrigation_path, uuids.SYSTEM_STATUS, ["read", "notify"]),
            (irrigation_path, uuids.TASK_QUEUE, ["read", "write", "notify"]),
            (irrigation_path, uuids.RTC_CONFIG, ["read", "write", "notify"]),
            (irrigation_path, uuids.ALARM_STATUS, ["read", "write", "notify"]),
            (irrigation_path, uuids.CURRENT_TASK, ["read", "write", "notify"]),
            (irrigation_path, uuids.BULK_SYNC, ["read"]),
            (irrigation_path, uuids.CHANNEL_CONFIG, ["read", "write", "notify"]),
            (irrigation_path, uuids.SCHEDULE_CONFIG, ["read", "write", "notify"]),
            (irrigation_path, uuids.SYSTEM_CONFIG, ["read", "write", "notify"]),
            (irrigation_path, uuids.STATISTICS, ["read", "write", "notify"]),
            (irrigation_path, uuids.HISTORY, ["read", "write", "notify"]),
            (irrigation_path, uuids.DIAGNOSTICS, ["read", "notify"]),
            (irrigation_path, uuids.RAIN_DATA, ["read", "notify"]),
            (irrigation_path, uuids.ENVIRONMENTAL_DATA, ["read", "notify"]),
            (irrigation_path, uuids.HYDRAULIC_STATUS, ["read", "write", "notify"]),
            (irrigation_path, uuids.TIMEZONE_CONFIG, ["read", "write", "notify"]),
            (dis_path, uuids.DIS_FIRMWARE_REVISION, ["read"]),
            (dis_path, uuids.DIS_SERIAL_NUMBER, ["read"]),
            (dis_path, uuids.DIS_HARDWARE_REVISION, ["read"]),
        ]
        if self.config.smp:
            smp_path = f"{APP_ROOT}/service2"
            self._services.append((smp_path, GattService(uuids.SMP_SERVICE)))
            table.append((smp_path, uuids.SMP_CHARACTERISTIC, ["write-without-response",
                                                                 "notify"]))
        self._chars = {}
        for i, (service, uuid, flags) in enumerate(table):
            is_smp = uuid == uuids.SMP_CHARACTERISTIC
            char = GattCharacteristic(
                f"{service}/char{i:04d}", uuid, service, flags, mtu,
                read=None if is_smp else self._make_reader(uuid),
                write=self._smp_write if is_smp else (
                    self._make_writer(uuid) if "write" in flags else None),
                on_notify_change=self._on_notify_change,
                on_confirm=lambda _uuid: self._confirmed.set(),
            )
            self._chars[uuid] = char

    def _make_reader(self, uuid: str) -> Any:
        async def read(options: dict[str, Any]) -> bytes:
            await self._fault_delays()
            self._check_bond(uuid, options)
            value = self._read_value(uuid)
            offset = int(options.get("offset", 0))
            async with self._gatt_lock:
                await self.link.transmit(len(value) - offset, "down")
            return value[offset:]
        return read

    def _make_writer(self, uuid: str) -> Any:
        async def write(value: bytes, options: dict[str, Any]) -> None:
            await self._fault_delays()
            self._check_bond(uuid, options)
            async with self._gatt_lock:
                await self.link.transmit(len(value), "up")
            try:
                self.model.write(uuid, value, int(options.get("offset", 0)))
            except AttError as exc:
                raise att_error(exc.code) from exc
            except Exception as exc:  # the firmware never crashes on a write: 0x0E
                log.warning("write_handler_failed", uuid=uuid, error=str(exc))
                raise att_error(0x0E) from exc
        return write

    def _read_value(self, uuid: str) -> bytes:
        if uuid == uuids.DIS_FIRMWARE_REVISION:
            # DIS follows the image that booted, so an update shows in the revision.
            if self._running_version is None:
                self._running_version = (self.flash.running_version()
                                         or self.config.firmware_version)
            return self._running_version.encode()
        if uuid == uuids.DIS_SERIAL_NUMBER:
            return self.config.serial_number.encode()
        if uuid == uuids.DIS_HARDWARE_REVISION:
            return self.config.hardware_revision.encode()
        return self.model.read(uuid)

    def _check_bond(self, uuid: str, options: dict[str, Any]) -> None:
        """The irrigation service is encrypted (device-ble.md 3.1): after ``lose_bonds`` a
        central whose keys the controller forgot gets what BlueZ reports for ATT 0x05."""
        if not self.faults.bonds_lost or uuid in DIS_UUIDS:
            return
        central = str(options.get("device") or self.connected_device or "")
        if central not in self.faults.rebonded:
            raise DBusError("org.bluez.Error.NotPermitted", "Not paired")

    async def _fault_delays(self) -> None:
        now = time.monotonic()
        if now < self.faults.mute_until:
            # A missing reply: the central's request times out, as with a hung peer.
            await asyncio.sleep(self.faults.mute_until - now + 60)
        if now < self.faults.slow_until:
            await asyncio.sleep(self.faults.slow_s)

    # ---- notifications ---------------------------------------------------------------------

    def _on_notify_change(self, uuid: str, enabled: bool) -> None:
        if not enabled:
            self._pending.pop(uuid, None)
        elif uuid in SNAPSHOT_ON_SUBSCRIBE:
            self._queue_notification(uuid, self.model.read(uuid))

    def _on_model_change(self, uuid: str, value: bytes) -> None:
        self._queue_notification(uuid, value)

    def _queue_notification(self, uuid: str, value: bytes) -> None:
        char = self._chars.get(uuid)
        if char is None or not char.notifying:
            return
        if uuid in self.faults.corrupt_next:
            self.faults.corrupt_next.discard(uuid)
            value = bytes(random.getrandbits(8) for _ in range(max(1, len(value) - 1)))
        if uuid in UNTHROTTLED_EVENTS:
            self._events.put_nowait((uuid, value))
        else:
            # While throttled only the latest payload per characteristic is kept.
            self._pending[uuid] = value
        self._notify_wakeup.set()

    async def _notifier(self) -> None:
        while True:
            await self._notify_wakeup.wait()
            self._notify_wakeup.clear()
            while not self._events.empty() or self._pending:
                if not self._events.empty():
                    uuid, value = self._events.get_nowait()
                else:
                    now = time.monotonic()
                    due = [(self._last_sent.get(u, 0) + THROTTLE_S.get(u, 1.0), u)
                           for u in self._pending]
                    when, uuid = min(due)
                    if when > now:
                        await asyncio.sleep(when - now)
                        continue
                    value = self._pending.pop(uuid)
                await self._send_notification(uuid, value)

    async def _send_notification(self, uuid: str, value: bytes) -> None:
        char = self._chars.get(uuid)
        if char is None or not char.notifying or self.connected_device is None:
            return
        await self.link.transmit(len(value), "down")
        if self._trace is not None:
            self._trace.write(f"{uuid} {value.hex()} {time.monotonic_ns()}\n")
        self._confirmed.clear()
        self._last_sent[uuid] = time.monotonic()
        char.set_value(value)
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                await self._confirmed.wait()
        except TimeoutError:
            log.debug("notification_unconfirmed", controller=self.config.index,
                      uuid=uuid[4:8] if uuid.startswith("0000") else uuid[-4:],
                      connected=self.connected_device is not None, notifying=char.notifying)

    # ---- SMP over GATT ---------------------------------------------------------------------

    async def _smp_write(self, value: bytes, options: dict[str, Any]) -> None:
        """Write Without Response: the host returns at once (the PDU waits in the link
        layer's buffers); the piece reaches the SMP server in its connection event, in order."""
        if len(value) > self.config.mtu - 3:
            return  # larger than an ATT write can be: the link would never carry it
        due = time.monotonic() + self.link.reserve(len(value), "up")
        self._smp_inbox.put_nowait((due, value))

    async def _smp_receiver(self) -> None:
        while True:
            due, value = await self._smp_inbox.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._fault_delays()
            await self._smp_piece(value)

    async def _smp_piece(self, value: bytes) -> None:
        async with self._smp_lock:
            if not self._smp_buffer and len(value) >= HEADER_SIZE:
                header = parse_header(value)
                if header.op not in (0, 2) or header.length + HEADER_SIZE > self.config.buf_size:
                    return  # not a plausible request start: dropped like Zephyr drops it
            self._smp_buffer += value
            if len(self._smp_buffer) < HEADER_SIZE:
                return
            need = HEADER_SIZE + parse_header(bytes(self._smp_buffer)).length
            if len(self._smp_buffer) < need:
                return
            frame = bytes(self._smp_buffer[:need])
            del self._smp_buffer[:]
        await self._serve_smp(frame, self._send_smp_ble)

    async def _serve_smp(self, frame: bytes, send: Any,
                         limits: TransportLimits | None = None) -> None:
        async with self._smp_work:
            if self._rebooting:
                return  # the device is down: nothing answers
            reply = self.smp.handle(frame, limits)
            self.store.save(self.flash, self.smp.touched)
            if reply.busy_s:
                await asyncio.sleep(reply.busy_s)
        if await self._upload_offset_faults():
            return  # the link or the device went away before the reply could leave
        if reply.frame is not None:
            if self.faults.drop_smp_replies > 0:
                self.faults.drop_smp_replies -= 1
            else:
                await send(reply.frame)
        if reply.reset_after_s is not None:
            self._spawn(self._reboot(reply.reset_after_s), "reboot")

    async def _upload_offset_faults(self) -> bool:
        """Fire faults armed for an upload offset this request's write reached; return whether
        one of them ends the link (the reply is then never sent)."""
        if not self.smp.touched or not self.faults.at_upload_offset:
            return False
        reached = max(end for _start, end in self.smp.touched)
        fired = [f for f in self.faults.at_upload_offset if reached >= f[0]]
        for fault in fired:
            self.faults.at_upload_offset.remove(fault)
            await self.inject(fault[1], fault[2])
        return any(kind in LINK_ENDING_FAULTS for _off, kind, _params in fired)

    async def _send_smp_ble(self, frame: bytes) -> None:
        chunk = self.config.mtu - 3
        for start in range(0, len(frame), chunk):
            self._events.put_nowait((uuids.SMP_CHARACTERISTIC, frame[start:start + chunk]))
        self._notify_wakeup.set()

    # ---- SMP over UDP (Zephyr's UDP transport) ---------------------------------------------

    class _UdpProtocol(asyncio.DatagramProtocol):
        def __init__(self, controller: "VirtualController") -> None:
            self.c = controller
            self.transport: asyncio.DatagramTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if self.c._rebooting:
                return  # silent while rebooting, as a device whose network is down

            async def send(frame: bytes) -> None:
                if self.transport is not None and not self.c._rebooting:
                    self.transport.sendto(frame, addr)
            limits = TransportLimits(self.c.config.udp_buf_size, self.c.config.udp_buf_count)
            self.c._spawn(self.c._serve_smp(data, send, limits), "smp-udp")

    # ---- connection tracking and advertising ----------------------------------------------------

    def _on_bus_message(self, msg: Message) -> None:
        if (msg.message_type != MessageType.SIGNAL or msg.member != "PropertiesChanged"
                or not (msg.path or "").startswith(f"{self.adapter_path}/dev_")):
            return
        iface, changed, _ = msg.body
        if iface != "org.bluez.Device1":
            return
        if changed.get("Paired") is not None and changed["Paired"].value and msg.path:
            self.faults.rebonded.add(msg.path)  # the central paired (again): a fresh bond
        if "Connected" not in changed:
            return
        if changed["Connected"].value and msg.path:
            self._on_connected(msg.path)
        elif msg.path == self.connected_device:
            self._on_disconnected()

    def _on_connected(self, device_path: str) -> None:
        self.connected_device = device_path
        self.link.reset()
        self._smp_buffer.clear()
        while not self._smp_inbox.empty():  # in the air when the link went: lost with it
            self._smp_inbox.get_nowait()
        self._spawn(self._stop_advertising(), "adv-stop")
        log.info("central_connected", controller=self.config.index, device=device_path)

    def _on_disconnected(self) -> None:
        self.connected_device = None
        self._pending.clear()
        for char in self._chars.values():
            char.unsubscribe()  # subscriptions are per connection
            char.close_acquired()
        log.info("central_disconnected", controller=self.config.index)
        if not self._rebooting:
            self._spawn(self._readvertise(READVERTISE_DELAY_S), "adv-restart")

    async def _readvertise(self, delay: float) -> None:
        await asyncio.sleep(delay)
        busy_left = self.faults.busy_until - time.monotonic()
        if busy_left > 0:
            await asyncio.sleep(busy_left)
        if self.connected_device is None and not self._rebooting:
            await self._start_advertising()

    async def _call(self, path: str, iface: str, member: str, signature: str,
                    body: list[Any]) -> Message:
        assert self.bus is not None
        # The controller's own radio is served apart from BlueZ's name (gateway.sim.radios).
        reply = await self.bus.call(Message(destination=PERIPHERAL_RADIOS_BUS_NAME, path=path,
                                            interface=iface, member=member,
                                            signature=signature, body=body))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise DBusError(reply.error_name or "unknown", str(reply.body))
        return reply

    async def _start_advertising(self) -> None:
        if self.advertising:
            return
        self.advertising = True
        try:
            await self._call(self.adapter_path, "org.bluez.LEAdvertisingManager1",
                             "RegisterAdvertisement", "oa{sv}", [ADV_PATH, {}])
        except DBusError:
            self.advertising = False
            raise

    async def _stop_advertising(self) -> None:
        if not self.advertising:
            return
        self.advertising = False
        with contextlib.suppress(DBusError):
            await self._call(self.adapter_path, "org.bluez.LEAdvertisingManager1",
                             "UnregisterAdvertisement", "o", [ADV_PATH])

    async def _register_app(self) -> None:
        assert self.bus is not None
        self._build_gatt()
        for path, service in self._services:
            self.bus.export(path, service)
        for char in self._chars.values():
            self.bus.export(char.path, char)
        await self._call(self.adapter_path, "org.bluez.GattManager1", "RegisterApplication",
                         "oa{sv}", [APP_ROOT, {}])

    async def _unregister_app(self) -> None:
        assert self.bus is not None
        with contextlib.suppress(DBusError):
            await self._call(self.adapter_path, "org.bluez.GattManager1",
                             "UnregisterApplication", "o", [APP_ROOT])
        for char in self._chars.values():
            self.bus.unexport(char.path)
        for path, _service in self._services:
            self.bus.unexport(path)

    async def disconnect_central(self) -> None:
        if self.connected_device is not None:
            await self._call(self.connected_device, "org.bluez.Device1", "Disconnect", "", [])

    async def _reboot(self, delay: float) -> None:
        """Reset: RAM state is lost, MCUboot decides what boots, the radio comes back."""
        await asyncio.sleep(delay)
        self._rebooting = True
        await self._stop_advertising()
        await self._unregister_app()
        self.connected_device = None
        outcome = self.flash.boot()
        self._running_version = None
        self.store.save(self.flash)
        log.info("controller_rebooted", controller=self.config.index, boot=outcome)
        await asyncio.sleep(BOOT_TIME_S)
        self.model = self._new_model()
        self.boots += 1
        self._rebooting = False
        await self._register_app()
        await self._start_advertising()
        if self.config.self_confirm_after_s is not None and not self.flash.slot0_confirmed:
            self._spawn(self._self_confirm(self.config.self_confirm_after_s), "self-confirm")

    async def _self_confirm(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        if not self._rebooting and not self.flash.slot0_confirmed:
            self.flash.confirm_running()
            self.store.save(self.flash)
            log.info("controller_self_confirmed", controller=self.config.index)

    # ---- faults ------------------------------------------------------------------------------

    async def inject(self, kind: str, params: dict[str, Any]) -> None:
        """Arm or fire one fault. Time-based faults take ``duration_s``; ``at_upload_offset``
        defers any fault until the upload reaches that byte offset."""
        at = params.pop("at_upload_offset", None)
        if at is not None:
            self.faults.at_upload_offset.append((int(at), kind, params))
            return
        now = time.monotonic()
        duration = float(params.get("duration_s", 5.0))
        if kind == "drop_link":
            await self.disconnect_central()
        elif kind == "reboot":
            self._spawn(self._reboot(0.0), "reboot")
        elif kind == "busy":
            # Connected to the phone app: not advertising, and the central is refused.
            self.faults.busy_until = now + duration
            await self.disconnect_central()
            await self._stop_advertising()
            self._spawn(self._readvertise(duration), "adv-after-busy")
        elif kind == "slow":
            self.faults.slow_s = float(params.get("delay_s", 1.0))
            self.faults.slow_until = now + duration
        elif kind == "mute":
            self.faults.mute_until = now + duration
        elif kind == "lose_bonds":
            self.faults.bonds_lost = True
            self.faults.rebonded.clear()
        elif kind == "drop_smp_reply":
            self.faults.drop_smp_replies += int(params.get("count", 1))
        elif kind == "corrupt_notification":
            self.faults.corrupt_next.add(str(params.get("uuid", uuids.CURRENT_TASK)).lower())
        elif kind == "line_flow":  # a zone's line blocked (pps=0) or flowing again
            self.model.set_line_flow(int(params.get("channel", 0)), int(params.get("pps", 0)))
        elif kind == "stray_flow":
            self.model.set_stray_flow(int(params.get("pps", 0)))
        elif kind == "freeze":  # temperature_c_x10, or stale=1 for stale environmental data
            stale = bool(params.get("stale", 0))
            self.model.freeze(None if stale else int(params.get("temperature_c_x10", 0)))
        elif kind == "thaw":
            self.model.thaw()
        else:
            raise ValueError(f"unknown fault {kind!r}")

    def status(self) -> dict[str, Any]:
        return {
            "index": self.config.index,
            "address": self.config.address,
            "connected": self.connected_device is not None,
            "advertising": self.advertising,
            "boots": self.boots,
            "images": [{**s, "hash": s["hash"].hex()} for s in self.flash.image_states()],
            "upload_offset": self.flash.upload.off if self.flash.upload else None,
            "valve_states": self.model.valve_states,
            "status": int(self.model.status),
            "alarm": int(self.model.alarm.code),
            # What the controller's history holds (channel, timestamp, volume): the record a
            # bench compares with what reached the cloud.
            "history": [[e.channel_id, int(e.timestamp), int(e.total_volume_ml)]
                        for e in self.model.history],
        }

    # ---- lifecycle ---------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"controller{self.config.index}-{name}")
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("controller_task_failed", task=task.get_name(),
                      error=repr(task.exception()))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if not self._rebooting:
                self.model.tick()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        self.bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        self.bus.export(CONTROL_PATH, ControlInterface(self))
        self.bus.export(ADV_PATH, LEAdvertisement(
            uuids.ADVERTISED_NAME, [uuids.IRRIGATION_SERVICE],
            {uuids.MANUFACTURER_ID: uuids.MANUFACTURER_DATA}))
        await self.bus.request_name(f"org.autowatering.sim.controller{self.config.index}")
        rule = (f"type='signal',sender='{PERIPHERAL_RADIOS_BUS_NAME}',"
                "interface='org.freedesktop.DBus.Properties',"
                f"path_namespace='{self.adapter_path}'")
        await self._call_bus("AddMatch", "s", [rule])
        self.bus.add_message_handler(self._on_bus_message)
        udp = None
        if self.config.udp_port is not None:
            loop = asyncio.get_running_loop()
            udp, _ = await loop.create_datagram_endpoint(
                lambda: VirtualController._UdpProtocol(self),
                local_addr=(self.config.udp_host, self.config.udp_port))
        await self._register_app()
        await self._start_advertising()
        self._spawn(self._notifier(), "notifier")
        self._spawn(self._ticker(), "ticker")
        self._spawn(self._smp_receiver(), "smp-receiver")
        if ready is not None:
            ready.set()
        try:
            await self._stopping.wait()
        finally:
            if udp is not None:
                udp.close()
            for task in list(self._tasks):
                task.cancel()
            self.bus.disconnect()

    async def _call_bus(self, member: str, signature: str, body: list[Any]) -> None:
        assert self.bus is not None
        await self.bus.call(Message(destination="org.freedesktop.DBus",
                                    path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member=member,
                                    signature=signature, body=body))

    def stop(self) -> None:
        self._stopping.set()


__all__ = ["ControllerConfig", "Variant", "VirtualController"]

"""Real bleak against the virtual rig: what a central sees of the virtual controllers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError, BleakGATTProtocolError
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from smpclient import SMPClient
from smpclient.requests.image_management import ImageStatesRead, ImageStatesWrite
from smpclient.requests.os_management import EchoWrite, ResetWrite
from smpclient.transport.ble import SMPBLETransport

from firmware_bridge.bleak_compat import acquire_mtu
from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import (
    AlarmCode,
    AlarmStatus,
    BulkSync,
    CurrentTask,
    TaskQueue,
    TaskQueueCommand,
    ValveControl,
)
from gateway.sim.images import firmware_body, make_image
from gateway.sim.radios import PERIPHERAL_RADIOS_BUS_NAME
from gateway.sim.rig import Rig

pytestmark = pytest.mark.rig
HCI0: Any = {"adapter": "hci0"}


async def connect(address: str) -> BleakClient:
    client = BleakClient(address, bluez=HCI0, timeout=10)
    await client.connect()
    return client


async def test_scan_sees_name_uuid_and_manufacturer_data(rig: Rig) -> None:
    found = await BleakScanner.discover(timeout=2.5, return_adv=True, bluez=HCI0)
    _device, adv = found[rig.controllers[0].address]
    assert adv.local_name == "AutoWatering"
    assert uuids.IRRIGATION_SERVICE in adv.service_uuids
    assert adv.manufacturer_data == {0x0000: b"AW"}
    assert adv.rssi < 0


async def test_p0_reads_match_the_spec(rig: Rig) -> None:
    client = await connect(rig.controllers[0].address)
    try:
        await acquire_mtu(client)
        assert client.mtu_size == 247
        assert await client.read_gatt_char(uuids.DIS_FIRMWARE_REVISION) == b"3.1.0"  # V8a
        assert await client.read_gatt_char(uuids.DIS_HARDWARE_REVISION) == b"v1"
        assert await client.read_gatt_char(uuids.VALVE_CONTROL) == bytes.fromhex("ff000000")
        idle = await client.read_gatt_char(uuids.CURRENT_TASK)
        assert idle == bytes.fromhex("ff" + "00" * 20)  # V6 idle
        assert await client.read_gatt_char(uuids.SYSTEM_STATUS) == b"\x00"
        assert len(await client.read_gatt_char(uuids.FLOW_SENSOR)) == 4
        bulk = BulkSync.decode(await client.read_gatt_char(uuids.BULK_SYNC))
        assert bulk.version == 1 and bulk.active_channel == 0xFF and bulk.rtc_valid
        queue = TaskQueue.decode(await client.read_gatt_char(uuids.TASK_QUEUE))
        assert queue.pending_count == 0 and queue.current_channel == 0xFF
        assert len(await client.read_gatt_char(uuids.RTC_CONFIG)) == 16
    finally:
        await client.disconnect()


async def test_valve_command_opens_valve_and_notifies(rig: Rig) -> None:
    client = await connect(rig.controllers[0].address)
    got: list[bytes] = []
    try:
        await client.start_notify(uuids.VALVE_CONTROL, lambda _c, d: got.append(bytes(d)))
        await client.write_gatt_char(uuids.VALVE_CONTROL, ValveControl.duration_task(2, 15)
                                     .encode(), response=True)
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.05)
        assert got[0] == bytes.fromhex("02010000")  # V2: channel 2 valve opened
        task = CurrentTask.decode(await client.read_gatt_char(uuids.CURRENT_TASK))
        assert task.channel_id == 2 and task.target_value == 900
        bulk = BulkSync.decode(await client.read_gatt_char(uuids.BULK_SYNC))
        assert bulk.valve_open(2)
        await client.write_gatt_char(uuids.CURRENT_TASK, b"\x00", response=True)
        await asyncio.sleep(0.3)
        assert got[-1] == bytes.fromhex("02000000")
    finally:
        await client.disconnect()


async def test_invalid_writes_get_the_firmware_att_errors(rig: Rig) -> None:
    client = await connect(rig.controllers[0].address)
    try:
        with pytest.raises(BleakGATTProtocolError) as excinfo:
            await client.write_gatt_char(uuids.VALVE_CONTROL, bytes.fromhex("09000f00"),
                                         response=True)
        assert excinfo.value.code == 0x13
        with pytest.raises(BleakGATTProtocolError) as excinfo:
            await client.write_gatt_char(uuids.VALVE_CONTROL, b"\x01\x02", response=True)
        assert excinfo.value.code == 0x0D
        with pytest.raises(BleakGATTProtocolError) as excinfo:
            await client.write_gatt_char(uuids.CURRENT_TASK, b"\x00", response=True)
        assert excinfo.value.code == 0x03  # nothing to stop
        # The task queue answers every 9-byte frame with success; failure only by notification.
        errors: list[bytes] = []
        await client.start_notify(uuids.TASK_QUEUE, lambda _c, d: errors.append(bytes(d)))
        start_next = TaskQueue.command_frame(TaskQueueCommand.START_NEXT).encode()
        await client.write_gatt_char(uuids.TASK_QUEUE, start_next, response=True)
        for _ in range(40):
            if errors:
                break
            await asyncio.sleep(0.05)
        assert TaskQueue.decode(errors[0]).error_code == 1  # queue empty
        assert await client.read_gatt_char(uuids.BULK_SYNC)  # still alive
    finally:
        await client.disconnect()


async def test_alarm_raise_and_clear(rig: Rig) -> None:
    client = await connect(rig.controllers[0].address)
    got: list[AlarmStatus] = []
    try:
        await client.start_notify(uuids.ALARM_STATUS,
                                  lambda _c, d: got.append(AlarmStatus.decode(bytes(d))))
        await rig.raise_alarm(0, AlarmCode.UNEXPECTED_FLOW, 42)
        await asyncio.sleep(0.3)
        assert any(a.code == AlarmCode.UNEXPECTED_FLOW and a.data == 42 for a in got)
        await client.write_gatt_char(uuids.ALARM_STATUS, b"\x00", response=True)
        await asyncio.sleep(0.3)
        assert got[-1].code == AlarmCode.NONE
    finally:
        await client.disconnect()


async def _wait_disconnected(event: asyncio.Event) -> None:
    # The rig shows a lost link to the central within ~10 ms; 3 s is generous on a loaded CI.
    async with asyncio.timeout(3.0):
        await event.wait()


@pytest.mark.parametrize("kind", ["drop_link", "power_loss", "reboot"])
async def test_link_faults_are_seen_by_the_central(rig: Rig, kind: str) -> None:
    lost = asyncio.Event()
    client = BleakClient(rig.controllers[0].address, bluez=HCI0,
                         disconnected_callback=lambda _c: lost.set())
    await client.connect()
    await rig.fault(0, kind)
    await _wait_disconnected(lost)
    assert not client.is_connected
    if kind == "power_loss":
        await rig.fault(0, "power_restore")
    await asyncio.sleep(1.5)  # re-advertising after disconnect/boot
    again = await connect(rig.controllers[0].address)
    assert await again.read_gatt_char(uuids.DIS_FIRMWARE_REVISION) == b"3.1.0"
    await again.disconnect()


async def test_busy_controller_refuses_connections(rig: Rig) -> None:
    await BleakScanner.discover(timeout=1.5, bluez=HCI0)  # known to BlueZ, as after a scan
    await rig.fault(0, "busy", duration_s=6.0)
    with pytest.raises((BleakError, TimeoutError)):
        await BleakClient(rig.controllers[0].address, bluez=HCI0, timeout=3.0).connect()
    # Once the phone app lets go the controller advertises again and accepts us.
    client = await connect(rig.controllers[0].address)
    await client.disconnect()


async def test_slow_and_missing_replies(rig: Rig) -> None:
    client = await connect(rig.controllers[0].address)
    try:
        await rig.fault(0, "slow", delay_s=0.6, duration_s=2.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await client.read_gatt_char(uuids.SYSTEM_STATUS)
        assert loop.time() - start >= 0.5
        await rig.fault(0, "mute", duration_s=1.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await client.read_gatt_char(uuids.SYSTEM_STATUS)
    finally:
        await client.disconnect()


async def test_corrupted_notification_arrives_malformed(rig: Rig) -> None:
    client = await connect(rig.controllers[0].address)
    got: list[bytes] = []
    try:
        await client.start_notify(uuids.CURRENT_TASK, lambda _c, d: got.append(bytes(d)))
        await rig.fault(0, "corrupt_notification", uuid=uuids.CURRENT_TASK)
        await client.write_gatt_char(uuids.VALVE_CONTROL, ValveControl.duration_task(1, 5)
                                     .encode(), response=True)
        await asyncio.sleep(0.5)
        assert got and len(got[0]) != 21  # the first frame was mangled (wrong length)
        assert any(len(frame) == 21 for frame in got[1:])
    finally:
        await client.disconnect()


async def _adapters(bus: MessageBus, name: str) -> set[str]:
    reply = await bus.call(Message(destination=name, path="/",
                                   interface="org.freedesktop.DBus.ObjectManager",
                                   member="GetManagedObjects"))
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
    return {path for path, ifaces in reply.body[0].items() if "org.bluez.Adapter1" in ifaces}


@pytest.mark.rig_options(controllers=3)
async def test_ble_clients_see_only_the_gateways_adapter(rig: Rig) -> None:
    bus = await MessageBus(bus_address=rig.bus_address).connect()
    try:
        # What btleplug (mcumgr-toolkit) and bleak enumerate: one adapter, as on a real hub.
        assert await _adapters(bus, "org.bluez") == {"/org/bluez/hci0"}
        assert await _adapters(bus, PERIPHERAL_RADIOS_BUS_NAME) == {
            f"/org/bluez/hci{h.adapter_id}" for h in rig.controllers}
    finally:
        bus.disconnect()
    # A client that names no adapter still reaches every controller.
    found = await BleakScanner.discover(timeout=2.5)
    assert {h.address for h in rig.controllers} <= {d.address for d in found}


@pytest.mark.rig_options(controllers=3)
async def test_several_controllers_at_once(rig: Rig) -> None:
    clients = await asyncio.gather(*(connect(h.address) for h in rig.controllers))
    serials = [await c.read_gatt_char(uuids.DIS_SERIAL_NUMBER) for c in clients]
    assert serials == [b"100001", b"100002", b"100003"]
    await asyncio.gather(*(c.disconnect() for c in clients))


async def test_smpclient_ble_full_update_cycle(rig: Rig) -> None:
    image = make_image((3, 2, 0, 0), firmware_body("update", 20_000))
    client = SMPClient(SMPBLETransport(), rig.controllers[0].address)
    await client.connect()
    echo = await client.request(EchoWrite(d="ping"))
    assert echo.r == "ping"  # type: ignore[union-attr]
    async for _offset in client.upload(image):
        pass
    states = await client.request(ImageStatesRead())
    new_hash = states.images[1].hash  # type: ignore[union-attr]
    marked = await client.request(ImageStatesWrite(hash=new_hash, confirm=False))
    assert marked.images[1].pending  # type: ignore[union-attr]
    await client.request(ResetWrite())
    await client.disconnect()
    await asyncio.sleep(2.0)
    client = SMPClient(SMPBLETransport(), rig.controllers[0].address)
    await client.connect()
    after = await client.request(ImageStatesRead())
    assert after.images[0].hash == new_hash and not after.images[0].confirmed  # type: ignore
    confirmed = await client.request(ImageStatesWrite(confirm=True))
    assert confirmed.images[0].confirmed  # type: ignore[union-attr]
    await client.disconnect()
    status = await rig.status(0)
    assert status["images"][0]["version"] == "3.2.0" and status["boots"] == 1


def test_awgw_sim_is_visible_to_an_independent_bleak_process() -> None:
    sim = subprocess.Popen([sys.executable, "-m", "gateway.cli", "sim", "--controllers", "3"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline().strip()
        assert line.startswith("DBUS_SYSTEM_BUS_ADDRESS=")
        address = line.split("=", 1)[1]
        script = (
            "import asyncio\nfrom bleak import BleakScanner\n"
            "async def main():\n"
            "    found = await BleakScanner.discover(timeout=3, bluez={'adapter': 'hci0'},"
            " service_uuids=['12345678-1234-5678-1234-56789abcdef0'])\n"
            "    print(len(found))\nasyncio.run(main())\n")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env={"DBUS_SYSTEM_BUS_ADDRESS": address, "PATH": "/usr/bin"},
                                timeout=60, check=True)
        assert result.stdout.strip() == "3"
    finally:
        sim.terminate()
        assert sim.wait(timeout=20) == 0


def test_awgw_sim_rejects_bad_options() -> None:
    for args in (["--controllers", "0"], ["--fault", "nonsense"], ["--interval-ms", "x"],
                 ["--fault", "5:drop_link"], ["--fault", "0:explode"]):
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", *args],
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 2, args
        assert "error" in result.stderr


async def _characteristics(bus: MessageBus, device_path: str) -> set[str]:
    reply = await bus.call(Message(destination="org.bluez", path="/",
                                   interface="org.freedesktop.DBus.ObjectManager",
                                   member="GetManagedObjects"))
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
    return {path for path, ifaces in reply.body[0].items()
            if path.startswith(device_path) and "org.bluez.GattCharacteristic1" in ifaces}


async def test_a_connect_during_a_teardown_waits_for_it_and_resolves_every_service(
        rig: Rig) -> None:
    address = rig.controllers[0].address
    path = "/org/bluez/hci0/dev_" + address.replace(":", "_")
    client = await connect(address)  # BlueZ now knows the device and its services
    for char in client.services.characteristics.values():
        if "notify" in char.properties:  # the teardown then stops each: it takes a while
            await client.start_notify(char, lambda _c, _d: None)
    bus = await MessageBus(bus_address=rig.bus_address).connect()
    try:
        everything = await _characteristics(bus, path)
        assert len(everything) > 10

        def call(member: str) -> Any:
            return bus.call(Message(destination="org.bluez", path=path,
                                    interface="org.bluez.Device1", member=member))

        # Both go out back to back, as when an updater connects while a visit lets go.
        replies = await asyncio.gather(call("Disconnect"), call("Connect"))
        assert all(r.message_type == MessageType.METHOD_RETURN for r in replies)
        connected = await bus.call(Message(
            destination="org.bluez", path=path, interface="org.freedesktop.DBus.Properties",
            member="Get", signature="ss", body=["org.bluez.Device1", "Connected"]))
        assert connected is not None and connected.body[0].value is True
        assert await _characteristics(bus, path) == everything
    finally:
        bus.disconnect()
        with contextlib.suppress(BleakError):
            await client.disconnect()


async def test_a_subscription_a_vanished_link_left_behind_does_not_refuse_the_next(
        rig: Rig) -> None:
    """A link that ends without its StopNotify (the central's adapter removed while a
    subscribe was under way) left the controller's characteristic notifying, and BlueZoo took
    every later StartNotify for an AcquireNotify, which the characteristic refuses: in one
    fleet bench trial a controller refused each subscribe through a proxy for minutes."""
    name, path = "org.autowatering.sim.controller0", "/org/autowatering/app/service0/char0001"
    uuid = await rig._call(name, path, "org.freedesktop.DBus.Properties", "Get", "ss",
                           ["org.bluez.GattCharacteristic1", "UUID"])
    assert uuid.body[0].value == uuids.FLOW_SENSOR
    await rig._call(name, path, "org.bluez.GattCharacteristic1", "StartNotify", "", [])
    client = await connect(rig.controllers[0].address)
    try:
        await client.start_notify(uuids.FLOW_SENSOR, lambda _c, _d: None)
        await client.stop_notify(uuids.FLOW_SENSOR)
    finally:
        await client.disconnect()


async def test_a_subscribe_racing_the_link_teardown_does_not_refuse_the_next(rig: Rig) -> None:
    """A StartNotify still on its way to the controller when its link is torn down: the
    controller takes it, then sees its link end and drops the subscription. It said nothing
    of that on the bus, so BlueZoo kept it notifying and took every later StartNotify for an
    AcquireNotify (a slot pre-empted mid-subscribe cost a controller its refreshes)."""
    address = rig.controllers[0].address
    path = "/org/bluez/hci0/dev_" + address.replace(":", "_")
    client = await connect(address)
    flow = client.services.get_characteristic(uuids.FLOW_SENSOR)
    assert flow is not None
    bus = await MessageBus(bus_address=rig.bus_address).connect()
    try:
        # Sent back to back; the StartNotify's answer never comes (its object goes with the
        # link), as a subscribe a pre-empted visit had under way is never answered.
        await bus.send(Message(destination="org.bluez", path=flow.obj[0],
                               interface="org.bluez.GattCharacteristic1", member="StartNotify"))
        reply = await bus.call(Message(destination="org.bluez", path=path,
                                       interface="org.bluez.Device1", member="Disconnect"))
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
    finally:
        bus.disconnect()
    with contextlib.suppress(BleakError):
        await client.disconnect()
    client = await connect(address)
    try:
        await client.start_notify(uuids.FLOW_SENSOR, lambda _c, _d: None)
        await client.stop_notify(uuids.FLOW_SENSOR)
    finally:
        await client.disconnect()

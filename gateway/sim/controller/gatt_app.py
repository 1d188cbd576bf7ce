"""The virtual controller's BlueZ GATT application and LE advertisement, on dbus-fast.

Exported objects (under /org/autowatering/app) follow BlueZ's GattService1 /
GattCharacteristic1 contract, which BlueZoo links to the central exactly like bluetoothd does.
"""


import os
import socket
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from dbus_fast import DBusError, PropertyAccess, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
)
from dbus_fast.service import ServiceInterface, dbus_property, method

APP_ROOT = "/org/autowatering/app"
ADV_PATH = "/org/autowatering/adv0"

Options = Annotated[dict[str, Any], DBusSignature("a{sv}")]
Strings = Annotated[list[str], DBusSignature("as")]
ObjectPaths = Annotated[list[str], DBusSignature("ao")]
ManufacturerMap = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
FdAndMtu = Annotated[list[int], DBusSignature("hq")]

ReadHandler = Callable[[dict[str, Any]], Awaitable[bytes]]
WriteHandler = Callable[[bytes, dict[str, Any]], Awaitable[None]]


def att_error(code: int) -> DBusError:
    """An ATT error as BlueZ reports it to the central's D-Bus client."""
    return DBusError("org.bluez.Error.Failed", f"Operation failed with ATT error: 0x{code:02x}")


class GattService(ServiceInterface):
    def __init__(self, uuid: str, primary: bool = True) -> None:
        super().__init__("org.bluez.GattService1")
        self._uuid = uuid
        self._primary = primary

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return self._primary

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> ObjectPaths:
        return []


class GattCharacteristic(ServiceInterface):
    def __init__(
        self, path: str, uuid: str, service_path: str, flags: list[str], mtu: int,
        read: ReadHandler | None = None, write: WriteHandler | None = None,
        on_notify_change: Callable[[str, bool], None] | None = None,
        on_confirm: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.path = path
        self.uuid = uuid
        self._service = service_path
        self._flags = flags
        self.mtu = mtu
        self._read = read
        self._write = write
        self.notifying = False
        self.value = b""
        self._on_notify_change = on_notify_change
        self._on_confirm = on_confirm
        self._acquired: list[socket.socket] = []

    @method()
    async def ReadValue(self, options: Options) -> DBusBytes:
        if self._read is None:
            raise DBusError("org.bluez.Error.NotPermitted", "Read not permitted")
        return await self._read(_unwrap(options))

    @method()
    async def WriteValue(self, value: DBusBytes, options: Options) -> None:
        if self._write is None:
            raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")
        await self._write(bytes(value), _unwrap(options))

    @method()
    def StartNotify(self) -> None:
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})
            if self._on_notify_change:
                self._on_notify_change(self.uuid, True)

    @method()
    def StopNotify(self) -> None:
        self.unsubscribe()

    def unsubscribe(self) -> None:
        """The subscription ends (its central asked, or its link is gone): said on the bus, as
        BlueZ's server says it, else BlueZ keeps the characteristic notifying."""
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})
            if self._on_notify_change:
                self._on_notify_change(self.uuid, False)

    @method()
    def Confirm(self) -> None:
        if self._on_confirm:
            self._on_confirm(self.uuid)

    @method()
    def AcquireWrite(self, options: Options) -> FdAndMtu:
        # Centrals use this to learn the MTU (bleak's _acquire_mtu); give them a real socket.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._acquired.append(ours)
        fd = os.dup(theirs.fileno())
        theirs.close()
        return [fd, self.mtu]

    def close_acquired(self) -> None:
        for sock in self._acquired:
            sock.close()
        self._acquired.clear()

    def set_value(self, value: bytes) -> None:
        self.value = value
        self.emit_properties_changed({"Value": value})

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self._service

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> Strings:
        return self._flags

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return self.mtu


class LEAdvertisement(ServiceInterface):
    def __init__(self, name: str, service_uuids: list[str], manufacturer: dict[int, bytes]) -> None:
        super().__init__("org.bluez.LEAdvertisement1")
        self._name = name
        self._uuids = service_uuids
        self._manufacturer = manufacturer

    @method()
    def Release(self) -> None:
        return None

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "peripheral"

    @dbus_property(access=PropertyAccess.READ)
    def ServiceUUIDs(self) -> Strings:
        return self._uuids

    @dbus_property(access=PropertyAccess.READ)
    def LocalName(self) -> DBusStr:
        return self._name

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> ManufacturerMap:
        return {k: Variant("ay", v) for k, v in self._manufacturer.items()}

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return True


def _unwrap(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, Variant) else v) for k, v in options.items()}

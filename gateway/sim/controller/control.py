"""The rig's handle on a virtual controller over D-Bus: faults and inspection. Not part of the
device: a real controller has nothing like it."""

# No ``from __future__ import annotations``: dbus_fast reads the D-Bus signatures from the
# methods' annotations at class creation.
import json
from typing import TYPE_CHECKING

from dbus_fast import DBusError
from dbus_fast.annotations import DBusByte, DBusStr, DBusUInt16
from dbus_fast.service import ServiceInterface, method

from gateway.sim.controller.gatt_app import Options

if TYPE_CHECKING:
    from gateway.sim.controller.device import VirtualController

CONTROL_PATH = "/org/autowatering/control"
CONTROL_IFACE = "org.autowatering.SimController1"


class ControlInterface(ServiceInterface):
    """The rig's handle on a controller: faults and inspection. Not part of the device."""

    def __init__(self, controller: "VirtualController") -> None:
        super().__init__(CONTROL_IFACE)
        self._c = controller

    @method()
    async def InjectFault(self, kind: DBusStr, params: Options) -> None:
        try:
            await self._c.inject(kind, {k: v.value for k, v in params.items()})
        except ValueError as exc:
            raise DBusError("org.autowatering.Error.InvalidFault", str(exc)) from exc

    @method()
    def RaiseAlarm(self, code: DBusUInt16, data: DBusUInt16) -> None:
        self._c.model.raise_alarm(code, data)

    @method()
    def Water(self, channel: DBusByte, minutes: DBusUInt16) -> None:
        try:
            self._c.model.water_locally(channel, minutes)
        except ValueError as exc:
            raise DBusError("org.autowatering.Error.InvalidWatering", str(exc)) from exc

    @method()
    def Status(self) -> DBusStr:
        return json.dumps(self._c.status())

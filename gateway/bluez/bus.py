"""The one place the gateway talks D-Bus to BlueZ itself (bleak covers connections and GATT):
a call with its timeout, the object tree, a property, and a small error tree that says which of
three things went wrong: the system bus or bluetoothd does not answer, bluetoothd is not
running, or BlueZ refused the call (its D-Bus error name kept)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gateway.errors import GatewayError

BLUEZ = "org.bluez"
PROPERTIES = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
# One round trip to bluetoothd takes milliseconds; one that takes this long is the problem.
CALL_TIMEOUT_S = 5.0
SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"


class BluezError(GatewayError):
    """A call to BlueZ over the system D-Bus failed."""


class BluezUnreachable(BluezError):
    """The system D-Bus or bluetoothd did not answer (within the call's timeout)."""


class BluezNotRunning(BluezUnreachable):
    """The system D-Bus answers but bluetoothd is not on it."""


class BluezRefused(BluezError):
    """BlueZ answered with a D-Bus error (``name``: e.g. org.bluez.Error.DoesNotExist)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name


async def connect() -> MessageBus:
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            return await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, EOFError, TimeoutError) as exc:
        raise BluezUnreachable(f"the system D-Bus is unreachable ({type(exc).__name__}: "
                               f"{exc})") from exc


@contextlib.asynccontextmanager
async def system_bus() -> AsyncIterator[MessageBus]:
    """A connection of its own for a few calls, closed afterwards."""
    bus = await connect()
    try:
        yield bus
    finally:
        bus.disconnect()


async def call(bus: MessageBus, path: str, interface: str, member: str, signature: str = "",
               body: list[Any] | None = None) -> list[Any]:
    """The reply's body; BluezRefused, BluezNotRunning or BluezUnreachable otherwise."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            reply = await bus.call(Message(destination=BLUEZ, path=path, interface=interface,
                                           member=member, signature=signature,
                                           body=body or []))
    except (OSError, EOFError) as exc:
        raise BluezUnreachable(f"the system D-Bus went away ({type(exc).__name__})") from exc
    except TimeoutError as exc:
        raise BluezUnreachable(f"BlueZ did not answer within {CALL_TIMEOUT_S:.0f} s") from exc
    if reply is None:
        raise BluezUnreachable("BlueZ sent no reply")
    if reply.message_type == MessageType.ERROR:
        name = reply.error_name or "unknown error"
        if name == SERVICE_UNKNOWN:
            raise BluezNotRunning("BlueZ (bluetoothd) is not running")
        raise BluezRefused(name, str(reply.body[0]) if reply.body else "")
    return list(reply.body)


async def managed_objects(bus: MessageBus) -> dict[str, dict[str, dict[str, Any]]]:
    """BlueZ's object tree: path -> interface -> property -> plain value."""
    (tree,) = await call(bus, "/", OBJECT_MANAGER, "GetManagedObjects")
    return {str(path): {name: {key: value.value for key, value in props.items()}
                        for name, props in interfaces.items()}
            for path, interfaces in tree.items()}


async def get_property(bus: MessageBus, path: str, interface: str, name: str) -> Any:
    (value,) = await call(bus, path, PROPERTIES, "Get", "ss", [interface, name])
    return value.value if isinstance(value, Variant) else value


async def set_property(bus: MessageBus, path: str, interface: str, name: str,
                       value: Variant) -> None:
    await call(bus, path, PROPERTIES, "Set", "ssv", [interface, name, value])


async def set_powered(bus: MessageBus, adapter: str, on: bool) -> None:
    await set_property(bus, f"/org/bluez/{adapter}", "org.bluez.Adapter1", "Powered",
                       Variant("b", on))

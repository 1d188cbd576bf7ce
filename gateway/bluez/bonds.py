"""The few BlueZ calls the gateway makes itself (bleak covers the rest): pairing agent
registration, the bond inventory, and bond removal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from gateway.bluez.agent import AGENT_PATH, PairingAgent, PairingWindow, device_path
from gateway.errors import PairingError

BLUEZ = "org.bluez"


@dataclass(frozen=True)
class Bond:
    address: str
    name: str | None
    paired: bool
    bonded: bool
    connected: bool


async def _call(bus: MessageBus, path: str, interface: str, member: str, signature: str = "",
                body: list[Any] | None = None) -> Message:
    reply = await bus.call(Message(destination=BLUEZ, path=path, interface=interface,
                                   member=member, signature=signature, body=body or []))
    assert reply is not None
    return reply


def _error(reply: Message) -> str | None:
    if reply.message_type == MessageType.ERROR:
        return f"{reply.error_name}: {reply.body[0] if reply.body else ''}"
    return None


async def bonds(adapter: str) -> list[Bond]:
    """Every device BlueZ holds a pairing for on ``adapter``."""
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await _call(bus, "/", "org.freedesktop.DBus.ObjectManager",
                            "GetManagedObjects")
        if (problem := _error(reply)) is not None:
            raise PairingError(f"cannot list BlueZ devices: {problem}")
        found = []
        prefix = f"/org/bluez/{adapter}/dev_"
        for path, interfaces in reply.body[0].items():
            device = interfaces.get("org.bluez.Device1")
            if not path.startswith(prefix) or device is None:
                continue
            values = {k: v.value for k, v in device.items()}
            if values.get("Paired") or values.get("Bonded"):
                found.append(Bond(str(values.get("Address")), values.get("Name"),
                                  bool(values.get("Paired")), bool(values.get("Bonded")),
                                  bool(values.get("Connected"))))
        return sorted(found, key=lambda b: b.address)
    finally:
        bus.disconnect()


async def remove_bond(adapter: str, address: str) -> bool:
    """Adapter1.RemoveDevice: forgets the bond (and the GATT cache). False if BlueZ did not
    know the device."""
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await _call(bus, f"/org/bluez/{adapter}", "org.bluez.Adapter1", "RemoveDevice",
                            "o", [device_path(adapter, address)])
        problem = _error(reply)
        if problem is None:
            return True
        if "DoesNotExist" in problem or "UnknownObject" in problem:
            return False
        raise PairingError(f"BlueZ refused to remove {address}: {problem}")
    finally:
        bus.disconnect()


@contextlib.asynccontextmanager
async def pairing_window(adapter: str, address: str, passkey: int | None,
                         window_s: float) -> AsyncIterator[PairingAgent]:
    """Export and register the agent for the window's length; unregister on exit."""
    agent = PairingAgent()
    agent.window = PairingWindow(device_path(adapter, address), passkey,
                                 time.monotonic() + window_s)
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.export(AGENT_PATH, agent)
    try:
        reply = await _call(bus, "/org/bluez", "org.bluez.AgentManager1", "RegisterAgent",
                            "os", [AGENT_PATH, agent.capability()])
        if (problem := _error(reply)) is not None:
            raise PairingError(f"cannot register the pairing agent: {problem}")
        await _call(bus, "/org/bluez", "org.bluez.AgentManager1", "RequestDefaultAgent", "o",
                    [AGENT_PATH])
        try:
            yield agent
        finally:
            agent.window = None
            await _call(bus, "/org/bluez", "org.bluez.AgentManager1", "UnregisterAgent", "o",
                        [AGENT_PATH])
    finally:
        bus.disconnect()

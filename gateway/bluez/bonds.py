"""The few BlueZ calls the gateway makes itself (bleak covers the rest): pairing agent
registration, the bond inventory, and bond removal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.bluez import bus
from gateway.bluez.agent import AGENT_PATH, PairingAgent, PairingWindow, device_path
from gateway.errors import PairingError


@dataclass(frozen=True)
class Bond:
    address: str
    name: str | None
    paired: bool
    bonded: bool
    connected: bool


async def bonds(adapter: str) -> list[Bond]:
    """Every device BlueZ holds a pairing for on ``adapter``."""
    try:
        async with bus.system_bus() as system:
            tree = await bus.managed_objects(system)
    except bus.BluezError as exc:
        raise PairingError(f"cannot list BlueZ devices: {exc}") from exc
    found = []
    prefix = f"/org/bluez/{adapter}/dev_"
    for path, interfaces in tree.items():
        device = interfaces.get("org.bluez.Device1")
        if not path.startswith(prefix) or device is None:
            continue
        if device.get("Paired") or device.get("Bonded"):
            found.append(Bond(str(device.get("Address")), device.get("Name"),
                              bool(device.get("Paired")), bool(device.get("Bonded")),
                              bool(device.get("Connected"))))
    return sorted(found, key=lambda b: b.address)


async def remove_bond(adapter: str, address: str) -> bool:
    """Adapter1.RemoveDevice: forgets the bond (and the GATT cache). False if BlueZ did not
    know the device."""
    try:
        async with bus.system_bus() as system:
            await bus.call(system, f"/org/bluez/{adapter}", "org.bluez.Adapter1",
                           "RemoveDevice", "o", [device_path(adapter, address)])
    except bus.BluezRefused as exc:
        if "DoesNotExist" in exc.name or "UnknownObject" in exc.name:
            return False
        raise PairingError(f"BlueZ refused to remove {address}: {exc}") from exc
    except bus.BluezError as exc:
        raise PairingError(f"cannot remove {address}: {exc}") from exc
    return True


@contextlib.asynccontextmanager
async def pairing_window(adapter: str, address: str, passkey: int | None,
                         window_s: float) -> AsyncIterator[PairingAgent]:
    """Export and register the agent for the window's length; unregister on exit."""
    agent = PairingAgent()
    agent.window = PairingWindow(device_path(adapter, address), passkey,
                                 time.monotonic() + window_s)
    manager = "org.bluez.AgentManager1"
    try:
        system = await bus.connect()
    except bus.BluezError as exc:
        raise PairingError(f"cannot register the pairing agent: {exc}") from exc
    system.export(AGENT_PATH, agent)
    try:
        try:
            await bus.call(system, "/org/bluez", manager, "RegisterAgent", "os",
                           [AGENT_PATH, agent.capability()])
            await bus.call(system, "/org/bluez", manager, "RequestDefaultAgent", "o",
                           [AGENT_PATH])
        except bus.BluezError as exc:
            raise PairingError(f"cannot register the pairing agent: {exc}") from exc
        try:
            yield agent
        finally:
            agent.window = None
            with contextlib.suppress(bus.BluezError):  # bluetoothd forgets it with our bus
                await bus.call(system, "/org/bluez", manager, "UnregisterAgent", "o",
                               [AGENT_PATH])
    finally:
        system.disconnect()

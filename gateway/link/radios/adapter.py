"""One of the hub's own Bluetooth adapters as a radio: its BlueZ discovery (``Scanner``), its
slots and its connect turn (BlueZ connects one at a time per adapter, with discovery paused)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from firmware_bridge.errors import PeerNotFound
from firmware_bridge.link.gatt_link import BleakGattLink, GattLink
from firmware_bridge.smp.ble import BleSmpTransport
from gateway import bluez
from gateway.clock import Clock
from gateway.config import AdapterSettings
from gateway.link.paths import Sighting
from gateway.link.scanner import Scanner
from gateway.link.scheduler import ScanGate, SlotScheduler
from gateway.ops.health import RadioKind


class AdapterRadio:
    kind = RadioKind.ADAPTER

    def __init__(self, settings: AdapterSettings, scanner: Scanner, gate: ScanGate,
                 clock: Clock) -> None:
        """``gate``: the one ``scanner`` pauses on while this adapter connects."""
        self.name = settings.name
        self.settings = settings
        self.scanner = scanner
        self.clock = clock
        self.scheduler = SlotScheduler(settings.slots, gate)

    @property
    def up(self) -> bool:
        return self.scanner.scanning

    @property
    def reason(self) -> str | None:
        if self.scanner.scanning:
            return None
        why = self.scanner.start_error or "missing, powered off or bluetoothd down"
        return (f"adapter {self.name} is not scanning ({why}): check `bluetoothctl list` and "
                f"`sudo systemctl status bluetooth`")

    def heard(self, address: str) -> Sighting | None:
        sighting = self.scanner.seen.get(address)
        if sighting is None:
            return None
        return Sighting(sighting.rssi, time.monotonic() - sighting.at)

    def detail(self) -> Mapping[str, str]:
        return {}

    async def release_orphan(self, address: str) -> bool:
        return await bluez.release_orphan(self.name, address, self.clock)

    def smp_transport(self, address: str) -> BleSmpTransport:
        return BleSmpTransport(self.scanner.device(address) or address, adapter=self.name)

    async def run(self) -> None:
        await self.scanner.run()

    async def connect(self, address: str, timeout_s: float,
                      on_disconnect: Callable[[], None]) -> GattLink:
        device = self.scanner.device(address)
        if device is None:
            # Not advertising: perhaps because BlueZ still holds a link an earlier run of the
            # daemon made (the supervisor asking holds none). Released, it advertises again.
            await bluez.release_orphan(self.name, address, self.clock)
        if device is not None:
            try:
                return await BleakGattLink.connect(device, adapter=self.name,
                                                   timeout_s=timeout_s,
                                                   on_disconnect=on_disconnect)
            except PeerNotFound:
                self.scanner.forget(address)  # BlueZ removed the object since the sighting
        return await BleakGattLink.connect(address, adapter=self.name, timeout_s=timeout_s,
                                           on_disconnect=on_disconnect)

"""One of the hub's own Bluetooth adapters as a radio: its BlueZ discovery (``Scanner``), its
slots and its connect turn (BlueZ connects one at a time per adapter, with discovery paused)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from firmware_bridge.errors import PeerNotFound
from firmware_bridge.link.gatt_link import BleakGattLink, GattLink
from firmware_bridge.smp.ble import BleSmpTransport
from gateway import bluez
from gateway.bluez.probe import AdapterProbe
from gateway.clock import Clock
from gateway.config import AdapterSettings
from gateway.link.paths import Sighting
from gateway.link.scanner import Scanner
from gateway.link.scheduler import ScanGate, SlotScheduler
from gateway.ops.health import RadioKind

log = structlog.get_logger(__name__)

# How often a radio asks BlueZ whether its adapter is still there: one D-Bus property read.
# Within the failover goal (15 s) with room for the link-lost backoff and a connect elsewhere.
PRESENCE_POLL_S = 2.0


class AdapterRadio:
    kind = RadioKind.ADAPTER

    def __init__(self, settings: AdapterSettings, scanner: Scanner, gate: ScanGate,
                 clock: Clock, probe: AdapterProbe | None = None) -> None:
        """``gate``: the one ``scanner`` pauses on while this adapter connects; ``probe``:
        watch that BlueZ still has the adapter (with other radios to fail over to)."""
        self.name = settings.name
        self.settings = settings
        self.scanner = scanner
        self.clock = clock
        self.probe = probe
        self.scheduler = SlotScheduler(settings.slots, gate)
        self._gone: str | None = None  # why BlueZ has no usable adapter by this name

    @property
    def up(self) -> bool:
        return self.scanner.scanning and self._gone is None

    @property
    def reason(self) -> str | None:
        if self._gone is not None:
            return (f"{self._gone}: check `bluetoothctl list` (a USB adapter unplugged, or the "
                    f"Pi's Bluetooth firmware crashed)")
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

    async def refresh_services(self, address: str) -> bool:
        return False  # BlueZ forgets a device's services only with its bond: a re-pair

    async def forget_bond(self, address: str) -> bool:
        self.scanner.forget(address)  # the sighting names the device BlueZ is to remove
        return False  # the hub's own bond: removed and made again through BlueZ

    async def release_orphan(self, address: str) -> bool:
        return await bluez.release_orphan(self.name, address, self.clock)

    def smp_transport(self, address: str) -> BleSmpTransport:
        return BleSmpTransport(self.scanner.device(address) or address, adapter=self.name)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.scanner.run(), name=f"scanner {self.name}")
            if self.probe is not None:
                tasks.create_task(self._watch(self.probe), name=f"presence {self.name}")

    async def _watch(self, probe: AdapterProbe) -> None:
        """An adapter that goes away takes its links with it; its slots close at once so
        every visit waiting on them chooses another radio (failover), and open again when
        BlueZ has it back."""
        try:
            while True:
                gone = await probe.check()
                if gone is not None and self._gone is None:
                    log.warning("radio_down", radio=self.name, kind=self.kind.value, reason=gone)
                    self.scheduler.close(gone)
                elif gone is None and self._gone is not None:
                    log.info("radio_up", radio=self.name, kind=self.kind.value)
                    self.scheduler.resize(self.settings.slots)
                    self.scanner.restart()  # its discovery ended with the adapter
                self._gone = gone
                await self.clock.sleep(PRESENCE_POLL_S)
        finally:
            probe.close()

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

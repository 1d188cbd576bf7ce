"""Finding AutoWatering controllers: a BlueZ discovery filtered on the irrigation service UUID,
confirmed by name or manufacturer data (device-ble.md section 2), paused while connecting, and
watched by a watchdog that climbs a recovery ladder when the radio goes deaf."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from firmware_bridge.gatt import uuids
from gateway.bluez import bus
from gateway.link.events import first_of
from gateway.link.scheduler import ScanGate

log = structlog.get_logger(__name__)

# Seen within this long counts as "present" for `awgw scan` answered by the daemon: the
# controller advertises every 20-30 ms when free, so 30 s of silence means gone or busy.
PRESENT_WINDOW_S = 30.0
# A one-shot scan: the controller advertises every 20-30 ms, so 5 s sees everything in range
# several times even through a busy radio.
SCAN_TIMEOUT_S = 5.0
# A controller heard after this much silence is news for its supervisor (a not_found backoff
# ends); one advertising steadily (every 20-30 ms) is not news each time.
SEEN_AGAIN_S = 2.0
# Recovery ladder spacing: a discovery restart is cheap; an adapter power cycle drops every
# link, so at most one per 10 minutes.
RESTART_EVERY_S = 60.0
POWER_CYCLE_EVERY_S = 600.0
POWER_SETTLE_S = 2.0


@dataclass(frozen=True)
class Sighting:
    address: str
    name: str | None
    rssi: int
    at: float
    device: BLEDevice


def is_autowatering(adv: AdvertisementData) -> bool:
    """UUID in the advertising PDU (primary), confirmed by name prefix or "AW" manufacturer
    data from the scan response when active scanning delivered it."""
    if uuids.IRRIGATION_SERVICE not in [u.lower() for u in adv.service_uuids]:
        return False
    name_ok = adv.local_name is None or adv.local_name.startswith(uuids.NAME_PREFIX)
    mfr = adv.manufacturer_data.get(uuids.MANUFACTURER_ID)
    return name_ok or mfr == uuids.MANUFACTURER_DATA


class AdapterRecovery:
    """The ladder: restart discovery, then power-cycle the adapter, then say so loudly (a
    bluetoothd restart is beyond a non-root daemon). Each step is rate-limited."""

    def __init__(self, adapter: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.adapter = adapter
        self.clock = clock
        self._last: dict[str, float] = {}

    def _allowed(self, step: str, every_s: float) -> bool:
        now = self.clock()
        if now - self._last.get(step, -1e18) < every_s:
            return False
        self._last[step] = now
        return True

    async def step(self) -> str:
        """Take the next allowed step; returns its name (logged by the caller's watchdog)."""
        if "restart" in self._last and self._allowed("power_cycle", POWER_CYCLE_EVERY_S):
            try:
                await self._power_cycle()
            except bus.BluezError as exc:
                log.warning("adapter_power_cycle_failed", adapter=self.adapter,
                            error=str(exc), remedy="sudo systemctl restart bluetooth")
                return "power_cycle_failed"
            return "power_cycle"
        if self._allowed("restart", RESTART_EVERY_S):
            return "restart"
        return "wait"

    async def _power_cycle(self) -> None:
        async with bus.system_bus() as system:
            await bus.set_powered(system, self.adapter, False)
            await asyncio.sleep(POWER_SETTLE_S)
            await bus.set_powered(system, self.adapter, True)


class Scanner:
    def __init__(self, adapter: str, gate: ScanGate, *, watchdog_s: float,
                 expecting: Callable[[], bool] = lambda: True,
                 on_seen: Callable[[str], None] | None = None) -> None:
        """``on_seen``: told of a controller heard again after SEEN_AGAIN_S of silence."""
        self.adapter = adapter
        self.on_seen = on_seen
        self.gate = gate
        self.watchdog_s = watchdog_s
        self.expecting = expecting
        self.recovery = AdapterRecovery(adapter)
        self.seen: dict[str, Sighting] = {}
        self._last_advert = time.monotonic()
        self._restart = asyncio.Event()
        self.scanning = False
        self.start_error: str | None = None  # why discovery would not start, while it won't

    def present(self) -> list[Sighting]:
        now = time.monotonic()
        return sorted((s for s in self.seen.values() if now - s.at <= PRESENT_WINDOW_S),
                      key=lambda s: s.address)

    def healthy(self) -> bool:
        """The radio as relays report it: discovery running (the adapter is powered and
        answers) and, when controllers are expected, advertisements within the watchdog."""
        recent = time.monotonic() - self._last_advert <= self.watchdog_s
        return self.scanning and (recent or not self.expecting())

    def device(self, address: str) -> BLEDevice | None:
        sighting = self.seen.get(address)
        return sighting.device if sighting is not None else None

    def restart(self) -> None:
        """Start discovery afresh (the adapter came back)."""
        self._restart.set()

    def forget(self, address: str) -> None:
        """BlueZ dropped its object (bond removed): the cached BLEDevice is now dangling."""
        self.seen.pop(address, None)

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        if not is_autowatering(adv):
            return
        self._last_advert = time.monotonic()
        before = self.seen.get(device.address)
        self.seen[device.address] = Sighting(device.address, adv.local_name, adv.rssi,
                                             self._last_advert, device)
        if self.on_seen is not None and (
                before is None or self._last_advert - before.at > SEEN_AGAIN_S):
            self.on_seen(device.address)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._scan_loop(), name="scan loop")
            tasks.create_task(self._watchdog(), name="scan watchdog")

    async def _scan_loop(self) -> None:
        while True:
            await self.gate.allowed.wait()
            scanner = BleakScanner(self._on_advert, service_uuids=[uuids.IRRIGATION_SERVICE],
                                   bluez={"adapter": self.adapter})
            self.gate.quiet.clear()
            try:
                try:
                    await scanner.start()
                except (BleakError, EOFError, OSError) as exc:
                    if str(exc) != self.start_error:  # once per distinct error, not per retry
                        log.warning("scan_start_failed", adapter=self.adapter, error=str(exc),
                                    remedy=f"check that {self.adapter} exists and is powered "
                                           f"(bluetoothctl list; sudo systemctl status "
                                           f"bluetooth), or remove it from [link] adapters")
                    self.start_error = str(exc)
                    self.scanning = False
                    self.gate.quiet.set()
                    await asyncio.sleep(RESTART_EVERY_S / 6)
                    continue
                self._restart.clear()
                self.scanning = True
                self.start_error = None
                try:
                    await first_of(self.gate.stop_requested, self._restart)
                finally:
                    try:
                        await scanner.stop()
                    except (BleakError, EOFError, OSError) as exc:
                        log.info("scan_stop_failed", error=str(exc))
            finally:
                self.gate.quiet.set()

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(self.watchdog_s / 4, 30.0))
            silent = time.monotonic() - self._last_advert
            if silent < self.watchdog_s or not self.expecting() or not self.gate.allowed.is_set():
                continue
            step = await self.recovery.step()
            log.warning("scanner_watchdog", silent_s=round(silent, 1), step=step,
                        adapter=self.adapter)
            if step in ("restart", "power_cycle"):
                self._last_advert = time.monotonic()
                self._restart.set()


async def discover(adapter: str, timeout_s: float) -> list[Sighting]:
    """One-shot scan for the CLI when no daemon runs."""
    found = await BleakScanner.discover(timeout=timeout_s, return_adv=True,
                                        service_uuids=[uuids.IRRIGATION_SERVICE],
                                        bluez={"adapter": adapter})
    now = time.monotonic()
    return sorted((Sighting(dev.address, adv.local_name, adv.rssi, now, dev)
                   for dev, adv in found.values() if is_autowatering(adv)),
                  key=lambda s: s.address)

"""Home Assistant's Bluetooth stack around simulated proxies: habluetooth's manager with
bleak-esphome's scanner and client, for conformance tests and benches (the daemon's own radio
layer builds the same from its configuration)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import bleak_esphome
from aioesphomeapi.client import APIClient
from bleak.backends.device import BLEDevice
from habluetooth import BluetoothManager, set_manager
from habluetooth.central_manager import CentralBluetoothManager

from gateway.sim.errors import SimError

# How often to look for a device the proxies should hear: adverts come every ~100 ms batch.
HEARD_POLL_S = 0.1


class StandaloneManager(BluetoothManager):
    """A program's own manager: it has no discovery flows to feed (Home Assistant's does)."""

    def _discover_service_info(self, service_info: Any) -> None:
        return None


@contextlib.asynccontextmanager
async def bluetooth_stack(*ports: int, host: str = "127.0.0.1",
                          noise_psk: str | None = None) -> AsyncIterator[StandaloneManager]:
    """The manager with one ESPHome scanner per proxy port. While it runs, ``bleak``'s classes
    are habluetooth's wrappers (they choose the path per connect); they are put back after."""
    manager = StandaloneManager()
    set_manager(manager)
    await manager.async_setup()
    clients: list[APIClient] = []
    undo: list[Any] = []
    try:
        for port in ports:
            api = APIClient(host, port, None, noise_psk=noise_psk, client_info="awgw-sim")
            clients.append(api)
            await api.connect(login=True)
            data = bleak_esphome.connect_scanner(api, await api.device_info(), True)
            if data.scanner is None:
                raise SimError(f"proxy on port {port}: bleak-esphome made no scanner")
            undo.append(data.scanner.async_setup())
            undo.append(manager.async_register_scanner(data.scanner))
        yield manager
    finally:
        for step in reversed(undo):
            step()
        for api in clients:
            await api.disconnect(force=True)
        manager.async_stop()
        CentralBluetoothManager.manager = None


async def heard(manager: BluetoothManager, address: str, within_s: float) -> BLEDevice:
    """The connectable device once some scanner of ``manager`` has heard it."""
    try:
        async with asyncio.timeout(within_s):
            while (device := manager.async_ble_device_from_address(address, True)) is None:  # noqa: ASYNC110 - the manager has no event for it
                await asyncio.sleep(HEARD_POLL_S)
    except TimeoutError:
        raise SimError(f"no radio heard {address} within {within_s} s") from None
    return device

"""habluetooth's manager, as the gateway runs it: the registry of the proxies' scanners (their
adverts, slot allocations and connect bookkeeping) for bleak-esphome. Built only when proxies
are configured; the hub's own adapters stay on the gateway's scanners.

Two things habluetooth does for Home Assistant are undone here: it swaps bleak's classes for
its wrappers process-wide (the gateway picks each path itself, and its adapters' clients must
stay BlueZ's), and it would feed Home Assistant's discovery flows (the gateway's own callback
takes every advert instead, to wake a supervisor waiting for its controller)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from habluetooth import BluetoothManager, BluetoothServiceInfoBleak, set_manager
from habluetooth.central_manager import CentralBluetoothManager
from habluetooth.usage import uninstall_multiple_bleak_catcher


class GatewayBluetoothManager(BluetoothManager):
    def __init__(self, on_advert: Callable[[str], None]) -> None:
        super().__init__()
        self._on_advert = on_advert

    def _discover_service_info(self, service_info: BluetoothServiceInfoBleak) -> None:
        self._on_advert(service_info.address)


class ProxyStack:
    def __init__(self, on_advert: Callable[[str], None]) -> None:
        self._on_advert = on_advert
        self._manager: GatewayBluetoothManager | None = None

    @property
    def manager(self) -> BluetoothManager:
        if self._manager is None:
            raise RuntimeError("the proxy stack is not running")
        return self._manager

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BluetoothManager]:
        manager = GatewayBluetoothManager(self._on_advert)
        set_manager(manager)
        await manager.async_setup()
        uninstall_multiple_bleak_catcher()
        self._manager = manager
        try:
            yield manager
        finally:
            self._manager = None
            manager.async_stop()
            CentralBluetoothManager.manager = None

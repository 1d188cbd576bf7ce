"""Fakes behind the real interfaces: a GattLink served by the simulator's irrigation model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from firmware_bridge.errors import AttRefused, LinkLost
from firmware_bridge.gatt import uuids
from firmware_bridge.link.gatt_link import NotifyCallback
from gateway.sim.controller.irrigation import AttError, IrrigationConfig, IrrigationModel

ALL_UUIDS = {v for k, v in vars(uuids).items() if k.isupper() and isinstance(v, str)
             and v.count("-") == 4}


class ModelLink:
    """A connected controller whose GATT server is the simulator's model, in-process."""

    def __init__(self, address: str, model: IrrigationModel | None = None) -> None:
        self._address = address
        self.model = model or IrrigationModel(IrrigationConfig(), on_change=self._changed)
        self.model.on_change = self._changed
        self.callbacks: dict[str, NotifyCallback] = {}
        self.connected = True
        self.reads = 0
        self.fail_next: Exception | None = None
        self.on_disconnect: Callable[[], None] | None = None

    def _changed(self, uuid: str, value: bytes) -> None:
        callback = self.callbacks.get(uuid)
        if callback is not None and self.connected:
            asyncio.get_running_loop().call_soon(callback, uuid, value)

    @property
    def address(self) -> str:
        return self._address

    @property
    def mtu(self) -> int:
        return 247

    @property
    def is_connected(self) -> bool:
        return self.connected

    def has(self, uuid: str) -> bool:
        return uuid in ALL_UUIDS and uuid not in (uuids.SMP_CHARACTERISTIC,)

    def _check(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if not self.connected:
            raise LinkLost(f"{self._address} not connected")

    async def read(self, uuid: str) -> bytes:
        await asyncio.sleep(0)
        self._check()
        self.reads += 1
        if uuid == uuids.DIS_FIRMWARE_REVISION:
            return b"3.1.0"
        if uuid == uuids.DIS_SERIAL_NUMBER:
            return b"100001"
        return self.model.read(uuid)

    async def write(self, uuid: str, data: bytes) -> None:
        await asyncio.sleep(0)
        self._check()
        try:
            self.model.write(uuid, data)
        except AttError as exc:
            raise AttRefused(exc.code, f"write {uuid[-4:]}") from exc

    async def subscribe(self, uuid: str, callback: NotifyCallback) -> None:
        self._check()
        self.callbacks[uuid] = callback

    async def disconnect(self) -> None:
        self.connected = False

    def drop(self) -> None:
        """The link dies under the session, as a power loss does."""
        self.connected = False
        if self.on_disconnect is not None:
            self.on_disconnect()

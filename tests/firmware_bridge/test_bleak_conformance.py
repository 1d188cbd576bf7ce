"""Conformance for every private bleak attribute the gateway touches. If a bleak upgrade
breaks one, this fails before the gateway silently degrades.

- ``BleakClient._backend``: the platform backend object (``bleak_compat.acquire_mtu`` reaches
  through it; no other module may touch bleak's private API: tests/test_architecture.py).
- ``BleakClientBlueZDBus._acquire_mtu``: a coroutine taking no arguments that fills
  ``mtu_size`` from BlueZ's AcquireWrite/AcquireNotify.
"""

from __future__ import annotations

import inspect

import pytest
from bleak import BleakClient
from bleak.backends.bluezdbus.client import BleakClientBlueZDBus

from firmware_bridge.link.gatt_link import BleakGattLink
from gateway.sim.rig import Rig


def test_acquire_mtu_is_a_no_argument_coroutine_on_the_bluez_backend() -> None:
    method = BleakClientBlueZDBus._acquire_mtu
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self"]


def test_bleak_client_keeps_its_backend_in_underscore_backend() -> None:
    client = BleakClient("C0:FF:EE:00:00:00", bluez={"adapter": "hci0"})
    assert isinstance(client._backend, BleakClientBlueZDBus)


@pytest.mark.rig
async def test_acquire_mtu_reports_the_negotiated_mtu(rig: Rig) -> None:
    link = await BleakGattLink.connect(rig.controllers[0].address, adapter="hci0",
                                       timeout_s=10)
    try:
        assert link.mtu == 247  # not bleak's 23 default: the private call did its job
    finally:
        await link.disconnect()

"""Pairing through the gateway's own agent: Just Works, passkey entry for firmware that asks,
a bounded window, the bond inventory and unpair."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import bluez
from gateway.config import GatewayConfig
from gateway.errors import PairingError
from gateway.link.radio import list_devices, pair_on_radio, unpair_on_radio
from gateway.sim.rig import Rig
from gateway.store.registry import Registry

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(controllers=2, passkeys={1: 123456})]


async def test_just_works_pairing_bond_inventory_and_unpair(rig: Rig, tmp_path: Path) -> None:
    config = GatewayConfig(state_dir=tmp_path)
    registry = Registry(config.registry_path)
    address = rig.controllers[0].address
    entry = await pair_on_radio(config, registry, address, None)
    assert entry.bonded and entry.serial == "100001"
    held = await bluez.bonds("hci0")
    assert [b.address for b in held] == [address] and held[0].paired
    devices = await list_devices(config, registry)
    assert [(d.address, d.bonded) for d in devices] == [(address, True)]
    await unpair_on_radio(config, registry, address)
    assert await bluez.bonds("hci0") == []
    assert registry.all() == []


async def test_passkey_firmware_needs_the_right_passkey(rig: Rig, tmp_path: Path) -> None:
    config = GatewayConfig(state_dir=tmp_path, pairing_window_s=15)
    registry = Registry(config.registry_path)
    address = rig.controllers[1].address
    with pytest.raises(PairingError, match="authentication"):
        await pair_on_radio(config, registry, address, None)
    with pytest.raises(PairingError, match="authentication"):
        await pair_on_radio(config, registry, address, 654321)
    assert registry.all() == []
    entry = await pair_on_radio(config, registry, address, 123456)
    assert entry.bonded and [r.address for r in registry.all()] == [address]

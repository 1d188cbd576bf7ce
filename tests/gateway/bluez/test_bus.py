"""The one D-Bus module, against the rig's BlueZ on a private bus: the object tree and a
property as plain values, and each failure as its own error class."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bluez import bus
from gateway.sim.rig import Rig


@pytest.mark.rig
async def test_the_object_tree_and_a_property_come_back_as_plain_values(rig: Rig) -> None:
    async with bus.system_bus() as system:
        tree = await bus.managed_objects(system)
        powered = await bus.get_property(system, "/org/bluez/hci0", "org.bluez.Adapter1",
                                         "Powered")
    adapter = tree["/org/bluez/hci0"]["org.bluez.Adapter1"]
    assert isinstance(adapter["Address"], str) and powered is True


@pytest.mark.rig
async def test_a_refusal_keeps_bluezs_error_name(rig: Rig) -> None:
    async with bus.system_bus() as system:
        with pytest.raises(bus.BluezRefused) as refused:
            await bus.get_property(system, "/org/bluez/hci9", "org.bluez.Adapter1", "Powered")
    assert refused.value.name.startswith("org.freedesktop.DBus.Error.")


async def test_an_unreachable_bus_is_its_own_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'nobody'}")
    with pytest.raises(bus.BluezUnreachable, match="unreachable"):
        await bus.connect()

"""A rig control call that is never answered (a wedged BlueZoo, a hung controller process)
ends as a SimError naming the call, so a test or a bench reports it instead of hanging."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest
from dbus_fast import Message

from gateway.sim import rig as rig_module
from gateway.sim.errors import SimError
from gateway.sim.rig import Rig, RigOptions


class _SilentBus:
    """A control bus whose peer never answers."""

    async def call(self, message: Message) -> Any:
        await asyncio.Event().wait()


async def test_a_control_call_never_answered_is_a_sim_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rig_module, "RIG_CALL_TIMEOUT_S", 0.05)
    rig = Rig(RigOptions(controllers=1))
    try:
        rig._control_bus = _SilentBus()  # type: ignore[assignment]
        with pytest.raises(SimError, match=r"AddAdapter on org\.bluez did not answer"):
            await rig.hub_fault("adapter_restore")
    finally:
        shutil.rmtree(rig.workdir, ignore_errors=True)

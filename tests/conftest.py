"""Shared fixtures: the virtual rig (real bleak over a private D-Bus) and the QEMU peer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from gateway.sim.controller.config import ControllerConfig
from gateway.sim.rig import Rig, RigOptions

# The suite shares its cores with the rig's processes, QEMU and Home Assistant (and, in the
# hog runs, two busy loops): how long an example takes to draw or run measures the machine,
# not the code. The number of examples stays Hypothesis's default.
settings.register_profile("shared-cores", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-cores")


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    marker = request.node.get_closest_marker("rig_options")
    kwargs = dict(marker.kwargs) if marker else {}
    template = kwargs.pop("template", ControllerConfig(0, 0, ""))
    options = RigOptions(controllers=kwargs.pop("controllers", 1), template=template, **kwargs)
    async with Rig(options) as running:
        previous = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = running.bus_address
        try:
            yield running
        finally:
            if previous is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = previous


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return Path(os.environ.get("AWGW_FIXTURES", Path.home() / ".cache" / "autowatering-gateway"
                               / "fixtures"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rig_options(**kwargs): options for the rig fixture")


# A test that needs neither the rig nor QEMU answers in seconds (the slowest wait out a relay's
# first backoff steps, ~30 s); past this it is stuck, and says so long before the global 300 s.
UNIT_TIMEOUT_S = 120.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("rig", "qemu", "timeout")):
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))

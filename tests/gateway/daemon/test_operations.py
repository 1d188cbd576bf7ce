"""The daemon's controller operations that need no radio to show what they decide."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.daemon.operations import ControllerOperations
from gateway.errors import PairingError
from gateway.link.manager import ConnectionManager
from gateway.store.registry import Registry

ADDRESS = "C0:FF:EE:00:00:01"


async def test_a_passkey_controller_is_not_re_paired_without_its_passkey(
        tmp_path: Path) -> None:
    """A Just Works re-pair cannot restore a passkey bond, and removing the bond first would
    only lose what is left of it: the automatic re-pair refuses, naming the remedy."""
    config = GatewayConfig.model_validate({"state_dir": tmp_path})
    registry = Registry(config.registry_path)
    registry.add(ADDRESS, name="AutoWatering", bonded=True, passkey=True)
    manager = ConnectionManager(config, registry)
    operations = ControllerOperations(config, registry, manager)
    with pytest.raises(PairingError, match="--passkey"):
        await operations.repair(ADDRESS)
    assert ADDRESS not in manager.radios.tried  # nothing was forgotten or connected
    assert registry.get(ADDRESS).passkey and registry.get(ADDRESS).bonded

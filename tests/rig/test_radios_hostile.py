"""Radios that cannot be used: a proxy with the wrong key, one that is unreachable, one that
reports impossible slot counts or sends garbage adverts, and an adapter the config names but
the hub does not have. Each is refused (logged once, with its remedy, and shown down in the
status), and the radios that work keep serving every controller."""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import GatewayConfig
from gateway.link.manager import ConnectionManager
from gateway.sim.esphome.radio import BleakRadio
from gateway.sim.esphome.server import ProxyServer, ProxySettings
from gateway.sim.rig import Rig
from gateway.store.registry import Registry
from tests.gateway.sim.esphome.test_conformance import KEY
from tests.helpers import until

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(controllers=2, radios=2)]

SERVED_S = 40.0
WRONG_KEY = base64.b64encode(bytes(range(32, 64))).decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proxy(index: int, name: str, radio: str, key: str | None = None) -> ProxyServer:
    return ProxyServer(ProxySettings(name=name, mac=f"A4:CF:12:00:03:{index:02X}",
                                     bluetooth_mac=f"A4:CF:12:00:04:{index:02X}",
                                     noise_psk=key), BleakRadio(radio))


async def test_bad_radios_are_refused_with_remedies_and_the_good_ones_serve(
        rig: Rig, tmp_path: Path) -> None:
    good_radio, locked_radio = rig.radio_adapters
    good, locked = proxy(1, "good", good_radio), proxy(2, "locked", locked_radio, KEY)
    for server in (good, locked):
        await server.start()
    key_file = tmp_path / "locked.key"
    key_file.write_text(WRONG_KEY + "\n")
    config = GatewayConfig.model_validate({
        "state_dir": tmp_path,
        "link": {"adapters": [{"name": "hci0"}, {"name": "hci42"}], "refresh_period_s": 10.0,
                 "connect_timeout_s": 8.0},
        "radios": {"esphome": [
            {"name": "good", "host": "127.0.0.1", "port": good.port},
            {"name": "locked", "host": "127.0.0.1", "port": locked.port,
             "key_file": str(key_file)},
            {"name": "away", "host": "127.0.0.1", "port": closed_port()}]}})
    registry = Registry(config.registry_path)
    for handle in rig.controllers:
        registry.add(handle.address, name="AutoWatering", bonded=True)
    manager = ConnectionManager(config, registry)
    radios = manager.radios.radios
    with capture_logs() as logs:
        task = asyncio.create_task(manager.run())
        try:
            await until(lambda: radios["good"].up, 10.0)
            good.garbage_adverts()
            addresses = [h.address for h in rig.controllers]
            await until(lambda: all(manager.store.fresh(a) for a in addresses), SERVED_S)
            assert radios["good"].up and radios["hci0"].up
            for name in ("locked", "away", "hci42"):
                assert not radios[name].up, name
            assert "refused the key" in (radios["locked"].reason or "")
            assert "unreachable" in (radios["away"].reason or "")
            assert "hci42" in (radios["hci42"].reason or "")
            # The good proxy reports what no proxy can: refused, and back once it is sane.
            good.report_slots(free=5, limit=3)
            await until(lambda: not radios["good"].up, 5.0)
            assert "impossible slot counts" in (radios["good"].reason or "")
            good.forced_slots = None
            good.occupy_slots(0)
            await until(lambda: radios["good"].up, 5.0)
            await until(lambda: all(manager.store.fresh(a) for a in addresses), SERVED_S)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for server in (good, locked):
                await server.stop()
    refused = [e for e in logs if e["event"] == "radio_refused"]
    by_radio = {e["radio"]: e for e in refused}
    assert {"locked", "away", "good"} <= set(by_radio), refused
    assert all(e["remedy"] for e in refused)
    assert "credential awgw-esphome_locked" in by_radio["locked"]["remedy"]
    # Logged once per distinct reason, not once per retry.
    assert sum(1 for e in refused if e["radio"] == "away") == 1
    assert any(e["event"] == "scan_start_failed" and e.get("adapter") == "hci42"
               and e.get("remedy") for e in logs)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")
                and e["event"] not in ("radio_refused",)], "only the refusals are errors"

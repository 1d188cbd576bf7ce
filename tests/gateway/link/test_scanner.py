"""The scanner's recognition rule and its recovery ladder (rate-limited, in order)."""

from __future__ import annotations

from bleak.backends.scanner import AdvertisementData

from firmware_bridge.gatt import uuids
from gateway.link import scanner as scanner_module
from gateway.link.scanner import AdapterRecovery, is_autowatering


def adv(name: str | None, service_uuids: list[str], mfr: dict[int, bytes]) -> AdvertisementData:
    return AdvertisementData(local_name=name, manufacturer_data=mfr, service_data={},
                             service_uuids=service_uuids, tx_power=None, rssi=-50,
                             platform_data=())


def test_recognition_needs_the_uuid_and_a_confirmation_when_one_is_there() -> None:
    assert is_autowatering(adv("AutoWatering", [uuids.IRRIGATION_SERVICE], {0: b"AW"}))
    assert is_autowatering(adv(None, [uuids.IRRIGATION_SERVICE.upper()], {}))  # passive scan
    assert is_autowatering(adv("Garden", [uuids.IRRIGATION_SERVICE], {0: b"AW"}))
    assert not is_autowatering(adv("Garden", [uuids.IRRIGATION_SERVICE], {}))
    assert not is_autowatering(adv("AutoWatering", [], {0: b"AW"}))


async def test_recovery_ladder_climbs_in_order_and_is_rate_limited(monkeypatch: object) -> None:
    now = [1000.0]
    recovery = AdapterRecovery("hci0", clock=lambda: now[0])
    cycles: list[str] = []

    async def power_cycle() -> None:
        cycles.append("hci0")

    recovery._power_cycle = power_cycle  # type: ignore[method-assign]
    assert await recovery.step() == "restart"
    assert await recovery.step() == "power_cycle"
    assert await recovery.step() == "wait"  # both steps used, both rate-limited
    now[0] += scanner_module.RESTART_EVERY_S + 1
    assert await recovery.step() == "restart"
    now[0] += scanner_module.POWER_CYCLE_EVERY_S
    assert await recovery.step() == "power_cycle"
    assert cycles == ["hci0", "hci0"]

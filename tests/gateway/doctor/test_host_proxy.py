"""The doctor's look at an ESPHome proxy, against the simulated proxy's real native API (plain
and Noise): what it reports when all is well, and the refusal with its remedy when the key is
wrong or missing or nothing listens."""

from __future__ import annotations

import base64
import socket

import pytest

from gateway.config import EsphomeProxySettings
from gateway.link.radios.base import RadioRefused
from gateway.link.radios.esphome import ProxyReport, probe
from gateway.sim.esphome.server import ProxyServer, ProxySettings
from tests.helpers.fakes import ProxyRadioFake

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def settings(port: int) -> EsphomeProxySettings:
    return EsphomeProxySettings(name="garden", host="127.0.0.1", port=port)


@pytest.mark.parametrize("key", [None, KEY])
async def test_a_working_proxy_reports_its_versions_and_slots(key: str | None) -> None:
    server = ProxyServer(ProxySettings(noise_psk=key, slots=3), ProxyRadioFake())
    await server.start()
    try:
        report = await probe(settings(server.port), key)
    finally:
        await server.stop()
    assert isinstance(report, ProxyReport)
    assert report.can_connect and (report.free, report.limit) == (3, 3)
    assert report.name == "garden-proxy" and report.api.startswith("1.")


@pytest.mark.parametrize(("server_key", "our_key", "says"), [
    (KEY, OTHER_KEY, "refused the key"),
    (KEY, None, "requires encryption"),
    (None, KEY, "has no encryption"),
])
async def test_a_key_problem_is_refused_with_its_remedy(
        server_key: str | None, our_key: str | None, says: str) -> None:
    server = ProxyServer(ProxySettings(noise_psk=server_key), ProxyRadioFake())
    await server.start()
    try:
        with pytest.raises(RadioRefused, match=says) as refused:
            await probe(settings(server.port), our_key)
    finally:
        await server.stop()
    assert refused.value.remedy


async def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RadioRefused, match="unreachable") as refused:
        await probe(settings(port), None)
    assert "powered and on the network" in refused.value.remedy

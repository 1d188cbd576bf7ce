"""`awgw sim` with proxies in a garden, as a person starts it to try a hub against them."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest
from aioesphomeapi.api_pb2 import BluetoothLERawAdvertisementsResponse
from aioesphomeapi.client import APIClient

from gateway.sim.esphome.server import mac_int
from gateway.sim.rig import controller_address
from tests.helpers import until

pytestmark = pytest.mark.rig
# The rig and a proxy are up within seconds; a loaded 2-core machine takes several times that.
STARTS_WITHIN_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_awgw_sim_serves_a_proxy_that_hears_only_its_end_of_the_garden() -> None:
    port = free_port()
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "sim", "--controllers", "2", "--proxies", "1",
        "--proxy-port", str(port), "--proxy-encryption", "--place", "gateway=0,0",
        "--place", "controller0=5,0", "--place", "controller1=90,0", "--place", "proxy0=86,0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert sim.stderr is not None
    try:
        key = None
        async with asyncio.timeout(STARTS_WITHIN_S):
            while key is None:
                line = (await sim.stderr.readline()).decode()
                assert line, "awgw sim ended before its proxy started"
                if line.startswith("# proxy 0:"):
                    assert f"127.0.0.1:{port}" in line
                    key = line.rsplit("Noise key ", 1)[1].strip()
        api = APIClient("127.0.0.1", port, None, noise_psk=key, client_info="awgw-test")
        await api.connect(login=True)
        heard: set[int] = set()

        def on_adverts(batch: BluetoothLERawAdvertisementsResponse) -> None:
            heard.update(a.address for a in batch.advertisements)

        try:
            api.subscribe_bluetooth_le_raw_advertisements(on_adverts)
            await until(lambda: mac_int(controller_address(1)) in heard, STARTS_WITHIN_S)
            assert mac_int(controller_address(0)) not in heard
        finally:
            await api.disconnect(force=True)
    finally:
        sim.terminate()
        assert await asyncio.wait_for(sim.wait(), 30) == 0


@pytest.mark.parametrize("args", [["--proxies", "9"], ["--place", "gateway=north"],
                                  ["--place", "proxy1=0,0", "--proxies", "1"],
                                  ["--place", "shed=0,0"], ["--radios", "-1"]])
def test_awgw_sim_refuses_a_garden_it_cannot_build(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", *args],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, (args, result.stderr)
    assert "error" in result.stderr

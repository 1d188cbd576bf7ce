"""Upload throughput, measured side by side in one run:

1. the real Zephyr 4.4.0 + MCUboot SMP server under QEMU (serial over TCP): smpclient's
   ``upload()`` and our engine upload the same image to a freshly booted peer each;
2. a virtual controller over BLE (the rig's link model): our engine's goodput as a fraction of
   the link model's computed ceiling, with smpclient's ``upload()`` next to it.

    .venv/bin/python bench/ota_throughput.py [--ble-size BYTES]

The last line is JSON with ``ratio_vs_smpclient`` (goal >= 3.5) and
``ble_fraction_of_ceiling`` (goal >= 0.85).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from smpclient import SMPClient
from smpclient.transport.ble import SMPBLETransport

from firmware_bridge.mcuboot import parse_image
from firmware_bridge.ota.upload import Uploader, UploadPlan
from firmware_bridge.smp import commands
from firmware_bridge.smp.ble import BleSmpTransport
from firmware_bridge.smp.channel import SmpChannel
from firmware_bridge.smp.tcp_serial import TcpSerialTransport
from gateway.sim.controller.device import ControllerConfig
from gateway.sim.controller.link_model import LinkParams
from gateway.sim.images import firmware_body, make_image, rewrap_as_version
from gateway.sim.qemu_peer import QemuPeer, fetch_artifacts
from gateway.sim.rig import Rig, RigOptions

FIXTURES = Path(os.environ.get("AWGW_FIXTURES", Path.home() / ".cache" / "autowatering-gateway"
                               / "fixtures"))


async def ours(transport: Any, image: bytes, *, pre_erase: bool) -> float:
    """Seconds for our engine to upload ``image`` (after an optional pre-erase, which is the
    point of pre-erasing: it is done before the transfer, e.g. while the file downloads)."""
    info = parse_image(image)
    async with SmpChannel(transport) as channel:
        params = await commands.read_params(channel)
        if pre_erase:
            await commands.erase_slot(channel)
        budget = transport.frame_budget(params.buf_size)
        started = time.monotonic()
        await Uploader(channel, image, info.file_sha256,
                       UploadPlan(params.buf_count, budget, timeout_s=2.0)).run()
        return time.monotonic() - started


async def smpclient_upload(client: SMPClient, image: bytes) -> float:
    started = time.monotonic()
    async for _offset in client.upload(image):
        pass
    return time.monotonic() - started


async def qemu_side_by_side(workdir: Path) -> dict[str, Any]:
    artifacts = fetch_artifacts(FIXTURES)
    image = rewrap_as_version(artifacts.signed_bin, workdir, "9.9.9")
    results: dict[str, float] = {}
    for name in ("smpclient", "ours"):
        peer = QemuPeer(artifacts, workdir / f"qemu-{name}")
        await peer.start()
        try:
            transport = TcpSerialTransport()
            if name == "smpclient":
                client = SMPClient(transport, peer.url)
                await client.connect()
                results[name] = await smpclient_upload(client, image)
                await client.disconnect()
            else:
                await transport.connect(peer.url, 10)
                results[name] = await ours(transport, image, pre_erase=False)
        finally:
            await peer.stop()
    rate = {k: len(image) / v for k, v in results.items()}
    return {"image_bytes": len(image), "smpclient_bytes_per_s": round(rate["smpclient"]),
            "ours_bytes_per_s": round(rate["ours"]),
            "ratio_vs_smpclient": round(rate["ours"] / rate["smpclient"], 2)}


async def ble_side_by_side(size: int) -> dict[str, Any]:
    template = ControllerConfig(0, 0, "")
    params = LinkParams(template.interval_ms / 1000, template.packets_per_event, template.mtu)
    image = make_image((9, 0, 0, 0), firmware_body("bench", size))
    async with Rig(RigOptions(controllers=2, template=template)) as rig:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = rig.bus_address
        transport = BleSmpTransport(rig.controllers[0].address, adapter="hci0")
        await transport.connect(10)
        ours_s = await ours(transport, image, pre_erase=True)
        client = SMPClient(SMPBLETransport(), rig.controllers[1].address)
        await client.connect()
        theirs_s = await smpclient_upload(client, image)
        await client.disconnect()
    ours_rate, theirs_rate = len(image) / ours_s, len(image) / theirs_s
    return {"image_bytes": len(image), "ceiling_bytes_per_s": round(params.ceiling_bytes_per_s),
            "ours_bytes_per_s": round(ours_rate), "smpclient_bytes_per_s": round(theirs_rate),
            "ble_fraction_of_ceiling": round(ours_rate / params.ceiling_bytes_per_s, 3),
            "ble_ratio_vs_smpclient": round(ours_rate / theirs_rate, 2)}


async def main(ble_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        qemu = await qemu_side_by_side(Path(tmp))
    ble = await ble_side_by_side(ble_size)
    print(f"QEMU serial: smpclient upload() {qemu['smpclient_bytes_per_s'] / 1000:.1f} kB/s, "
          f"ours {qemu['ours_bytes_per_s'] / 1000:.1f} kB/s, "
          f"ratio {qemu['ratio_vs_smpclient']}")
    print(f"BLE (virtual): ours {ble['ours_bytes_per_s'] / 1000:.1f} kB/s = "
          f"{ble['ble_fraction_of_ceiling']} of the {ble['ceiling_bytes_per_s'] / 1000:.1f} kB/s "
          f"ceiling; smpclient {ble['smpclient_bytes_per_s'] / 1000:.1f} kB/s")
    result = {"ratio_vs_smpclient": qemu["ratio_vs_smpclient"],
              "ble_fraction_of_ceiling": ble["ble_fraction_of_ceiling"],
              "goal_ratio_vs_smpclient": 3.5, "goal_ble_fraction_of_ceiling": 0.85,
              "qemu": qemu, "ble": ble}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ble-size", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().ble_size))

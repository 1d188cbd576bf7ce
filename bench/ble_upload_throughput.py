"""smpclient's stop-and-wait upload() over BLE from a virtual controller, next to the link
model's computed ceiling, measured in one run.

    .venv/bin/python bench/ble_upload_throughput.py [--size BYTES]

Prints the measured rate, the ceiling and their ratio; the last line is JSON, also when the
upload fails (then with ``error``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import traceback
from typing import Any

from smpclient import SMPClient
from smpclient.transport.ble import SMPBLETransport

from gateway.sim.controller.config import ControllerConfig
from gateway.sim.controller.link_model import LinkParams
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig, RigOptions


async def upload_seconds(image: bytes, template: ControllerConfig) -> float:
    async with Rig(RigOptions(controllers=1, template=template)) as rig:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = rig.bus_address
        client = SMPClient(SMPBLETransport(), rig.controllers[0].address)
        await client.connect()
        try:
            start = time.monotonic()
            async for _offset in client.upload(image):
                pass
            return time.monotonic() - start
        finally:
            await client.disconnect()


async def main(size: int) -> dict[str, Any]:
    template = ControllerConfig(0, 0, "")
    params = LinkParams(template.interval_ms / 1000, template.packets_per_event, template.mtu)
    image = make_image((9, 0, 0, 0), firmware_body("bench", size))
    result: dict[str, Any] = {"bytes": len(image),
                              "ceiling_bytes_per_s": round(params.ceiling_bytes_per_s)}
    try:
        elapsed = await upload_seconds(image, template)
    except Exception as exc:  # the JSON line is printed whatever broke
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(result))
        return result
    rate = len(image) / elapsed
    result.update({"seconds": round(elapsed, 2), "smpclient_bytes_per_s": round(rate),
                   "ratio_to_ceiling": round(rate / params.ceiling_bytes_per_s, 3)})
    print(f"smpclient upload(): {rate / 1000:.1f} kB/s over {elapsed:.1f} s")
    print(f"link model ceiling: {params.ceiling_bytes_per_s / 1000:.1f} kB/s "
          f"({params.packets_per_event} packets/event, {params.interval_s * 1000:.0f} ms, "
          f"MTU {params.att_mtu})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=60_000)
    asyncio.run(main(parser.parse_args().size))

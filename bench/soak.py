"""The daemon against six virtual controllers for ten minutes with faults, watching for leaks.

    .venv/bin/python bench/soak.py [--minutes 10] [--controllers 6] [--warmup 2]

The real `awgw daemon` (a child process, as systemd runs it) supervises the rig's controllers,
which water on their own schedules, and relays to the cloud emulator and mosquitto. Every
FAULT_EVERY_S one fault lands, in turn: a dropped link, a reboot, a controller refusing
connections (busy), the broker restarted, a cloud outage. Once a minute the daemon's RSS, open
fds, threads (from /proc) and asyncio tasks (from `awgw status`) are sampled; each sample is
taken between faults, once the MQTT relay is connected again, as the smallest of
SAMPLE_READS reads a moment apart, so a reconnect or a connection in flight is not counted as
a leak. Growth is measured from the end of the warm-up to the end.

The last line is JSON with rss_growth_mb, fd_growth, task_growth, thread_growth, minutes and
goal_met (RSS growth < 5 MB, fd and task growth 0), whatever happens on the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.demo.hub import HubConfig, HubProcess
from gateway.errors import GatewayError
from gateway.sim.broker import MosquittoBroker, free_port
from gateway.sim.cloud import EmulatorServer, Fault, World
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.rig import Rig, RigOptions

USER, PASSWORD = "soak@example.com", "soak-password"
FAULT_EVERY_S = 20.0
# A broker restart and a cloud outage last this long: long enough for reconnects, backoff and
# the outboxes to fill and drain.
BROKER_DOWN_S = 15.0
CLOUD_DOWN_S = 45.0
BUSY_S = 10.0
SAMPLE_READS = 20
SAMPLE_GAP_S = 0.5
# The MQTT relay's reconnect backoff tops out at 60 s (relay/mqtt.py BACKOFF_MAX_S).
SETTLE_WITHIN_S = 90.0
RSS_GOAL_MB = 5.0
FAULTS = ("drop_link", "reboot", "busy", "broker_restart", "drop_link", "cloud_outage",
          "reboot", "busy")


def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "threads": int(fields["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


async def settled(hub: HubProcess) -> bool:
    """The MQTT relay connected again after the last fault: while it reconnects it runs
    fewer tasks, which is not a leak (the cloud relay's tasks are the same up or down)."""
    try:
        async with asyncio.timeout(SETTLE_WITHIN_S):
            while True:
                status = await hub.ops.status()
                if status.mqtt.up:
                    return True
                await asyncio.sleep(1.0)
    except (TimeoutError, GatewayError):
        return False


async def sample(hub: HubProcess, minute: float) -> dict[str, float]:
    assert hub.process is not None
    calm = await settled(hub)
    reads = []
    for _ in range(SAMPLE_READS):
        read = proc_sample(hub.process.pid)
        try:
            read["tasks"] = (await hub.ops.status()).tasks
        except GatewayError:
            read["tasks"] = -1
        reads.append(read)
        await asyncio.sleep(SAMPLE_GAP_S)
    low = {k: min(r[k] for r in reads) for k in reads[0]}
    return {"minute": round(minute, 2), "rss_mb": round(low["rss_mb"], 2),
            "fds": int(low["fds"]), "threads": int(low["threads"]), "tasks": int(low["tasks"]),
            "settled": calm}


async def inject(kind: str, index: int, rig: Rig, broker: MosquittoBroker,
                 world: World) -> None:
    if kind in ("drop_link", "reboot"):
        await rig.fault(index, kind)
    elif kind == "busy":
        await rig.fault(index, "busy", duration_s=BUSY_S)
    elif kind == "broker_restart":
        await broker.stop()
        await asyncio.sleep(BROKER_DOWN_S)
        await broker.start()
    elif kind == "cloud_outage":
        world.faults.append(Fault("status", count=10**9))
        await asyncio.sleep(CLOUD_DOWN_S)
        world.faults.clear()


async def faults(rig: Rig, broker: MosquittoBroker, world: World, count: int,
                 injected: dict[str, int], quiet: asyncio.Lock) -> None:
    n = 0
    while True:
        await asyncio.sleep(FAULT_EVERY_S)
        kind = FAULTS[n % len(FAULTS)]
        try:
            async with quiet:  # never while a sample is taken
                await inject(kind, n % count, rig, broker, world)
            injected[kind] = injected.get(kind, 0) + 1
        except Exception as exc:
            injected[f"{kind}_failed"] = injected.get(f"{kind}_failed", 0) + 1
            print(f"fault {kind} failed: {exc}", file=sys.stderr)
        n += 1


async def soak(args: argparse.Namespace, result: dict[str, Any]) -> None:
    template = ControllerConfig(0, 0, "", schedule_every_s=45.0, time_scale=20.0)
    world = World()
    world.poll_after_s = 5.0
    injected: dict[str, int] = {}
    result["faults"] = injected
    samples: list[dict[str, float]] = []
    result["samples"] = samples
    with tempfile.TemporaryDirectory(prefix="awgw-soak-") as tmp:
        async with Rig(RigOptions(controllers=args.controllers, template=template)) as rig, \
                EmulatorServer(world) as cloud, MosquittoBroker() as broker:
            world.add_user(USER, PASSWORD)
            for handle in rig.controllers:
                world.add_device(handle.config.serial_number)
            hub = HubProcess(Path(tmp) / "state", HubConfig(
                bus_address=rig.bus_address, cloud_url=cloud.url, client_id=world.client_id,
                broker_port=broker.port, metrics_port=free_port(), max_links=3,
                policy="share", refresh_period_s=20.0, snapshot_period_s=10.0))
            await hub.link_cloud(USER, PASSWORD)
            await hub.start()
            try:
                await hub.adopt(rig)
                started = time.monotonic()
                quiet = asyncio.Lock()
                async with asyncio.TaskGroup() as group:
                    chaos = group.create_task(
                        faults(rig, broker, world, args.controllers, injected, quiet),
                        name="faults")
                    for minute in range(1, args.minutes + 1):
                        await asyncio.sleep(max(0.0, started + 60 * minute - time.monotonic()))
                        async with quiet:
                            samples.append(await sample(hub, (time.monotonic() - started) / 60))
                        print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
                    chaos.cancel()
                result["daemon_alive"] = hub.process is not None and \
                    hub.process.returncode is None
                result["cloud_events"] = len(world.applied.events)
                result["cloud_duplicates"] = world.applied.duplicate_events
                status = await hub.ops.status()
                result["final_status"] = status.summary()
            finally:
                result["daemon_exit"] = await hub.stop()
                log = hub.log_tail(10_000_000)
                result["daemon_errors"] = log.count('"level": "error"')
                result["tracebacks"] = log.count("Traceback")


def summarise(result: dict[str, Any], warmup: int) -> None:
    samples = result.get("samples") or []
    base = next((s for s in samples if s["minute"] >= warmup - 0.01), None)
    if base is None or len(samples) < 2 or base is samples[-1]:
        result["goal_met"] = False
        return
    last = samples[-1]
    result["warmup_sample"], result["last_sample"] = base, last
    result["rss_growth_mb"] = round(last["rss_mb"] - base["rss_mb"], 2)
    result["fd_growth"] = int(last["fds"] - base["fds"])
    result["task_growth"] = int(last["tasks"] - base["tasks"])
    result["thread_growth"] = int(last["threads"] - base["threads"])
    result["goal_met"] = (result["rss_growth_mb"] < RSS_GOAL_MB and result["fd_growth"] <= 0
                          and result["task_growth"] <= 0
                          and bool(result.get("daemon_alive")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--controllers", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2,
                        help="minutes before the baseline sample")
    args = parser.parse_args()
    result: dict[str, Any] = {"bench": "soak", "minutes": args.minutes,
                              "controllers": args.controllers, "warmup_minutes": args.warmup}
    try:
        asyncio.run(soak(args, result))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    summarise(result, args.warmup)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

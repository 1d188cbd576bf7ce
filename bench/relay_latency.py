"""Notification -> typed state event latency and CPU cost of the gateway, next to bare bleak,
measured side by side in one run on the virtual rig.

    .venv/bin/python bench/relay_latency.py [--controllers 10] [--seconds 20] [--rounds 3]

Each virtual controller writes the moment every notification leaves its link model (so the
modelled air time is excluded). Phase A subscribes with bare bleak clients and timestamps the
callbacks; phase B runs the gateway's connection manager (keep-connected links) with a consumer
taking the changed controllers burst by burst as the daemon's state feed does, and takes the
stamp of each typed StateEvent. Latency = that stamp minus the controller's. CPU is this
process's CPU time over each window, per notification; the two phases alternate ``--rounds``
times (a machine's background load drifts), and ``cpu_ratio_gateway_to_bleak`` (goal <= 1.5)
sums them, with each round's ratio beside it.

p99 is a tail of a few dozen samples per window, so one window's p99 ratio moves by +-10 %
between identical runs. ``p99_ratio_ci90`` is a bootstrap interval of the pooled ratio
(resampling each side's latencies); ``p99_no_worse`` holds when that interval reaches 1.0 or
below, that is when the measurement cannot tell the gateway's tail from bare bleak's or puts
it lower. The last line is JSON, also when a phase fails (then with ``error``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
import traceback
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bleak import BleakClient

from firmware_bridge.gatt import uuids
from firmware_bridge.link.outcome import CommandOutcome
from firmware_bridge.link.session import ControllerSession
from firmware_bridge.link.state import Field, Source, StateEvent
from gateway.clock import LoopClock
from gateway.config import GatewayConfig, LinkPolicy, LinkSettings
from gateway.link.manager import ConnectionManager
from gateway.link.radio import pair_on_radio
from gateway.ops.models import LinkState
from gateway.relay.feed import QUIET_S, SETTLE_S
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.rig import Rig, RigOptions
from gateway.store.registry import Registry

MEASURED = {Field.CURRENT_TASK: uuids.CURRENT_TASK, Field.FLOW: uuids.FLOW_SENSOR}
TraceKey = tuple[str, str, str]  # address, uuid, value hex


def read_traces(trace_dir: Path) -> dict[TraceKey, deque[int]]:
    sent: dict[TraceKey, deque[int]] = defaultdict(deque)
    for path in sorted(trace_dir.glob("*.trace")):
        address = path.stem
        for line in path.read_text().splitlines():
            uuid, value, ns = line.split()
            sent[(address, uuid, value)].append(int(ns))
    return sent


def match(received: list[tuple[TraceKey, int]], sent: dict[TraceKey, deque[int]]
          ) -> list[float]:
    """Pair each reception with the latest send of the same bytes that precedes it."""
    latencies = []
    for key, at_ns in sorted(received, key=lambda r: r[1]):
        queue = sent.get(key)
        best = None
        while queue and queue[0] <= at_ns:
            best = queue.popleft()
        if best is not None:
            latencies.append((at_ns - best) / 1e6)
    return latencies


def p99_of(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def p99_ratio_interval(gateway_ms: list[float], bleak_ms: list[float], resamples: int = 1000,
                       seed: int = 1) -> tuple[float, float] | None:
    """The 5th and 95th percentiles of the gateway/bleak p99 ratio over bootstrap resamples."""
    if not gateway_ms or not bleak_ms:
        return None
    rng = random.Random(seed)  # noqa: S311 - resampling, not secrecy
    ratios = sorted(p99_of(sorted(rng.choices(gateway_ms, k=len(gateway_ms))))
                    / p99_of(sorted(rng.choices(bleak_ms, k=len(bleak_ms))))
                    for _ in range(resamples))
    return round(ratios[int(0.05 * resamples)], 3), round(ratios[int(0.95 * resamples)], 3)


def summary(latencies: list[float], cpu_s: float, wall_s: float, count: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = p99_of(ordered)
    return {"notifications": count, "matched": len(latencies),
            "rate_per_s": round(count / wall_s, 1),
            "p50_ms": round(statistics.median(ordered), 3) if ordered else None,
            "p99_ms": round(p99, 3), "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_1000": round(cpu_s * 1e6 / max(count, 1), 1),
            "core_percent": round(100 * cpu_s / wall_s, 2)}


async def start_watering(manager: ConnectionManager, addresses: list[str]) -> None:
    for i, address in enumerate(addresses):
        channel = i % 8

        async def water(session: ControllerSession, channel: int = channel) -> CommandOutcome:
            return await session.open_valve(channel, 60)

        outcome = await manager.command(address, "bench water", water)
        assert outcome.ok, outcome


async def bare_bleak(addresses: list[str], seconds: float) -> tuple[list[tuple[TraceKey, int]],
                                                                     float]:
    received: list[tuple[TraceKey, int]] = []
    clients = []
    for address in addresses:
        client = BleakClient(address, bluez={"adapter": "hci0"}, timeout=15)
        await client.connect()
        clients.append(client)
    cpu0 = time.process_time()
    for client, address in zip(clients, addresses, strict=True):
        for uuid in MEASURED.values():
            def callback(_c: Any, data: bytearray, address: str = address,
                         uuid: str = uuid) -> None:
                received.append(((address, uuid, bytes(data).hex()), time.monotonic_ns()))
            await client.start_notify(uuid, callback)
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    for client in clients:
        await client.disconnect()
    return received, cpu


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig, registry: Registry
                          ) -> AsyncIterator[ConnectionManager]:
    manager = ConnectionManager(config, registry)
    task = asyncio.create_task(manager.run(), name="gateway under bench")
    try:
        await manager.ready.wait()
        while not all(s.state is LinkState.CONNECTED  # noqa: ASYNC110 - states have no event
                      for s in manager.supervisors.values()):
            await asyncio.sleep(0.1)
        yield manager
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def gateway(manager: ConnectionManager, seconds: float
                  ) -> tuple[list[tuple[TraceKey, int]], float]:
    """The gateway's typed events for ``seconds``. The CPU window holds what the daemon does
    with a notification: the session decodes it into the state store, and a consumer takes
    the changed controllers burst by burst, as the daemon's state feed takes them
    (gateway/relay/feed.py). The events themselves are
    recorded by a tap on the store, a bare ``list.append`` (bare bleak's callback records its
    own) and
    re-encoded for matching after the window closes."""
    recorded: list[StateEvent] = []
    manager.store.tap(recorded.append)
    changes = manager.store.watch(SETTLE_S, QUIET_S, LoopClock())
    observed = 0
    cpu0 = time.process_time()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                observed += len(await changes.burst())
    cpu = time.process_time() - cpu0
    manager.store.unwatch(changes)
    manager.store.untap(recorded.append)
    events = [event for event in recorded
              if event.source is Source.NOTIFY and event.field in MEASURED]
    assert observed, "the consumer saw no change"
    received = [((e.address, MEASURED[e.field], e.value.encode().hex()),  # type: ignore[union-attr]
                 int(e.monotonic * 1e9)) for e in events]
    return received, cpu


async def measure(controllers: int, seconds: float, watering: int, rounds: int,
                  result: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        traces = tmp / "traces"
        traces.mkdir()
        template = ControllerConfig(0, 0, "", trace_dir=str(traces))
        async with Rig(RigOptions(controllers=controllers, template=template)) as rig:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = rig.bus_address
            addresses = [h.address for h in rig.controllers]
            config = GatewayConfig(state_dir=tmp / "gw", link=LinkSettings(
                max_links=controllers, refresh_period_s=60, default_policy=LinkPolicy.KEEP))
            registry = Registry(config.registry_path)
            for address in addresses:
                await pair_on_radio(config, registry, address, None)
            # Start the watering whose progress notifications are the load (60 min tasks).
            async with running_gateway(config, registry) as manager:
                await start_watering(manager, addresses[:watering])
            # The phases alternate: a machine's background load drifts over a minute, and
            # the ratio of neighbours is steadier than that of two distant windows.
            latencies_a: list[float] = []
            latencies_b: list[float] = []
            count_a = count_b = 0
            cpu_a = cpu_b = 0.0
            ratios: list[float | None] = []
            p99_ratios: list[float | None] = []
            for _ in range(rounds):
                await asyncio.sleep(1.5)  # the controllers advertise again
                got_a, spent_a = await bare_bleak(addresses, seconds)
                await asyncio.sleep(1.5)
                async with running_gateway(config, registry) as manager:
                    await asyncio.sleep(2)  # past the bring-up snapshots
                    got_b, spent_b = await gateway(manager, seconds)
                # Each window against the whole trace: a window's receptions only pair with
                # sends before them, and the windows do not overlap.
                round_a = match(got_a, read_traces(traces))
                round_b = match(got_b, read_traces(traces))
                latencies_a += round_a
                latencies_b += round_b
                count_a += len(got_a)
                count_b += len(got_b)
                cpu_a += spent_a
                cpu_b += spent_b
                ratios.append((spent_b / max(len(got_b), 1)) / (spent_a / max(len(got_a), 1))
                              if spent_a else None)
                p99_a, p99_b = p99_of(sorted(round_a)), p99_of(sorted(round_b))
                p99_ratios.append(round(p99_b / p99_a, 2) if round_a and round_b else None)
    a = summary(latencies_a, cpu_a, seconds * rounds, count_a)
    b = summary(latencies_b, cpu_b, seconds * rounds, count_b)
    interval = p99_ratio_interval(latencies_b, latencies_a)
    result.update({
        "bleak": a, "gateway": b,
        "p99_ratio_gateway_to_bleak": round(b["p99_ms"] / a["p99_ms"], 2)
        if a["p99_ms"] else None,
        "p99_ratio_ci90": interval,
        "p99_ratio_per_round": p99_ratios,
        "p99_no_worse": interval is not None and interval[0] <= 1.0,
        "cpu_ratio_gateway_to_bleak": round(b["cpu_ms_per_1000"] / a["cpu_ms_per_1000"], 2)
        if a["cpu_ms_per_1000"] else None,
        "cpu_ratio_per_round": [None if r is None else round(r, 2) for r in ratios]})
    for name, row in (("bare bleak", a), ("gateway", b)):
        print(f"{name:>10}: {row['rate_per_s']}/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms,"
              f" {row['cpu_ms_per_1000']} ms CPU per 1000, {row['core_percent']} % of a core")
    print(f"p99 ratio {result['p99_ratio_gateway_to_bleak']} (90 % interval {interval}), "
          f"CPU ratio {result['cpu_ratio_gateway_to_bleak']}")


async def main(controllers: int, seconds: float, watering: int, rounds: int = 1
               ) -> dict[str, Any]:
    result: dict[str, Any] = {"controllers": controllers, "seconds": seconds, "rounds": rounds,
                              "goal_cpu_ratio": 1.5, "goal_p99_ms": 20,
                              "goal_core_percent": 2}
    try:
        await measure(controllers, seconds, watering, rounds, result)
    except Exception as exc:  # the JSON line is printed whatever broke
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
    ratio = result.get("cpu_ratio_gateway_to_bleak")
    result["goal_met"] = ("error" not in result and ratio is not None and ratio <= 1.5
                          and bool(result.get("p99_no_worse")))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--controllers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="bare bleak and gateway windows, alternated this many times")
    parser.add_argument("--watering", type=int, default=5,
                        help="controllers watering during the run; each notifies ~10/s, so 5 "
                             "of them make the 50/s of the goal")
    args = parser.parse_args()
    asyncio.run(main(args.controllers, args.seconds, args.watering, args.rounds))

"""Controller change -> MQTT message latency and CPU of the MQTT relay, next to bare aiomqtt
publishing the same payloads, measured side by side in one run against a private mosquitto.

    .venv/bin/python bench/mqtt_relay.py [--controllers 10] [--rate 50] [--seconds 15]

Each side runs in its own process, fed the same stream: ``--controllers`` controllers whose
state changes ``--rate`` times a second in all (a flow reading, a task's progress). The relay
side hands each new ControllerState to ``MqttRelay.observe`` (what the state feed does) and
the relay publishes it (retained, QoS 1, availability and the rest as it would in the daemon);
the bare side serialises the same state and calls aiomqtt's publish with the same QoS and
retain flag. A subscriber in this process timestamps each state message: latency = arrival
minus the moment the change was handed over (written into the payload's ``updated_at``). CPU
is the publishing process's own CPU time over the feeding window, per 1,000 state messages.

Goal: p99 < 20 ms and ``cpu_ratio`` (relay / bare) < 2. The last line is the JSON result, with
``error`` if a side failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import MqttConfig
from gateway.ops.models import ControllerState, FlowView, LinkState, TaskView, ValveState
from gateway.relay.mqtt.relay import MqttRelay
from gateway.sim.broker import MosquittoBroker
from gateway.store.outbox import Outbox

PREFIX = "bench"
# A side needs a second or two to import and connect before it feeds.
SIDE_START_LIMIT_S = 60.0


def make_state(controller: int, n: int, at: float) -> ControllerState:
    return ControllerState(
        address=f"C0:FF:EE:00:01:{controller:02X}", firmware_version="3.1.0",
        link=LinkState.CONNECTED, fresh=True, updated_at=at, age_s=0.0, last_failure=None,
        decode_problems=0,
        valves=[ValveState(channel=c, open=c == 2, name=None, at=at) for c in range(8)],
        system_status=None,
        flow=FlowView(pulses_per_second=20 + n % 7, litres_per_minute=round(1.6 + n % 7 / 10, 2),
                      at=at),
        alarm=None,
        current_task=TaskView(channel=2, mode="duration", status="running", target=600,
                              current=n % 600, total_volume_ml=n * 3, at=at),
        task_queue=None)


def serial(controller: int) -> str:
    return f"{300001 + controller:06d}"


class NoOps:
    """The relay needs operations for commands; the bench sends none."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the bench sends no commands ({name})")


async def feed(args: argparse.Namespace, hand_over: Any) -> tuple[int, float]:
    """Hand ``rate`` changes a second to ``hand_over``; returns (changes, CPU seconds)."""
    interval = 1.0 / args.rate
    total = int(args.rate * args.seconds)
    # Built before the CPU window: only handing over (stamping the time) and publishing count.
    states = [make_state(n % args.controllers, n, 0.0) for n in range(total)]
    cpu = time.process_time()
    start = time.monotonic()
    for n in range(total):
        target = start + n * interval
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await hand_over(n % args.controllers,
                        states[n].model_copy(update={"updated_at": time.time()}))
    await asyncio.sleep(1.0)  # let the last messages go out inside the CPU window
    return total, time.process_time() - cpu


async def relay_side(args: argparse.Namespace) -> dict[str, Any]:
    config = MqttConfig(enabled=True, host="127.0.0.1", port=args.port, topic_prefix=PREFIX)
    with tempfile.TemporaryDirectory() as tmp:
        relay = MqttRelay(config, "bench", Outbox(Path(tmp) / "o.db", "bench"), NoOps())
        task = asyncio.create_task(relay.run(), name="relay")
        async with asyncio.timeout(SIDE_START_LIMIT_S):
            while not relay.connected:  # noqa: ASYNC110 - the relay exposes a flag
                await asyncio.sleep(0.01)
        for c in range(args.controllers):  # discovery and first states before measuring
            relay.observe(make_state(c, 0, time.time()).address, serial(c),
                          make_state(c, 0, time.time()))
        await asyncio.sleep(1.0)

        async def hand_over(controller: int, state: ControllerState) -> None:
            relay.observe(state.address, serial(controller), state)

        changes, cpu_s = await feed(args, hand_over)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return {"changes": changes, "cpu_s": cpu_s}


async def bare_side(args: argparse.Namespace) -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", args.port) as client:
        async def hand_over(controller: int, state: ControllerState) -> None:
            payload = state.model_dump(mode="json")
            await client.publish(f"{PREFIX}/{serial(controller)}/state", json.dumps(payload),
                                 qos=1, retain=True)

        changes, cpu_s = await feed(args, hand_over)
    return {"changes": changes, "cpu_s": cpu_s}


async def measure(args: argparse.Namespace, side: str, port: int) -> dict[str, Any]:
    latencies: list[float] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(f"{PREFIX}/+/state", qos=1)
            ready.set()
            async for message in client.messages:
                arrived = time.time()
                if message.retain or not isinstance(message.payload, bytes):
                    continue  # a retained leftover of the other side
                body = json.loads(message.payload)
                latencies.append((arrived - body["updated_at"]) * 1000)

    listener = asyncio.create_task(listen(), name="listener")
    await ready.wait()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--side", side, "--port", str(port), "--controllers",
        str(args.controllers), "--rate", str(args.rate), "--seconds", str(args.seconds),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side exited with {proc.returncode}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    steady = latencies[args.controllers:]  # the first state of each is the warm-up
    quantiles = statistics.quantiles(steady, n=100) if len(steady) >= 100 else [float("nan")] * 99
    return {"messages": len(steady), "p50_ms": round(quantiles[49], 2),
            "p99_ms": round(quantiles[98], 2),
            "cpu_ms_per_1000": round(report["cpu_s"] * 1000 / max(1, report["changes"]) * 1000,
                                     1)}


async def bench(args: argparse.Namespace, result: dict[str, Any]) -> None:
    async with MosquittoBroker() as broker:
        for side in ("bare", "relay"):
            result[side] = await measure(args, side, broker.port)
    relay, bare = result["relay"], result["bare"]
    result.update({"p50_ms": relay["p50_ms"], "p99_ms": relay["p99_ms"],
                   "cpu_ms_per_1000": relay["cpu_ms_per_1000"],
                   "bare_cpu_ms_per_1000": bare["cpu_ms_per_1000"],
                   "cpu_ratio": round(relay["cpu_ms_per_1000"] / bare["cpu_ms_per_1000"], 2),
                   "bare_p99_ms": bare["p99_ms"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controllers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="changes a second, in all")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--side", choices=["relay", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        side = relay_side if args.side == "relay" else bare_side
        print(json.dumps(asyncio.run(side(args))), flush=True)
        return
    result: dict[str, Any] = {"bench": "mqtt_relay", "controllers": args.controllers,
                              "rate_per_s": args.rate, "seconds": args.seconds}
    try:
        asyncio.run(bench(args, result))
    except Exception as exc:  # the JSON line is printed whatever broke
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    result["goal_met"] = bool(result.get("p99_ms", 1e9) < 20 and result.get("cpu_ratio", 1e9) < 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""The cloud relay through a cloud outage, with a kill -9 in the middle, measured end to end.

    .venv/bin/python bench/outage.py [--items 10000] [--controllers 5]

The cloud emulator serves over real HTTP on loopback and answers every reportDeviceState with
503 (an outage, time-compressed to the seconds the items take). A relay process (the daemon's
``CloudRelay`` with its outbox, fed synthetic events for five controllers instead of BLE)
commits items as fast as they come; it is killed with SIGKILL halfway, started again on the same
state directory, and produces the rest. Then the outage ends and the outbox drains.

Each item carries (controller, n). What counts as produced is what the outbox acknowledged
(committed): the relay appends each committed group to ``committed.log``; the restarted relay
also takes what the database holds beyond that log (a kill between the COMMIT and the log
write). The cloud's record of applied events is compared with it:

- ``lost``: committed but never applied; ``duplicates_applied``: applied more than once;
- ``order_violations``: an item applied before an earlier one of the same controller;
- ``outbox_fsyncs``: commits (each one fsync of the WAL) across both relay runs;
- ``ingest_events_per_s``: committed items per second while producing, durable commits;
  ``per_item_commit_events_per_s`` beside it: the same outbox with one commit (fsync) an item,
  and ``group_commit_speedup`` the ratio.

Goal: lost 0, duplicates_applied 0, order_violations 0, delivered_unique == events,
ingest >= 5,000 items/s. The last line is always the JSON result, with ``error`` if the run
broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_client import CloudClient, CognitoAuth, CognitoSettings, RetryPolicy, sign_in
from gateway.config import CloudConfig, CloudMode, GatewayConfig
from gateway.relay.cloud import CloudRelay
from gateway.relay.events import DerivedEvent
from gateway.sim.cloud import EmulatorServer, Fault, World
from gateway.store.credentials import FileTokenStore
from gateway.store.outbox import NewItem, Outbox

GATEWAY_ID = "bench-gateway"
PASSWORD = "bench password"
# Draining 10,000 items at 100 a batch over loopback takes a few seconds; a loaded machine
# several times that.
DRAIN_LIMIT_S = 300.0
# Items arrive in bursts of PACE_ITEMS every PACE_S (at most 100,000 a second, far above the
# goal), so the kill lands in the middle of the stream rather than after one giant commit.
PACE_ITEMS = 100
PACE_S = 0.001
# A relay process starts (imports, outbox, sign-in) in about a second.
CHILD_START_LIMIT_S = 60.0


def serials(controllers: int) -> list[str]:
    return [f"{200001 + c:06d}" for c in range(controllers)]


# ---- the relay process ----------------------------------------------------------------------

def committed_so_far(state_dir: Path, controllers: int) -> dict[str, int]:
    """Per controller, the highest n known committed: the log, then the database."""
    top = dict.fromkeys(serials(controllers), -1)
    log_path = state_dir / "committed.log"
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            serial, n = line.split()
            top[serial] = max(top[serial], int(n))
    db_path = GatewayConfig(state_dir=state_dir).cloud_outbox_path
    if db_path.exists():
        db = sqlite3.connect(db_path)
        try:
            unlogged: list[tuple[str, int]] = []
            for (body,) in db.execute("SELECT body FROM items WHERE kind = 'event'"):
                data = json.loads(body)["data"]
                if int(data["n"]) > top[str(data["c"])]:
                    unlogged.append((str(data["c"]), int(data["n"])))
            with log_path.open("a") as log:
                for controller, number in sorted(unlogged, key=lambda x: x[1]):
                    log.write(f"{controller} {number}\n")
                    top[controller] = max(top[controller], number)
        finally:
            db.close()
    return top


async def relay_child(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir)
    store = FileTokenStore(state_dir / "cloud")
    settings = CognitoSettings(args.url + "/_cognito/", args.client_id)
    auth = CognitoAuth(settings, store)
    start = committed_so_far(state_dir, args.controllers)
    log_file = (state_dir / "committed.log").open("a", buffering=1)
    stats_path = state_dir / f"stats.{os.getpid()}.json"
    committed = 0
    first_at: float | None = None
    last_at = 0.0

    def on_commit(group: Sequence[NewItem], keys: list[str]) -> None:
        nonlocal committed, last_at
        lines = []
        for item in group:
            data = json.loads(item.body)["data"]
            lines.append(f"{data['c']} {data['n']}\n")
        log_file.write("".join(lines))
        committed += len(group)
        last_at = time.monotonic()
        temp = stats_path.with_suffix(".tmp")  # replaced whole: a kill leaves the old one
        temp.write_text(json.dumps({"commits": relay.outbox.commits, "committed": committed,
                                    "seconds": last_at - (first_at or last_at)}))
        temp.replace(stats_path)

    config = CloudConfig(enabled=True, base_url=args.url, mode=CloudMode.GATEWAY_ROUTES,
                         snapshot_period_s=1.0)
    outbox = Outbox(GatewayConfig(state_dir=state_dir).cloud_outbox_path, GATEWAY_ID)
    async with CloudClient(args.url, auth, retry=RetryPolicy(attempts=2, base_s=0.05,
                                                             cap_s=0.2)) as client:
        relay = CloudRelay(config, GATEWAY_ID, outbox, client, auth,
                           serials=lambda: serials(args.controllers), on_commit=on_commit)
        task = asyncio.create_task(relay.run(), name="relay")
        names = serials(args.controllers)
        total = args.until
        nexts = {s: start[s] + 1 for s in names}
        produced = sum(nexts.values())
        first_at = time.monotonic()
        print(json.dumps({"started": {s: nexts[s] for s in names}}), flush=True)
        while produced < total:
            for serial in names:
                if produced >= total:
                    break
                relay.record_event(serial, DerivedEvent("bench", {"c": serial,
                                                                  "n": nexts[serial]}))
                nexts[serial] += 1
                produced += 1
            if produced % PACE_ITEMS < len(names):
                await asyncio.sleep(PACE_S)
        await relay.writer.flush()
        print(json.dumps({"produced": produced}), flush=True)
        await task  # runs until killed or terminated


# ---- the bench ------------------------------------------------------------------------------

async def wait_committed(state_dir: Path, count: int, child: asyncio.subprocess.Process) -> None:
    log_path = state_dir / "committed.log"
    while True:
        if child.returncode is not None:
            raise RuntimeError(f"relay exited early with {child.returncode}")
        if log_path.exists() and log_path.read_text().count("\n") >= count:
            return
        await asyncio.sleep(0.02)


async def spawn(args: argparse.Namespace, state_dir: Path, url: str, client_id: str,
                until: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", "--state-dir", str(state_dir), "--url", url,
        "--client-id", client_id, "--controllers", str(args.controllers), "--until",
        str(until), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)


async def bench(args: argparse.Namespace, result: dict[str, Any]) -> None:
    world = World(mode="gateway_routes")
    with tempfile.TemporaryDirectory(prefix="awgw-outage-") as tmp:
        state_dir = Path(tmp)
        async with EmulatorServer(world) as server:
            user = world.add_user("bench@example.com", PASSWORD)
            for serial in serials(args.controllers):
                world.add_device(serial).owner = user.uid
            settings = CognitoSettings(server.url + "/_cognito/", world.client_id)
            async with CloudClient(server.url) as client:
                tokens = await sign_in(client.http, settings, "bench@example.com", PASSWORD)
            FileTokenStore(state_dir / "cloud").save(tokens.refresh_token or "")
            # The outage: every report refused until it is over.
            world.faults.append(Fault("status", count=10**9, route="POST /reportDeviceState",
                                      status=503))
            half = args.items // 2
            first = await spawn(args, state_dir, server.url, world.client_id, args.items)
            async with asyncio.timeout(CHILD_START_LIMIT_S + DRAIN_LIMIT_S):
                await wait_committed(state_dir, half, first)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            result["killed_after_committed"] = (state_dir / "committed.log").read_text().count(
                "\n")
            second = await spawn(args, state_dir, server.url, world.client_id, args.items)
            try:
                assert second.stdout is not None
                async with asyncio.timeout(CHILD_START_LIMIT_S + DRAIN_LIMIT_S):
                    while True:
                        line = await second.stdout.readline()
                        if not line:
                            raise RuntimeError("the restarted relay exited")
                        if b"produced" in line:
                            break
                outage_applied = len(world.applied.events)
                world.faults.clear()  # the cloud is back
                events = len(set((state_dir / "committed.log").read_text().splitlines()))
                started = time.monotonic()
                async with asyncio.timeout(DRAIN_LIMIT_S):
                    while len({(e["data"]["c"], e["data"]["n"])  # noqa: ASYNC110 - polled record
                               for e in world.applied.events}) < events:
                        await asyncio.sleep(0.1)
                result["drain_s"] = round(time.monotonic() - started, 2)
                await asyncio.sleep(1.0)  # anything resent twice would arrive now
            finally:
                second.terminate()
                await second.wait()
            measure(world, state_dir, events, outage_applied, result)
        result["per_item_commit_events_per_s"] = round(per_item_commit_rate(state_dir))
        if result.get("ingest_events_per_s"):
            result["group_commit_speedup"] = round(
                result["ingest_events_per_s"] / result["per_item_commit_events_per_s"], 1)


def per_item_commit_rate(state_dir: Path, count: int = 1000) -> float:
    """The baseline beside it: the same outbox committing every item alone (one fsync each),
    as an event-at-a-time writer would."""
    outbox = Outbox(state_dir / "baseline.sqlite3", GATEWAY_ID)
    try:
        started = time.monotonic()
        for n in range(count):
            outbox.put_many([NewItem("200001", "event", 0.0, json.dumps({"n": n}))])
        return count / (time.monotonic() - started)
    finally:
        outbox.close()


def measure(world: World, state_dir: Path, events: int, outage_applied: int,
            result: dict[str, Any]) -> None:
    applied = [(e["data"]["c"], int(e["data"]["n"])) for e in world.applied.events
               if e["type"] == "bench"]
    unique = set(applied)
    last: dict[str, int] = {}
    violations = 0
    for serial, n in applied:
        if n <= last.get(serial, -1):
            violations += 1
        last[serial] = max(last.get(serial, -1), n)
    committed = {(line.split()[0], int(line.split()[1]))
                 for line in (state_dir / "committed.log").read_text().splitlines()}
    stats = [json.loads(p.read_text()) for p in state_dir.glob("stats.*.json")]
    first_run = max(stats, key=lambda s: s["seconds"]) if stats else None
    result.update({
        "events": events, "delivered_unique": len(unique & committed),
        "lost": len(committed - unique), "duplicates_applied": len(applied) - len(unique),
        "order_violations": violations, "outbox_fsyncs": sum(s["commits"] for s in stats),
        "applied_during_outage": outage_applied,
        "server_duplicates_dropped": world.applied.duplicate_events,
        "batches": world.applied.batches,
        "ingest_events_per_s": (round(first_run["committed"] / first_run["seconds"])
                                if first_run and first_run["seconds"] > 0 else None),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--controllers", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(relay_child(args))
        return
    result: dict[str, Any] = {"bench": "outage", "items": args.items,
                              "controllers": args.controllers}
    try:
        asyncio.run(bench(args, result))
    except Exception as exc:  # the JSON line is printed whatever broke
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    ok = (result.get("lost") == 0 and result.get("duplicates_applied") == 0
          and result.get("order_violations") == 0
          and result.get("delivered_unique") == result.get("events"))
    result["goal_met"] = bool(ok and (result.get("ingest_events_per_s") or 0) >= 5000)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

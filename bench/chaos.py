"""The real daemon under hostile input at every edge, with a person's valve command every 5 s.

    .venv/bin/python bench/chaos.py [--minutes 10] [--seed N]

`awgw daemon` (a child process, as systemd runs it) with 3 virtual controllers, mosquitto and
the cloud emulator, for ``--minutes``, while hostile input arrives at every edge:

- MQTT: generated topics and payloads under the gateway's prefix (non-ASCII digits, wildcards
  are refused by the broker itself, huge and non-UTF-8 payloads, NaN and inf minutes, JSON of
  every wrong shape), retained commands for a channel no person uses, and command floods;
- the cloud: error statuses, dropped connections, slow answers, and jobs naming hostile
  versions, garbage images and a controller that is switched off;
- the control socket: idle floods past its client cap, garbage and oversized lines;
- the metrics port: idle floods and garbage requests;
- the SD card: the state directory on a small tmpfs filled to the last byte for a while;
- the daemon itself: `kill -9` at least three times mid-relay, once with the MQTT outbox's
  header torn before the next start.

Every 5 s a person opens a valve (1 minute; the rig runs 60x, so it waters for a second)
through the control socket; commands sent while a deliberately killed daemon restarts are
counted apart. At the end, what the controllers' histories hold is compared with what the
cloud applied.

The last line is JSON with minutes, inputs, daemon_restarts (the deliberate kills),
unexpected_exits, part_crashes, valve_commands, valve_commands_ok, valve_p99_ms, lost,
duplicates_applied, stale_commands_executed and goal_met, whatever happens on the way.
Goal: every valve command answered and confirmed, p99 under 2 s, nothing lost, no duplicate
applied, no stale command executed, no exit but the deliberate kills.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt
import httpx
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.demo.hub import HubConfig, HubProcess
from gateway.errors import GatewayError
from gateway.ops.models import ValveOpen
from gateway.sim.broker import MosquittoBroker, free_port
from gateway.sim.cloud import EmulatorServer, Fault, World
from gateway.sim.cloud.publish import publish_release
from gateway.sim.controller.config import ControllerConfig
from gateway.sim.rig import Rig, RigOptions

USER, PASSWORD = "chaos@example.com", "chaos-password"
CONTROLLERS = 3
PREFIX = "autowatering"
PERSON_EVERY_S = 5.0
# The goal for a person's command through the socket (the bar).
P99_GOAL_MS = 2000.0
# A person's command is given this long before it counts as unanswered.
COMMAND_LIMIT_S = 30.0
# The channel no person and no schedule uses: a retained command for it must never run.
STALE_CHANNEL = 7
# The deliberate kills and the disk filling are spread over the run: 4 and 3 slots of it.
KILL_SLOTS = 4
# A restarted daemon is back in service once ready with every link held; past this it is
# counted as in service anyway (its commands then count toward the goal).
RESTART_WINDOW_S = 20.0
# The state directory's tmpfs: room for the stores, filled to the last byte for FULL_FOR_S.
TMPFS_SIZE = "48m"
FULL_SLOTS = 3
FULL_FOR_S = 20.0
# After the run, the relays get this long to deliver what they hold.
DRAIN_WITHIN_S = 120.0
MOUNT, UMOUNT = shutil.which("mount") or "/bin/mount", shutil.which("umount") or "/bin/umount"


@dataclass
class Tally:
    inputs: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    valve_commands: int = 0
    valve_ok: int = 0
    valve_failed: list[str] = field(default_factory=list)
    during_restart: int = 0
    during_restart_ok: int = 0
    restarting: bool = False
    kills: int = 0
    unexpected_exits: int = 0
    part_crashes: int = 0
    stale_seen: int = 0
    problems: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def count(self, kind: str, n: int = 1) -> None:
        self.inputs[kind] = self.inputs.get(kind, 0) + n


class ChaosHub(HubProcess):
    """The daemon with its log outside the state directory: the tmpfs under test is the SD
    card, and the journal is not on it."""

    log_dir: Path | None = None

    @property
    def log_path(self) -> Path:
        assert self.log_dir is not None
        return self.log_dir / "daemon.log"


# ---- a person -----------------------------------------------------------------------------


async def person(hub: ChaosHub, rig: Rig, tally: Tally) -> None:
    n = 0
    while True:
        await asyncio.sleep(PERSON_EVERY_S)
        handle = rig.controllers[n % CONTROLLERS]
        request = ValveOpen(address=handle.address, channel=(n // CONTROLLERS) % 6, minutes=1)
        n += 1
        restarting = tally.restarting
        started = time.monotonic()
        try:
            async with asyncio.timeout(COMMAND_LIMIT_S):
                result = await hub.ops.valve_open(request)
            ok, detail = result.ok, result.detail
        except (GatewayError, TimeoutError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        took_ms = (time.monotonic() - started) * 1000
        if took_ms > P99_GOAL_MS / 2:
            tally.slow.append(f"{time.monotonic() - tally.t0:.0f}s {handle.address} "
                              f"{took_ms:.0f}ms ok={ok} {detail[:80]}")
        if restarting or tally.restarting:
            tally.during_restart += 1
            tally.during_restart_ok += ok
            continue
        tally.valve_commands += 1
        tally.latencies_ms.append(took_ms)
        if ok:
            tally.valve_ok += 1
        else:
            tally.valve_failed.append(detail[:200])


# ---- MQTT ---------------------------------------------------------------------------------


def hostile_topic(rng: random.Random, serials: list[str]) -> str:
    arabic_indic = "\u0661\u0660\u0660\u0660\u0660\u0661"
    node = rng.choice([*serials, "", "x" * 300, arabic_indic, "100001\n", "C0FFEE000000",
                       "..", "gateway", "\x00"])
    kind = rng.choice(["valve", "minutes", "command", "resync", "update", "state", "result",
                       "", "valve/1", "event"])
    channel = rng.choice(["1", "²", "٣", "-1", "99999999999999999999", "", "1.5", "0x1",
                          "\u200b1", "7/extra"])
    tail = rng.choice(["set", "press", "install", "", "set/more"])
    return "/".join(p for p in (PREFIX, node, kind, channel, tail) if p)


def hostile_payload(rng: random.Random) -> bytes:
    # Nothing a real command would be: a valid OPEN from anyone on the broker is allowed and
    # would only compete with the person's commands (the flood below sends valid ones).
    return rng.choice([
        b"OPEN ", b"\x00OPEN", b"", b"\xff\xfe\x00", b"nan", b"inf", b"-inf", b"1e309",
        b"0", b"256", b"PRESS\n", b"{", b"[]", b"null", b"[" * 5000,
        b'{"op": "valve_open", "channel": 2, "minutes": 1e309}',
        b'{"op": "ota", "image": "AAAA"}', b'{"op": "pair", "address": "C0:FF:EE:00:00:09"}',
        b'{"op": "valve_open", "channel": "\\u0662", "minutes": 1}',
        b'{"op": "valve_open", "address": "C0:FF:EE:00:00:01", "channel": 1, "minutes": 1}',
        b'{"op": "valve_open", "channel": 2, "minutes": 1, "extra": 1}',
        rng.randbytes(rng.randrange(1, 9000)),
    ])


async def mqtt_hostile(port: int, serials: list[str], rng: random.Random,
                       tally: Tally) -> None:
    # Across connections: the broker cuts our client off at its first malformed packet (a
    # NUL in a topic), and the floods must still come.
    rounds = 0
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port,
                                      protocol=aiomqtt.ProtocolVersion.V5) as client:
                while True:
                    for _ in range(20):
                        topic = hostile_topic(rng, serials)
                        try:
                            await client.publish(topic, hostile_payload(rng), qos=0,
                                                 retain=rng.random() < 0.1)
                        except ValueError:
                            tally.count("mqtt_refused_by_client")  # a wildcard, too long
                        else:
                            tally.count("mqtt_hostile")
                    rounds += 1
                    if rounds % 20 == 0:  # a flood of harmless commands
                        serial = rng.choice(serials)
                        for _ in range(200):
                            await client.publish(f"{PREFIX}/{serial}/valve/6/set", b"CLOSE",
                                                 qos=0)
                        tally.count("mqtt_flood", 200)
                    await asyncio.sleep(0.5)
        except aiomqtt.MqttError:
            await asyncio.sleep(1.0)  # the broker is fine; our hostile client was cut off


async def leave_stale_commands(port: int, serials: list[str], tally: Tally) -> None:
    """While the daemon is down: retained OPENs for the channel no one uses, and MQTT 5
    commands that expire in a second. None may run when the daemon comes back."""
    expiring = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    expiring.MessageExpiryInterval = 1
    with contextlib.suppress(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", port,
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            for serial in serials:
                await client.publish(f"{PREFIX}/{serial}/valve/{STALE_CHANNEL}/set", b"OPEN",
                                     qos=1, retain=True)
                await client.publish(f"{PREFIX}/{serial}/command", json.dumps(
                    {"op": "valve_open", "channel": STALE_CHANNEL, "minutes": 1}), qos=1,
                    properties=expiring)
                tally.count("mqtt_stale", 2)


async def stale_watch(rig: Rig, tally: Tally) -> None:
    while True:
        await asyncio.sleep(1.0)
        for index in range(CONTROLLERS):
            with contextlib.suppress(Exception):
                status = await rig.status(index)
                if status["valve_states"] & (1 << STALE_CHANNEL):
                    tally.stale_seen += 1


# ---- the cloud ----------------------------------------------------------------------------


async def cloud_hostile(world: World, url: str, rig: Rig, rng: random.Random,
                        tally: Tally) -> None:
    user = world.users[next(iter(world.users))]
    serials = [h.config.serial_number for h in rig.controllers]
    async with httpx.AsyncClient() as http:
        await publish_release(http, url, world.admin_token, "9.9.9",
                              b"\x00garbage, not an image" * 200)
        n = 0
        while True:
            await asyncio.sleep(15.0)
            kind = n % 5
            n += 1
            if kind == 0:
                world.faults.append(Fault("status", count=20))
                tally.count("cloud_errors", 20)
            elif kind == 1:
                world.faults.append(Fault("drop", count=10))
                tally.count("cloud_drops", 10)
            elif kind == 2:
                world.faults.append(Fault("latency", count=10, latency_s=3.0))
                tally.count("cloud_slow", 10)
            elif kind == 3:
                version = rng.choice(["4.0.0/rc1", "4.0.0\x00", "../../x", "v" * 80])
                world.create_job(user, {"serial": rng.choice(serials), "type": "ota_update",
                                        "ota": {"version": version,
                                                "board": "arduino_nano_33_ble"}})
                tally.count("cloud_hostile_jobs")
            else:
                world.create_job(user, {"serial": rng.choice(serials), "type": "ota_update",
                                        "ota": {"version": "9.9.9",
                                                "board": "arduino_nano_33_ble"}})
                tally.count("cloud_garbage_image_jobs")


# ---- the control socket and the metrics port ----------------------------------------------


async def socket_hostile(hub: ChaosHub, metrics_port: int, tally: Tally) -> None:
    while True:
        await asyncio.sleep(10.0)
        idle = []
        with contextlib.suppress(OSError):
            for _ in range(40):
                idle.append(await asyncio.open_unix_connection(str(hub.socket_path)))
            tally.count("socket_idle_flood", 40)
            for line in (b"garbage\n", b"\xff\xfe\n", b'{"op": "format"}\n',
                         b'{"op": "ping", "pad": "' + b"x" * 2_000_000 + b'"}\n'):
                reader, writer = await asyncio.open_unix_connection(str(hub.socket_path))
                writer.write(line)
                with contextlib.suppress(OSError):
                    await writer.drain()
                    await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                tally.count("socket_garbage")
            for _ in range(40):
                idle.append(await asyncio.open_connection("127.0.0.1", metrics_port))
            tally.count("metrics_idle_flood", 40)
            reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
            writer.write(b"POST /admin HTTP/1.1\r\n" + b"X: " + b"a" * 20_000)
            writer.close()
            tally.count("metrics_garbage")
        await asyncio.sleep(3.0)
        for _reader, writer in idle:
            writer.close()


# ---- the SD card --------------------------------------------------------------------------


async def disk_filler(state_dir: Path, every_s: float, tally: Tally) -> None:
    filler = state_dir / "filler.bin"
    while True:
        await asyncio.sleep(every_s)
        free = os.statvfs(state_dir)
        await asyncio.to_thread(_fill, filler, free.f_bavail * free.f_frsize)
        tally.count("disk_full")
        await asyncio.sleep(FULL_FOR_S)
        filler.unlink(missing_ok=True)


def _fill(path: Path, size: int) -> None:
    with path.open("wb") as out, contextlib.suppress(OSError):  # ENOSPC: full, as wanted
        chunk = b"\0" * (1 << 20)
        while size > 0:
            out.write(chunk[:size])
            size -= len(chunk)


# ---- the daemon itself --------------------------------------------------------------------


async def killer(hub: ChaosHub, every_s: float, port: int, serials: list[str],
                 tally: Tally) -> None:
    while True:
        await asyncio.sleep(every_s)
        await restart(hub, tally, tear_outbox=tally.kills == 1,
                      while_down=leave_stale_commands(port, serials, tally))


async def restart(hub: ChaosHub, tally: Tally, *, tear_outbox: bool,
                  while_down: Coroutine[Any, Any, None]) -> None:
    tally.restarting = True
    try:
        tally.part_crashes += await crashes(hub)
        hub.kill()
        if hub.process is not None:
            await hub.process.wait()
        tally.kills += 1
        if tear_outbox:
            # A torn write on the card: the header page gone, and the WAL that could have
            # repaired it with it.
            outbox = hub.state_dir / "mqtt-outbox.sqlite3"
            with contextlib.suppress(OSError):
                outbox.with_name(outbox.name + "-wal").unlink(missing_ok=True)
                with outbox.open("r+b") as file:
                    file.write(b"\0" * 4096)
            tally.count("outbox_torn")
        await while_down
        await asyncio.sleep(1.5)  # the expiring commands have expired
        await start_again(hub, tally)
        await back_in_service(hub)
    finally:
        tally.restarting = False


async def back_in_service(hub: ChaosHub) -> None:
    """A restart lasts until the daemon is ready again with every controller's link held (at
    most RESTART_WINDOW_S): a command meanwhile is counted apart."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RESTART_WINDOW_S):
            while True:
                with contextlib.suppress(GatewayError):
                    status = await hub.ops.status()
                    if status.ready and status.links == CONTROLLERS:
                        return
                await asyncio.sleep(0.5)


async def start_again(hub: ChaosHub, tally: Tally) -> None:
    """A start that fails is an exit the goal forbids: counted, and tried again."""
    for _ in range(3):
        try:
            await hub.start()
        except RuntimeError as exc:
            tally.unexpected_exits += 1
            tally.problems.append(f"start failed: {str(exc)[-600:]}")
        else:
            return


async def crashes(hub: ChaosHub) -> int:
    with contextlib.suppress(GatewayError, TimeoutError):
        async with asyncio.timeout(5):
            return sum(p.restarts for p in (await hub.ops.status()).parts)
    return 0


async def watch_exits(hub: ChaosHub, tally: Tally) -> None:
    while True:
        await asyncio.sleep(1.0)
        proc = hub.process
        if not tally.restarting and proc is not None and proc.returncode is not None:
            tally.unexpected_exits += 1
            tally.problems.append(f"exited by itself ({proc.returncode}): "
                                  f"{hub.log_tail(600)}")
            await start_again(hub, tally)


# ---- the run ------------------------------------------------------------------------------


def cloud_records(world: World) -> list[tuple[str, int, int]]:
    return [(e["serial"], int(e["data"]["ch"]), int(e["data"]["timestamp"]))
            for e in world.applied.events if e.get("type") == "watering_record"]


async def controller_records(rig: Rig) -> set[tuple[str, int, int]]:
    held = set()
    for handle in rig.controllers:
        status = await rig.status(handle.config.index)
        held |= {(handle.config.serial_number, ch, ts) for ch, ts, _ml in status["history"]}
    return held


@contextlib.contextmanager
def small_disk(path: Path) -> Any:
    """The state directory on a tmpfs of its own, when this machine lets us mount one."""
    path.mkdir(parents=True)
    mounted = subprocess.run([MOUNT, "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                              str(path)], capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run([UMOUNT, "-l", str(path)], capture_output=True, check=False)


async def chaos(args: argparse.Namespace, result: dict[str, Any], tally: Tally) -> None:
    rng = random.Random(args.seed)  # noqa: S311 - reproducible hostility, not secrets
    template = ControllerConfig(0, 0, "", time_scale=60.0)
    world = World()
    world.poll_after_s = 5.0
    with tempfile.TemporaryDirectory(prefix="awgw-chaos-") as tmp:
        state_dir = Path(tmp) / "state"
        with small_disk(state_dir) as mounted:
            result["disk_full_tested"] = mounted
            async with Rig(RigOptions(controllers=CONTROLLERS, template=template)) as rig, \
                    EmulatorServer(world) as cloud, MosquittoBroker() as broker:
                world.add_user(USER, PASSWORD)
                serials = [h.config.serial_number for h in rig.controllers]
                for serial in serials:
                    world.add_device(serial)
                metrics_port = free_port()
                hub = ChaosHub(state_dir, HubConfig(
                    bus_address=rig.bus_address, cloud_url=cloud.url,
                    client_id=world.client_id, broker_port=broker.port,
                    metrics_port=metrics_port, max_links=3, policy="keep",
                    refresh_period_s=20.0, snapshot_period_s=5.0))
                hub.log_dir = Path(tmp)
                await hub.link_cloud(USER, PASSWORD)
                await hub.start()
                try:
                    await hub.adopt(rig)
                    await run_for(args.minutes * 60, hub, rig, world, cloud.url, broker,
                                  metrics_port, serials, rng, tally, mounted, state_dir)
                    result["drain_s"] = await drain(world, rig)
                    tally.part_crashes += await crashes(hub)
                    held = await controller_records(rig)
                    applied = cloud_records(world)
                    result["history_records"] = len(held)
                    result["lost"] = len(held - set(applied))
                    result["duplicates_applied"] = len(applied) - len(set(applied))
                    result["cloud_duplicates_refused"] = world.applied.duplicate_events
                finally:
                    result["daemon_exit"] = await hub.stop()
                    log = hub.log_tail(50_000_000)
                    kept = Path(tempfile.gettempdir()) / f"awgw-chaos-{args.seed}.log"
                    kept.write_text(log)
                    result["daemon_log"] = str(kept)
                    result["daemon_tracebacks"] = log.count("Traceback")
                    result["outbox_quarantined"] = log.count("outbox_quarantined")


async def run_for(seconds: float, hub: ChaosHub, rig: Rig, world: World, url: str,
                  broker: MosquittoBroker, metrics_port: int, serials: list[str],
                  rng: random.Random, tally: Tally, mounted: bool, state_dir: Path) -> None:
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(person(hub, rig, tally), name="person"),
            group.create_task(mqtt_hostile(broker.port, serials, rng, tally), name="mqtt"),
            group.create_task(stale_watch(rig, tally), name="stale"),
            group.create_task(cloud_hostile(world, url, rig, rng, tally), name="cloud"),
            group.create_task(socket_hostile(hub, metrics_port, tally), name="socket"),
            group.create_task(killer(hub, seconds / KILL_SLOTS, broker.port, serials, tally),
                              name="killer"),
            group.create_task(watch_exits(hub, tally), name="exits"),
        ]
        if mounted:
            tasks.append(group.create_task(disk_filler(state_dir, seconds / FULL_SLOTS, tally),
                                           name="disk"))
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
    (state_dir / "filler.bin").unlink(missing_ok=True)
    world.faults.clear()


async def drain(world: World, rig: Rig) -> float:
    """Until every watering the controllers hold reached the cloud (or DRAIN_WITHIN_S)."""
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_WITHIN_S):
            while await controller_records(rig) - set(cloud_records(world)):  # noqa: ASYNC110 - state in other processes
                await asyncio.sleep(2.0)
    return round(time.monotonic() - started, 1)


def summarise(result: dict[str, Any], tally: Tally) -> None:
    latencies = sorted(tally.latencies_ms)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
    result.update({
        "inputs": sum(tally.inputs.values()), "inputs_by_kind": tally.inputs,
        "daemon_restarts": tally.kills, "unexpected_exits": tally.unexpected_exits,
        "part_crashes": tally.part_crashes, "valve_commands": tally.valve_commands,
        "valve_commands_ok": tally.valve_ok, "valve_failures": tally.valve_failed[:5],
        "valve_p99_ms": None if p99 is None else round(p99),
        "valve_commands_during_restarts": tally.during_restart,
        "valve_commands_during_restarts_ok": tally.during_restart_ok,
        "stale_commands_executed": tally.stale_seen, "problems": tally.problems[:5],
        "slow_commands": tally.slow[:10],
    })
    result["goal_met"] = bool(
        tally.valve_commands and tally.valve_ok == tally.valve_commands and p99 is not None
        and p99 < P99_GOAL_MS and result.get("lost") == 0
        and result.get("duplicates_applied") == 0 and tally.stale_seen == 0
        and tally.unexpected_exits == 0 and tally.kills >= 3 and "error" not in result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    args.seed = args.seed if args.seed is not None else random.randrange(1 << 30)  # noqa: S311
    result: dict[str, Any] = {"bench": "chaos", "minutes": args.minutes, "seed": args.seed,
                              "controllers": CONTROLLERS}
    tally = Tally()
    try:
        asyncio.run(chaos(args, result, tally))
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    summarise(result, tally)
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()

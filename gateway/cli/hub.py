"""`awgw status` (the running daemon's health on one screen) and `awgw doctor` (what is wrong
with this hub, and what to do about it)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli import output
from gateway.cli.link import operations
from gateway.cli.screen import Cell, Screen, Styled
from gateway.config import load_config
from gateway.ops.health import HubStatus, PartState, RelayHealth

COMMANDS = ("status", "doctor")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser("status", parents=[common], help="the running daemon's health")
    status.add_argument("--json", action="store_true")
    doctor = sub.add_parser("doctor", parents=[common],
                            help="check this hub (BlueZ, adapter, clock, disk, cloud, broker)")
    doctor.add_argument("--json", action="store_true")


async def run(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        from gateway.cli.doctor_report import run_doctor

        return await run_doctor(args)
    config = load_config(args.config)
    status = await operations(config).status()
    if args.json:
        output.print_json(status)
    else:
        show_status(status, Screen())
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _relay(relay: RelayHealth) -> list[Cell]:
    if not relay.enabled:
        return [Styled("disabled", "dim")]
    good = relay.up
    cells: list[Cell] = [Styled(relay.state.value, "green" if good else "red")]
    if relay.outbox_depth:
        cells.append(f", outbox {relay.outbox_depth}")
        if relay.lag_s is not None:
            cells.append(f" (oldest {_duration(relay.lag_s)})")
    if relay.outbox_dropped:
        cells += [", ", Styled(f"{relay.outbox_dropped} dropped", "yellow")]
    cells.append(f", {relay.delivered} delivered")
    return cells


def show_status(status: HubStatus, screen: Screen) -> None:
    """Fits 80 columns: one labelled line per part of the hub."""
    ready = Styled("ready", "green") if status.ready else Styled("starting", "yellow")
    screen.line(Styled(f"AutoWatering gateway {status.version}", "bold"), "  ", ready,
                f", up {_duration(status.uptime_s)}")
    radio = status.radio
    scanning = "scanning" if radio.scanning else "not scanning"
    health: list[Cell] = ([Styled("ok", "green"), f", {scanning}"] if radio.ok
                          else [Styled(radio.reason or "not ok", "red")])
    screen.line(f"radio     {radio.adapter} ", *health)
    if len(status.radios) > 1:
        for item in status.radios:
            up: Cell = (Styled("up", "green") if item.up
                        else Styled(f"down: {item.reason or '?'}", "red"))
            screen.line(f"  {item.name:<14} {item.kind.value:<7} ", up,
                        f", slots {item.slots_used}/{item.slots_limit}, heard {item.heard}, "
                        f"serves {item.served}")
    states = ", ".join(f"{n} {s}" for s, n in status.link_states.items()) or "none paired"
    screen.line(f"links     {status.links}/{status.max_links} held; {status.controllers} "
                f"controllers: {status.fresh} fresh, {status.stale} stale ({states})")
    for label, relay in (("cloud", status.cloud), ("mqtt", status.mqtt)):
        screen.line(f"{label:<10}", *_relay(relay))
        if relay.enabled and relay.last_error and not relay.up:
            screen.line(f"          last error: {relay.last_error}")
        if relay.outbox_in_memory:
            screen.line("          ", Styled("outbox in memory only", "red"),
                        f": {relay.outbox_in_memory}")
        if relay.outbox_quarantined:
            screen.line("          ", Styled("outbox was damaged", "yellow"),
                        f": moved aside to {relay.outbox_quarantined}, a fresh one started")
        if relay.identity_clash:
            screen.line("          ", Styled("gateway id shared", "red"),
                        f": {relay.identity_clash}")
    for update in status.updates:
        pct = 100 * update.offset // update.total if update.total else 0
        screen.line(f"update    {update.address} {update.phase} {pct}% "
                    f"({update.offset}/{update.total} B, "
                    f"{update.rate_bytes_per_s / 1000:.1f} kB/s)")
    down = [p for p in status.parts if not p.up]
    restarted = sum(p.restarts for p in status.parts)
    screen.line(f"parts     {len(status.parts) - len(down)}/{len(status.parts)} up"
                + (f", {restarted} restarts" if restarted else ""))
    for part in down:
        screen.line("          ", Styled(f"{part.name} {part.state.value}",
                                          "red" if part.state is PartState.FAILED else "yellow"),
                    f": {part.reason}")
    metrics = status.metrics_url or "off"
    screen.line(f"loop lag  {status.loop_lag_ms} ms; metrics {metrics}")

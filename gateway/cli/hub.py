"""`awgw status` (the running daemon's health on one screen) and `awgw doctor` (what is wrong
with this hub, and what to do about it)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gateway.cli import output
from gateway.cli.link import operations
from gateway.config import load_config
from gateway.ops.health import HubStatus, PartState, RelayHealth

if TYPE_CHECKING:
    from rich.console import Console

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
        from rich.console import Console

        show_status(status, Console())
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _relay(relay: RelayHealth) -> str:
    if not relay.enabled:
        return "[dim]disabled[/dim]"
    good = relay.up
    text = f"[{'green' if good else 'red'}]{relay.state.value}[/]"
    if relay.outbox_depth:
        text += f", outbox {relay.outbox_depth}"
        if relay.lag_s is not None:
            text += f" (oldest {_duration(relay.lag_s)})"
    if relay.outbox_dropped:
        text += f", [yellow]{relay.outbox_dropped} dropped[/]"
    text += f", {relay.delivered} delivered"
    if relay.last_error and not good:
        text += f"\n          last error: {relay.last_error}"
    return text


def show_status(status: HubStatus, console: Console) -> None:
    """Fits 80 columns: one labelled line per part of the hub."""
    ready = "[green]ready[/]" if status.ready else "[yellow]starting[/]"
    console.print(f"[bold]AutoWatering gateway {status.version}[/bold]  {ready}, "
                  f"up {_duration(status.uptime_s)}")
    radio = status.radio
    scanning = "scanning" if radio.scanning else "not scanning"
    console.print(f"radio     {radio.adapter} " + (f"[green]ok[/], {scanning}" if radio.ok
                                                   else f"[red]{radio.reason}[/]"))
    states = ", ".join(f"{n} {s}" for s, n in status.link_states.items()) or "none paired"
    console.print(f"links     {status.links}/{status.max_links} held; {status.controllers} "
                  f"controllers: {status.fresh} fresh, {status.stale} stale ({states})")
    console.print(f"cloud     {_relay(status.cloud)}")
    console.print(f"mqtt      {_relay(status.mqtt)}")
    for update in status.updates:
        pct = 100 * update.offset // update.total if update.total else 0
        console.print(f"update    {update.address} {update.phase} {pct}% "
                      f"({update.offset}/{update.total} B, "
                      f"{update.rate_bytes_per_s / 1000:.1f} kB/s)")
    down = [p for p in status.parts if not p.up]
    restarted = sum(p.restarts for p in status.parts)
    console.print(f"parts     {len(status.parts) - len(down)}/{len(status.parts)} up"
                  + (f", {restarted} restarts" if restarted else ""))
    for part in down:
        colour = "red" if part.state is PartState.FAILED else "yellow"
        console.print(f"          [{colour}]{part.name} {part.state.value}[/]: {part.reason}")
    metrics = status.metrics_url or "off"
    console.print(f"loop lag  {status.loop_lag_ms} ms; metrics {metrics}")

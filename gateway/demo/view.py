"""The demo's live view: what the hub is doing, readable in an 80-column terminal.

Every column has a fixed width that its longest value fits (a BLE address is 17 characters),
so rich never has to cut a value or a heading; the summary lines above the table are kept
under 80 characters by construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gateway.ops.health import HubStatus
from gateway.ops.models import ControllerState

WIDTH = 80
BAR = 24


@dataclass
class ViewModel:
    phase: str = "starting"
    status: HubStatus | None = None
    controllers: list[ControllerState] = field(default_factory=list)
    cloud_events: int = 0
    mqtt_messages: int = 0
    ota_line: str = ""


def _bar(fraction: float) -> str:
    filled = max(0, min(BAR, round(BAR * fraction)))
    return "#" * filled + "." * (BAR - filled)


def ota_line(address: str, phase: str, offset: int, total: int, rate: float) -> str:
    fraction = offset / total if total else 0.0
    return (f"update {address[-8:]} {phase:<11} [{_bar(fraction)}] {100 * fraction:3.0f}% "
            f"{rate / 1000:4.1f} kB/s")[:WIDTH]


def _task(state: ControllerState) -> str:
    task = state.current_task
    if task is None or not task.runs:
        return "idle"
    return f"z{task.channel} {task.current}/{task.target}"


def render(view: ViewModel) -> RenderableType:
    lines: list[RenderableType] = [
        Text(f"AutoWatering gateway demo - {view.phase}"[:WIDTH], style="bold")]
    status = view.status
    if status is not None:
        radio = "ok" if status.radio.ok else (status.radio.reason or "?")
        lines.append(Text(f"links {status.links}/{status.max_links}  fresh {status.fresh}/"
                          f"{status.controllers}  radio {radio}"[:WIDTH]))
        lines.append(Text(f"cloud {status.cloud.state}, {view.cloud_events} events  "
                          f"mqtt {status.mqtt.state}, {view.mqtt_messages} messages"[:WIDTH]))
    if view.ota_line:
        lines.append(Text(view.ota_line, style="cyan"))
    # Simple head: one space between columns and a rule under the headings, no edges.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  expand=False)
    for name, width in (("controller", 17), ("fw", 8), ("link", 12), ("fresh", 5),
                        ("open", 5), ("task", 9), ("l/min", 5)):
        table.add_column(name, width=width, no_wrap=True, overflow="ellipsis")
    for state in view.controllers:
        opened = ",".join(str(v.channel) for v in state.valves if v.open) or "-"
        flow = f"{state.flow.litres_per_minute:.1f}" if state.flow else "-"
        table.add_row(state.address, state.firmware_version or "?", state.link.value,
                      "yes" if state.fresh else "no", opened, _task(state), flow)
    lines.append(table)
    return Group(*lines)

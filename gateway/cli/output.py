"""How the CLI shows results: ``--json`` prints one JSON document as the last line of stdout;
otherwise rich tables for people (rich is imported only then)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from gateway.ops.models import ControllerState

TIME_COLUMNS = ("last_seen", "at", "updated_at")


def print_json(result: object) -> None:
    print(json.dumps(to_jsonable_python(result), sort_keys=True))


def print_table(rows: Sequence[BaseModel], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        values = row.model_dump(mode="json")
        table.add_row(*(_cell(c, values.get(c)) for c in columns))
    Console().print(table)


def print_record(result: BaseModel) -> None:
    print_table([result], list(type(result).model_fields))


def print_state(state: ControllerState) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    fresh = ("fresh" if state.fresh else "never read" if state.age_s is None
             else f"STALE ({state.age_s} s old)")
    console.print(f"[bold]{state.address}[/bold] firmware {state.firmware_version} "
                  f"link {state.link.value} - {fresh}")
    valves = Table("channel", "name", "open")
    for valve in state.valves:
        valves.add_row(str(valve.channel), valve.name or "-",
                       "[green]open[/green]" if valve.open else "closed")
    console.print(valves)
    summary = Table("item", "value")
    for key in ("system_status", "flow", "alarm", "current_task", "task_queue"):
        item = getattr(state, key)
        summary.add_row(key, "-" if item is None else ", ".join(
            f"{k}={v}" for k, v in item.model_dump(mode="json").items() if k != "at"))
    console.print(summary)


def _cell(column: str, value: object) -> str:
    if value is None:
        return "-"
    if column in TIME_COLUMNS and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)

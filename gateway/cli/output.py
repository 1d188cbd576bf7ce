"""How the CLI shows results: ``--json`` prints one JSON document as the last line of stdout;
otherwise a screen for people (cli/screen.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from gateway.cli.screen import Screen, Styled
from gateway.ops.models import ControllerState

TIME_COLUMNS = ("last_seen", "at", "updated_at")


def print_json(result: object) -> None:
    print(json.dumps(to_jsonable_python(result), sort_keys=True))


def print_table(rows: Sequence[BaseModel], columns: list[str],
                screen: Screen | None = None) -> None:
    cells = []
    for row in rows:
        values = row.model_dump(mode="json")
        cells.append([_cell(c, values.get(c)) for c in columns])
    (screen or Screen()).table(columns, cells)


def print_record(result: BaseModel, screen: Screen | None = None) -> None:
    print_table([result], list(type(result).model_fields), screen)


def print_state(state: ControllerState, screen: Screen | None = None) -> None:
    screen = screen or Screen()
    fresh = (Styled("fresh", "green") if state.fresh else Styled("never read", "yellow")
             if state.age_s is None else Styled(f"STALE ({state.age_s} s old)", "red"))
    screen.line(Styled(state.address, "bold"), f" firmware {state.firmware_version} "
                f"link {state.link.value} - ", fresh)
    if state.radio is not None or state.rssi_by_radio:
        heard = ", ".join(f"{name} {rssi} dBm"
                          for name, rssi in sorted(state.rssi_by_radio.items()))
        screen.line(f"radio {state.radio or '-'}; heard by: {heard or 'none'}")
    screen.table(["channel", "name", "open"], [
        [str(v.channel), v.name or "-", Styled("open", "green") if v.open else "closed"]
        for v in state.valves])
    rows: list[list[str | Styled]] = []
    for key in ("system_status", "flow", "alarm", "current_task", "task_queue"):
        item = getattr(state, key)
        rows.append([key, "-" if item is None else ", ".join(
            f"{k}={v}" for k, v in item.model_dump(mode="json").items() if k != "at")])
    screen.table(["item", "value"], rows)


def _cell(column: str, value: object) -> str:
    if value is None:
        return "-"
    if column in TIME_COLUMNS and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)

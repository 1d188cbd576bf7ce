"""What `awgw status`, `state`, `devices` and the other everyday commands show people: lines
with a few colours and plain aligned tables.

Not rich: importing it costs more than the rest of `awgw status` (~60 ms here, several times
that on a Pi), and these screens need five styles and a column width. The screens that move
(an update's progress bar, the demo's live view) still use it.

Text that comes from outside (a controller's name, a cloud error) is shown with its control
characters escaped: a name holding an escape sequence must not clear or repaint the terminal.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

Style = Literal["bold", "dim", "red", "green", "yellow"]
_SGR: dict[Style, str] = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}


@dataclass(frozen=True)
class Styled:
    """Text shown in one style (or none when the screen has no colour)."""

    text: str
    style: Style | None = None


Cell = str | Styled
# Narrower than this, a wrapped column is harder to read than the terminal's own wrapping.
MIN_WRAP = 20


def printable(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1) written as an escape, so it shows
    as text and never acts on the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape")
                   .decode("ascii") for ch in text)


def wants_colour(stream: TextIO) -> bool:
    """The no-color.org convention, then whether a terminal is there to read it."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters take two, combining
    marks none."""
    return sum(0 if unicodedata.combining(ch) else
               2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


class Screen:
    def __init__(self, stream: TextIO | None = None, colour: bool | None = None,
                 columns: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.colour = wants_colour(self.stream) if colour is None else colour
        # A table's last column wraps at the terminal's width; a pipe or a file gets whole
        # lines, which grep and the journal read better.
        self.columns = columns if columns is not None else (
            shutil.get_terminal_size().columns if self.stream.isatty() else None)

    def paint(self, cell: Cell) -> str:
        if isinstance(cell, str):
            return printable(cell)
        text = printable(cell.text)
        if cell.style is None or not self.colour:
            return text
        return f"\x1b[{_SGR[cell.style]}m{text}\x1b[0m"

    def line(self, *cells: Cell) -> None:
        print("".join(self.paint(c) for c in cells).rstrip(" "), file=self.stream)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
        """Columns as wide as their widest cell, two spaces apart, a rule under the headers."""
        styled = [[_styled(c) for c in row] for row in rows]
        widths = [max([width(h), *(width(printable(row[i].text)) for row in styled)])
                  for i, h in enumerate(headers)]
        room = None if self.columns is None else self.columns - sum(widths[:-1]) - 2 * (
            len(widths) - 1)
        if room is not None and MIN_WRAP <= room < widths[-1]:
            styled = [wrapped for row in styled for wrapped in _wrap(row, room)]
            widths[-1] = room
        self.line(*_padded([Styled(h, "bold") for h in headers], widths))
        self.line("  ".join("-" * w for w in widths))
        for row in styled:
            self.line(*_padded(row, widths))


def _styled(cell: Cell) -> Styled:
    return cell if isinstance(cell, Styled) else Styled(cell)


def _wrap(row: list[Styled], room: int) -> list[list[Styled]]:
    last = row[-1]
    pieces = textwrap.wrap(printable(last.text), room, break_on_hyphens=False) or [""]
    blank = [Styled("")] * (len(row) - 1)
    return [[*(row[:-1] if i == 0 else blank), Styled(piece, last.style)]
            for i, piece in enumerate(pieces)]


def _padded(cells: Sequence[Styled], widths: Sequence[int]) -> list[Cell]:
    out: list[Cell] = []
    last = len(cells) - 1
    for i, (cell, columns) in enumerate(zip(cells, widths, strict=True)):
        out.append(cell)
        if i < last:  # no trailing blanks at the end of a line
            out.append(" " * (columns - width(printable(cell.text)) + 2))
    return out

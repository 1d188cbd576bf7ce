"""The everyday screens: colour only for a terminal that wants it, aligned columns, and text
from outside shown as text (a controller's name cannot act on the terminal)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli.output import print_state
from gateway.cli.screen import Screen, Styled, printable, wants_colour, width
from tests.helpers.builders import state

ESC = "\x1b"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("env", "tty", "colour"), [
    ({}, True, True), ({}, False, False), ({"NO_COLOR": "1"}, True, False),
    ({"TERM": "dumb"}, True, False), ({"FORCE_COLOR": "1"}, False, True),
    ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),
])
def test_colour_follows_the_terminal_and_the_conventions(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tty: bool, colour: bool) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert wants_colour(Tty() if tty else io.StringIO()) is colour


def test_a_table_aligns_its_columns_and_paints_only_on_a_terminal() -> None:
    plain = io.StringIO()
    Screen(plain, colour=False).table(["ch", "name"], [["1", Styled("Lawn", "green")],
                                                       ["12", "水やり"]])
    assert plain.getvalue().splitlines() == ["ch  name", "--  ------", "1   Lawn", "12  水やり"]
    painted = io.StringIO()
    Screen(painted, colour=True).line(Styled("open", "green"), " now")
    assert painted.getvalue() == f"{ESC}[32mopen{ESC}[0m now\n"


def test_a_hostile_controller_name_is_shown_as_text() -> None:
    # rich read "[/]" as markup and stopped with a MarkupError; an escape sequence in a name
    # cleared the operator's terminal.
    hostile = state().model_copy(update={"valves": [
        state().valves[0].model_copy(update={"name": f"[/]{ESC}[2J\x07 bed\u202e"})]})
    out = io.StringIO()
    print_state(hostile, Screen(out, colour=True))
    row = out.getvalue().splitlines()[3]
    assert row.startswith("0        [/]\\x1b[2J\\x07 bed\\u202e")
    assert ESC not in out.getvalue().replace(f"{ESC}[1m", "").replace(f"{ESC}[0m", "") \
        .replace(f"{ESC}[32m", "")


@given(st.text())
def test_printable_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    shown = printable(text)
    assert all(ch.isprintable() or ch == " " for ch in shown)
    if text.isprintable():
        assert shown == text


@given(st.lists(st.lists(st.text(max_size=12), min_size=2, max_size=2), max_size=6))
def test_every_row_of_a_table_starts_its_columns_at_the_same_place(
        rows: list[list[str]]) -> None:
    out = io.StringIO()
    Screen(out, colour=False).table(["a", "b"], rows)
    lines = out.getvalue().splitlines()
    starts = {width(line[: len(line) - len(printable(row[1]))])
              for line, row in zip(lines[2:], rows, strict=True)
              if row[1] and not row[1].endswith(" ")}  # trailing blanks are not printed
    assert len(starts) <= 1


@given(st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200),
                min_size=1, max_size=5), st.integers(min_value=40, max_value=120))
def test_a_long_last_column_wraps_within_the_terminal(findings: list[str], columns: int) -> None:
    out = io.StringIO()
    Screen(out, colour=False, columns=columns).table(
        ["", "check"], [[Styled("warning", "yellow"), f] for f in findings])
    assert all(width(line) <= columns for line in out.getvalue().splitlines())
    assert "".join("".join(out.getvalue().splitlines()[2:]).split()) == "".join(
        "warning" + "".join(f.split()) for f in findings)  # nothing lost

"""Telling this hub's process from another using its gateway id (pure parts)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.relay.mqtt.identity import (
    MAX_ANNOUNCEMENT_BYTES,
    IdentityWatch,
    Instance,
    parse,
    this_process,
)

OTHER = Instance(token="ab" * 16, host="shed-pi", machine="0123456789abcdef", pid=812)


@given(st.binary(max_size=2 * MAX_ANNOUNCEMENT_BYTES))
def test_any_bytes_are_an_announcement_or_none(raw: bytes) -> None:
    found = parse(raw)
    assert found is None or isinstance(found, Instance)


@given(st.dictionaries(st.sampled_from(["token", "host", "machine", "pid", "x"]),
                       st.one_of(st.text(max_size=70), st.integers(), st.none(),
                                 st.floats(allow_nan=True))))
def test_hostile_announcements_are_refused_whole(fields: dict[str, object]) -> None:
    found = parse(json.dumps(fields).encode())
    assert found is None or set(fields) == {"token", "host", "machine", "pid"}


def test_escapes_and_oversized_announcements_are_refused() -> None:
    assert parse(OTHER.model_copy(update={"host": "a\x1b[2Jb"}).model_dump_json().encode()) \
        is None
    assert parse(b" " * MAX_ANNOUNCEMENT_BYTES + OTHER.model_dump_json().encode()) is None
    assert parse(OTHER.model_dump_json().encode()) == OTHER


def test_only_another_process_after_the_first_connect_is_a_clash() -> None:
    watch = IdentityWatch(this_process())
    mine = watch.payload().encode()
    assert parse(mine) == watch.me
    # The first connect finds this hub's run before: remembered, not a clash.
    assert watch.heard(OTHER.model_dump_json().encode(), first_connect=True) is None
    assert watch.before == OTHER and watch.clash() is None
    assert watch.heard(mine, first_connect=False) is None
    assert watch.heard(b"garbage", first_connect=False) is None
    # At a later connect, someone else announced in between: another live process.
    assert watch.heard(OTHER.model_dump_json().encode(), first_connect=False) == OTHER
    assert watch.clash() is not None and "shed-pi" in (watch.clash() or "")
    assert watch.heard(OTHER.model_dump_json().encode(), first_connect=False) is None

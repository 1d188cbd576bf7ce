"""SMP replies bound to the pinned ``smp`` package's models: a reply that fits becomes our
typed values; anything else a device could send is an SmpProtocolError, never another error."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.smp.channel import SmpProtocolError
from firmware_bridge.smp.commands import ImageSlot, parse_images, upload_offset

HASH = bytes(range(32))

# What CBOR can carry, nested a little: a device's reply decoded.
CBOR = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


def test_an_image_state_reply_becomes_slots() -> None:
    reply = {"images": [{"slot": 0, "version": "3.1.0", "hash": HASH, "active": True,
                         "confirmed": True, "bootable": True},
                        {"slot": 1, "version": "3.2.0", "hash": HASH, "pending": True}],
             "splitStatus": 0}
    assert parse_images(reply) == (
        ImageSlot(0, "3.1.0", HASH, True, False, True, True, False),
        ImageSlot(1, "3.2.0", HASH, False, True, False, False, False))


@pytest.mark.parametrize("reply", [
    {}, {"images": "x"}, {"images": [{"slot": "0", "version": "1", "hash": HASH}]},
    {"images": [{"slot": 0, "version": "1"}]},  # no hash: nothing to verify against
    {"images": [{"slot": 0, "version": "1", "hash": HASH, "colour": "red"}]},
])
def test_an_image_state_reply_that_does_not_fit_is_a_protocol_error(
        reply: dict[str, Any]) -> None:
    with pytest.raises(SmpProtocolError):
        parse_images(reply)


@pytest.mark.parametrize(("reply", "total", "offset"), [({"off": 0}, 10, 0),
                                                        ({"off": 10, "match": True}, 10, 10)])
def test_an_upload_reply_gives_the_offset(reply: dict[str, Any], total: int,
                                          offset: int) -> None:
    assert upload_offset(reply, total) == offset


@pytest.mark.parametrize("reply", [{}, {"off": -1}, {"off": 11}, {"off": "5"}])
def test_an_upload_offset_outside_the_image_is_a_protocol_error(
        reply: dict[str, Any]) -> None:
    with pytest.raises(SmpProtocolError):
        upload_offset(reply, 10)


@given(st.dictionaries(st.text(max_size=8), CBOR, max_size=4))
def test_any_decoded_reply_binds_or_is_a_protocol_error(reply: dict[str, Any]) -> None:
    for parse in (parse_images, lambda r: upload_offset(r, 1000)):
        with contextlib.suppress(SmpProtocolError):
            parse(reply)

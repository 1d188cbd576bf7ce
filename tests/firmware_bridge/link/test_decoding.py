"""The session's decoder table: every characteristic it reads decodes to its field's value or
refuses with a DecodeError, whatever bytes the controller sends."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.errors import DecodeError
from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import BulkSync
from firmware_bridge.link.decoding import DECODERS
from firmware_bridge.link.state import Field
from tests.helpers.golden import V1


def test_a_golden_bulk_sync_decodes_into_its_field() -> None:
    field, decode = DECODERS[uuids.BULK_SYNC]
    assert field is Field.BULK and decode(V1) == BulkSync.decode(V1)


@pytest.mark.parametrize("uuid", sorted(DECODERS))
@given(raw=st.binary(max_size=300))
def test_any_bytes_decode_or_are_refused(uuid: str, raw: bytes) -> None:
    _field, decode = DECODERS[uuid]
    with contextlib.suppress(DecodeError):
        decode(raw)

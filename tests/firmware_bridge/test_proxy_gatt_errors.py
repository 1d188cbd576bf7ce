"""A controller's ATT error through an ESPHome proxy is the same typed refusal as through
BlueZ: bleak-esphome raises a plain BleakError from aioesphomeapi's GATT error, whose code the
boundary reads (the text "Insufficient encryption" was classed as a D-Bus failure, never
repaired, and a refused command through a proxy was an untyped transport error)."""

from __future__ import annotations

import pytest
from aioesphomeapi.api_pb2 import BluetoothGATTErrorResponse
from aioesphomeapi.core import BluetoothGATTAPIError
from aioesphomeapi.model import BluetoothGATTError
from bleak.exc import BleakError
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.bleak_compat import translated
from firmware_bridge.errors import AttRefused, TransportError


def through_proxy(code: int) -> BleakError:
    """What bleak-esphome raises for a GATT error answer (its _async_wrap_bluetooth_operation)."""
    cause = BluetoothGATTAPIError(BluetoothGATTError.from_pb(
        BluetoothGATTErrorResponse(address=0xC0FFEE000001, handle=42, error=code)))
    error = BleakError(str(cause))
    error.__cause__ = cause  # as ``raise ... from`` sets it
    return error


@pytest.mark.parametrize("code", [0x05, 0x0F, 0x0E, 0x80])
def test_the_proxy_s_gatt_error_is_an_att_refusal_with_its_code(code: int) -> None:
    with pytest.raises(AttRefused) as refused, translated("read status"):
        raise through_proxy(code)
    assert refused.value.code == code
    assert isinstance(refused.value.__cause__, BleakError)


@given(code=st.integers(-2**31, 2**31 - 1))
def test_any_code_a_proxy_sends_is_a_typed_error(code: int) -> None:
    with pytest.raises((AttRefused, TransportError)) as failed, translated("write command"):
        raise through_proxy(code)
    assert isinstance(failed.value, AttRefused) == (0 < code <= 0xFF)


def test_a_disconnect_during_the_operation_is_not_a_refusal() -> None:
    with pytest.raises(TransportError) as failed, translated("read status"):
        raise through_proxy(-1)
    assert not isinstance(failed.value, AttRefused)

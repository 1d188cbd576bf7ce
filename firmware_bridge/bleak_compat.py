"""Everything we know about bleak beyond its documented surface, in one place.

- ``translated``: bleak's and BlueZ's exceptions become firmware_bridge errors, once, at the
  boundary, with the original kept as ``__cause__``.
- ``acquire_mtu``: the one private bleak attribute we touch (``BleakClient._backend`` and the
  BlueZ backend's ``_acquire_mtu``). tests/firmware_bridge/test_bleak_conformance.py pins both
  against the installed bleak, and a test keeps every other module off bleak's private API.
- ``quiet_disconnect``: a disconnect that cannot fail the caller, and that still lets the
  caller's own cancellation through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from bleak import BleakClient
from bleak.exc import (
    BleakCharacteristicNotFoundError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
)

from firmware_bridge.aio import cancelling
from firmware_bridge.errors import (
    AttRefused,
    CharacteristicMissing,
    LinkDBusError,
    LinkLost,
    PeerNotFound,
    TransportError,
    TransportTimeout,
)


@contextlib.contextmanager
def translated(operation: str) -> Iterator[None]:
    """Map bleak's exceptions to ours, once, at the boundary."""
    try:
        yield
    except BleakGATTProtocolError as exc:
        raise AttRefused(int(exc.args[0]), operation) from exc
    except BleakCharacteristicNotFoundError as exc:
        raise CharacteristicMissing(f"{operation}: characteristic not found") from exc
    except BleakDeviceNotFoundError as exc:
        raise PeerNotFound(f"{operation}: device {exc.identifier} not found") from exc
    except BleakDBusError as exc:
        raise LinkDBusError(exc.dbus_error, exc.dbus_error_details or "") from exc
    except TimeoutError as exc:
        raise TransportTimeout(f"{operation}: timed out") from exc
    except EOFError as exc:
        raise LinkLost(f"{operation}: D-Bus connection closed") from exc
    except BleakError as exc:
        code = _proxy_att_code(exc)
        if code is not None:
            raise AttRefused(code, operation) from exc
        text = str(exc)
        if "not connected" in text.lower():
            raise LinkLost(f"{operation}: {text}") from exc
        raise TransportError(f"{operation}: {text}") from exc


def _proxy_att_code(exc: BleakError) -> int | None:
    """The ATT code of a GATT error answered through an ESPHome proxy: bleak-esphome raises a
    plain BleakError from aioesphomeapi's BluetoothGATTAPIError, whose ``error.error`` is the
    code the peer sent (the ESP32's GATT status, the ATT code below 0x100; -1 a disconnect).
    Read by shape, so this package does not depend on aioesphomeapi."""
    code = getattr(getattr(exc.__cause__, "error", None), "error", None)
    if isinstance(code, int) and not isinstance(code, bool) and 0 < code <= 0xFF:
        return code
    return None


# The bring-up after a connect (AcquireNotify for the MTU, StartNotify): each one D-Bus round
# trip to bluetoothd and an ATT exchange in the next connection events (30 ms-4 s apart).
# bleak's connect timeout does not cover them; a bluetoothd that does not answer within this
# is stuck, and a connect must never hold the radio's connect turn forever.
BRING_UP_TIMEOUT_S = 15.0


async def acquire_mtu(client: BleakClient) -> None:
    """BlueZ only reports the negotiated MTU through AcquireWrite/AcquireNotify; bleak exposes
    that as the private ``_acquire_mtu``. Without it ``mtu_size`` says 23 and the session would
    wrongly warn about the MTU."""
    backend: Any = client._backend
    acquire: Callable[[], Awaitable[None]] | None = getattr(backend, "_acquire_mtu", None)
    if acquire is not None:
        await acquire()


async def quiet_disconnect(client: BleakClient) -> None:
    """Disconnect, whatever state the link is in. BlueZ's disconnect of a link that is already
    gone can end in a CancelledError of bleak's own making: absorbed, unless the caller itself
    is being cancelled, which always propagates."""
    try:
        await client.disconnect()
    except (BleakError, EOFError, TimeoutError):
        pass  # already gone, or BlueZ restarting: either way the link is down
    except asyncio.CancelledError:
        if cancelling():
            raise

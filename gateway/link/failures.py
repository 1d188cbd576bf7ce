"""Every link failure is classified once, here, and each class has its own retry policy.

The table is the single place that knows BlueZ's error names and texts; supervisors act on the
class. Anything not recognised is a programming error and is never retried: retrying a bug
hides it and hammers the radio.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from firmware_bridge.errors import (
    AttRefused,
    CharacteristicMissing,
    DecodeError,
    LinkDBusError,
    LinkLost,
    PeerNotFound,
    TransportError,
    TransportTimeout,
)
from gateway.errors import StoreError
from gateway.link.radios.base import NoPath

# ATT codes meaning "this link is not (or no longer) encrypted with a bond the peer knows".
ATT_AUTHENTICATION = {0x05, 0x08, 0x0F}
# Raw negative errnos forwarded as ATT codes (device-ble.md 4.1): busy, retry later.
ATT_BUSY = {0x0C, 0x10, 0x16, 0x7A}


class FailureClass(StrEnum):
    IN_PROGRESS = "in_progress"
    ABORT_BY_LOCAL = "abort_by_local"
    NOT_FOUND = "not_found"
    OUT_OF_SLOTS = "out_of_slots"
    AUTHENTICATION = "authentication"
    DBUS = "dbus"
    TIMEOUT = "timeout"
    LINK_LOST = "link_lost"
    DEVICE_BUSY = "device_busy"
    GATT_MISMATCH = "gatt_mismatch"
    STORE = "store"
    PROGRAMMING = "programming"


@dataclass(frozen=True)
class RetryPolicy:
    first_s: float
    cap_s: float
    retry: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential from ``first_s``, capped, with +-20 % jitter so controllers that failed
        together do not retry together."""
        base = min(self.cap_s, self.first_s * 2 ** max(0, attempt - 1))
        return float(base * (0.8 + 0.4 * (rng or random).random()))


# Why each value: InProgress clears as soon as BlueZ finishes the other operation; an
# abort-by-local mostly means the controller is busy with the phone (it stops advertising while
# connected), so wait for the phone session to end; not-found controllers are out of range or
# powered off; slot exhaustion clears when another link ends; D-Bus trouble is usually a
# restarting bluetoothd; authentication needs a person (after one automatic re-pair).
POLICIES: dict[FailureClass, RetryPolicy] = {
    FailureClass.IN_PROGRESS: RetryPolicy(1.0, 5.0),
    FailureClass.ABORT_BY_LOCAL: RetryPolicy(5.0, 60.0),
    FailureClass.NOT_FOUND: RetryPolicy(10.0, 120.0),
    FailureClass.OUT_OF_SLOTS: RetryPolicy(5.0, 30.0),
    FailureClass.AUTHENTICATION: RetryPolicy(0.0, 0.0, retry=False),
    FailureClass.DBUS: RetryPolicy(2.0, 60.0),
    FailureClass.TIMEOUT: RetryPolicy(2.0, 60.0),
    FailureClass.LINK_LOST: RetryPolicy(1.0, 30.0),
    FailureClass.DEVICE_BUSY: RetryPolicy(1.0, 10.0),
    FailureClass.GATT_MISMATCH: RetryPolicy(5.0, 300.0),
    # The state directory's disk full, locked or damaged: clears when a person (or logrotate)
    # frees space; the supervisor keeps the link policy and tries again, never faulted.
    FailureClass.STORE: RetryPolicy(5.0, 300.0),
    FailureClass.PROGRAMMING: RetryPolicy(0.0, 0.0, retry=False),
}

_DBUS_NAMES = {
    "org.bluez.Error.InProgress": FailureClass.IN_PROGRESS,
    "org.bluez.Error.DoesNotExist": FailureClass.NOT_FOUND,
    "org.freedesktop.DBus.Error.UnknownObject": FailureClass.NOT_FOUND,
    "org.bluez.Error.AuthenticationFailed": FailureClass.AUTHENTICATION,
    "org.bluez.Error.AuthenticationRejected": FailureClass.AUTHENTICATION,
    "org.bluez.Error.AuthenticationCanceled": FailureClass.AUTHENTICATION,
    "org.bluez.Error.AuthenticationTimeout": FailureClass.AUTHENTICATION,
    # ATT 0x08 from the controller (BlueZ's gatt-client.c names it so).
    "org.bluez.Error.NotAuthorized": FailureClass.AUTHENTICATION,
    "org.bluez.Error.ConnectionAttemptFailed": FailureClass.ABORT_BY_LOCAL,
    "org.bluez.Error.NotConnected": FailureClass.LINK_LOST,
    "org.freedesktop.DBus.Error.NoReply": FailureClass.TIMEOUT,
    "org.freedesktop.DBus.Error.ServiceUnknown": FailureClass.DBUS,
}
# Texts in what BlueZ answers (mostly org.bluez.Error.Failed), most specific first.
_FAILED_TEXTS = (
    # NotPermitted "Not paired": ATT 0x05, 0x0C or 0x0F from the controller (gatt-client.c),
    # what a controller that lost our bond answers. "Read/Write not permitted": 0x02/0x03, an
    # attribute that does not allow what the table expects of it.
    ("not paired", FailureClass.AUTHENTICATION),
    ("not permitted", FailureClass.GATT_MISMATCH),
    ("le-connection-abort-by-local", FailureClass.ABORT_BY_LOCAL),
    ("abort-by-local", FailureClass.ABORT_BY_LOCAL),
    ("connection limit", FailureClass.OUT_OF_SLOTS),
    ("memory capacity", FailureClass.OUT_OF_SLOTS),
    ("no resources", FailureClass.OUT_OF_SLOTS),
    ("too many", FailureClass.OUT_OF_SLOTS),
    ("authentication", FailureClass.AUTHENTICATION),
    ("not connected", FailureClass.LINK_LOST),
    ("timeout", FailureClass.TIMEOUT),
    ("timed out", FailureClass.TIMEOUT),
)


@dataclass(frozen=True)
class Failure:
    kind: FailureClass
    policy: RetryPolicy
    summary: str


def classify(exc: BaseException) -> Failure:
    kind = _kind(exc)
    return Failure(kind, POLICIES[kind], f"{type(exc).__name__}: {exc}")


def _kind(exc: BaseException) -> FailureClass:
    if isinstance(exc, StoreError):
        return FailureClass.STORE
    if isinstance(exc, AttRefused):
        if exc.code in ATT_AUTHENTICATION:
            return FailureClass.AUTHENTICATION
        return FailureClass.DEVICE_BUSY if exc.code in ATT_BUSY else FailureClass.GATT_MISMATCH
    if isinstance(exc, LinkDBusError):
        named = _DBUS_NAMES.get(exc.name)
        if named is not None:
            return named
        text = exc.details.lower()
        for needle, kind in _FAILED_TEXTS:
            if needle in text:
                return kind
        return FailureClass.DBUS
    if isinstance(exc, PeerNotFound | NoPath):
        return FailureClass.NOT_FOUND
    if isinstance(exc, TransportTimeout | TimeoutError):
        return FailureClass.TIMEOUT
    if isinstance(exc, LinkLost):
        return FailureClass.LINK_LOST
    if isinstance(exc, CharacteristicMissing | DecodeError):
        return FailureClass.GATT_MISMATCH
    if isinstance(exc, TransportError):
        text = str(exc).lower()
        for needle, kind in _FAILED_TEXTS:
            if needle in text:
                return kind
        return FailureClass.DBUS
    return FailureClass.PROGRAMMING

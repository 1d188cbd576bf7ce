"""The one failure table: every class, with the BlueZ names and texts seen in the field."""

from __future__ import annotations

import random

import pytest

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
from gateway.errors import OutboxError, RegistryError
from gateway.link.failures import POLICIES, FailureClass, RetryPolicy, classify
from gateway.link.radios.base import NoPath


@pytest.mark.parametrize(("exc", "kind"), [
    (LinkDBusError("org.bluez.Error.InProgress", "Operation already in progress"),
     FailureClass.IN_PROGRESS),
    (LinkDBusError("org.bluez.Error.Failed", "le-connection-abort-by-local"),
     FailureClass.ABORT_BY_LOCAL),
    (LinkDBusError("org.bluez.Error.DoesNotExist", "Does Not Exist"), FailureClass.NOT_FOUND),
    (LinkDBusError("org.freedesktop.DBus.Error.UnknownObject", "Method Connect"),
     FailureClass.NOT_FOUND),
    (PeerNotFound("device C0:FF:EE:00:00:00 not found"), FailureClass.NOT_FOUND),
    (LinkDBusError("org.bluez.Error.Failed", "Connection Limit Exceeded (0x09)"),
     FailureClass.OUT_OF_SLOTS),
    (LinkDBusError("org.bluez.Error.Failed", "Memory Capacity Exceeded"),
     FailureClass.OUT_OF_SLOTS),
    (LinkDBusError("org.bluez.Error.AuthenticationFailed", ""), FailureClass.AUTHENTICATION),
    (LinkDBusError("org.bluez.Error.AuthenticationRejected", ""), FailureClass.AUTHENTICATION),
    (AttRefused(0x05, "read def3"), FailureClass.AUTHENTICATION),
    # BlueZ's words to its client for ATT 0x05, 0x0C and 0x0F, and for 0x08 (gatt-client.c).
    (LinkDBusError("org.bluez.Error.NotPermitted", "Not paired"), FailureClass.AUTHENTICATION),
    (LinkDBusError("org.bluez.Error.NotAuthorized", "Operation Not Authorized"),
     FailureClass.AUTHENTICATION),
    (LinkDBusError("org.bluez.Error.NotPermitted", "Read not permitted"),
     FailureClass.GATT_MISMATCH),
    (AttRefused(0x0F, "read def3"), FailureClass.AUTHENTICATION),
    (LinkDBusError("org.freedesktop.DBus.Error.ServiceUnknown", "org.bluez"),
     FailureClass.DBUS),
    (LinkDBusError("org.freedesktop.DBus.Error.NoReply", ""), FailureClass.TIMEOUT),
    (LinkDBusError("org.bluez.Error.Failed", "Software caused connection abort"),
     FailureClass.DBUS),
    (TransportTimeout("read: timed out"), FailureClass.TIMEOUT),
    (TimeoutError(), FailureClass.TIMEOUT),
    (LinkLost("disconnected"), FailureClass.LINK_LOST),
    (LinkDBusError("org.bluez.Error.NotConnected", "Not Connected"), FailureClass.LINK_LOST),
    (AttRefused(0x10, "write"), FailureClass.DEVICE_BUSY),
    (AttRefused(0x13, "write"), FailureClass.GATT_MISMATCH),
    (CharacteristicMissing("read: characteristic not found"), FailureClass.GATT_MISMATCH),
    (DecodeError("Bulk Sync: expected >= 60 bytes"), FailureClass.GATT_MISMATCH),
    (TransportError("connect: Not connected"), FailureClass.LINK_LOST),
    (RegistryError("database or disk is full"), FailureClass.STORE),
    (OutboxError("database is locked"), FailureClass.STORE),
    (TypeError("'NoneType' object is not subscriptable"), FailureClass.PROGRAMMING),
    (KeyError("x"), FailureClass.PROGRAMMING),
])
def test_each_failure_is_classified_once(exc: BaseException, kind: FailureClass) -> None:
    failure = classify(exc)
    assert failure.kind is kind
    assert failure.policy is POLICIES[kind]


def test_programming_and_authentication_errors_are_never_retried() -> None:
    assert not POLICIES[FailureClass.PROGRAMMING].retry
    assert not POLICIES[FailureClass.AUTHENTICATION].retry
    assert all(p.retry for k, p in POLICIES.items()
               if k not in (FailureClass.PROGRAMMING, FailureClass.AUTHENTICATION))
    assert set(POLICIES) == set(FailureClass)


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    rng = random.Random(7)
    policy = RetryPolicy(1.0, 30.0)
    delays = [policy.delay(n, rng) for n in range(1, 10)]
    assert 0.8 <= delays[0] <= 1.2
    assert all(d <= 30.0 * 1.2 for d in delays)
    assert delays[-1] >= 30.0 * 0.8


def test_no_radio_hearing_a_controller_is_not_found_never_a_bug() -> None:
    failure = classify(NoPath("C0:FF:EE:00:00:01: not_heard"))
    assert failure.kind is FailureClass.NOT_FOUND and failure.policy.retry

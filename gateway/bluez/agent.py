"""The gateway's BlueZ pairing agent (org.bluez.Agent1), registered only while a pairing
window is open so nothing can pair with the hub behind the owner's back.

Just Works controllers (the shipped firmware, device-ble.md 3.1) never call the agent for a
secret; firmware that asks for a passkey gets the one given to ``awgw pair --passkey``.
Requests for any other device, or after the window closed, are rejected.
"""
# dbus-fast reads the annotations at class creation: no ``from __future__ import annotations``.

import time
from dataclasses import dataclass

import structlog
from dbus_fast import DBusError
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, method

log = structlog.get_logger(__name__)

AGENT_PATH = "/org/autowatering/agent"
REJECTED = "org.bluez.Error.Rejected"
CANCELED = "org.bluez.Error.Canceled"


@dataclass
class PairingWindow:
    device_path: str
    passkey: int | None
    closes_at: float

    def open_for(self, device: str) -> bool:
        return device == self.device_path and time.monotonic() < self.closes_at


def device_path(adapter: str, address: str) -> str:
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


class PairingAgent(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.bluez.Agent1")
        self.window: PairingWindow | None = None
        self.requests: list[tuple[str, str]] = []

    def capability(self) -> str:
        """What BlueZ is told: a keyboard only when a passkey was provided, else Just Works."""
        if self.window is not None and self.window.passkey is not None:
            return "KeyboardOnly"
        return "NoInputNoOutput"

    def _check(self, request: str, device: str) -> PairingWindow:
        self.requests.append((request, device))
        window = self.window
        if window is None or not window.open_for(device):
            log.warning("pairing_request_rejected", request=request, device=device)
            raise DBusError(REJECTED, "no pairing window is open for this device")
        return window

    # The decisions, as plain methods (dbus-fast's @method wrappers do not return values to a
    # Python caller, so tests exercise these).

    def passkey_for(self, device: str) -> int:
        window = self._check("passkey", device)
        if window.passkey is None:
            raise DBusError(REJECTED, "the controller asks for a passkey: "
                                      "run awgw pair ADDRESS --passkey NNNNNN")
        log.info("pairing_passkey_supplied", device=device, passkey=window.passkey)
        return window.passkey

    def confirm(self, device: str, passkey: int) -> None:
        window = self._check("confirmation", device)
        if window.passkey is not None and window.passkey != passkey:
            raise DBusError(REJECTED, "numeric comparison does not match the given passkey")

    @method()
    def Release(self) -> None:
        self.window = None

    @method()
    def RequestPinCode(self, device: DBusObjectPath) -> DBusStr:
        window = self._check("pin_code", device)
        if window.passkey is None:
            raise DBusError(REJECTED, "no PIN was given for this pairing")
        return f"{window.passkey:06d}"

    @method()
    def DisplayPinCode(self, device: DBusObjectPath, pincode: DBusStr) -> None:
        self._check("display_pin_code", device)

    @method()
    def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        return self.passkey_for(device)

    @method()
    def DisplayPasskey(self, device: DBusObjectPath, passkey: DBusUInt32,
                       entered: DBusUInt16) -> None:
        self._check("display_passkey", device)

    @method()
    def RequestConfirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> None:
        self.confirm(device, passkey)

    @method()
    def RequestAuthorization(self, device: DBusObjectPath) -> None:
        self._check("authorization", device)

    @method()
    def AuthorizeService(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        self._check("authorize_service", device)

    @method()
    def Cancel(self) -> None:
        log.info("pairing_cancelled_by_bluez")

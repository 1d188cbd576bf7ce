"""The firmware_bridge error tree: protocol and transport errors of the controller's language.

    BridgeError
    |-- DecodeError            bytes that do not fit the documented layout
    |-- EncodeError            a value the wire format cannot carry
    |-- AttRefused             the device answered with an ATT error (a value: ``code``)
    |-- CharacteristicMissing  not exposed (older firmware, or a stale GATT cache)
    `-- TransportError         the byte pipe failed
        |-- TransportTimeout   no answer within the named timeout
        |-- PeerNotFound       the adapter does not know the device
        |-- LinkLost           the connection went away mid-operation
        `-- LinkDBusError      BlueZ refused (``name`` kept for classification)

SMP adds two in ``smp.channel``: ``SmpProtocolError`` (a DecodeError: a reply that does not
fit) and ``DeviceRejected`` (a BridgeError: the device's own rc, a value). The gateway
classifies all of these once (gateway/link/failures.py)."""


class BridgeError(Exception):
    """Root of firmware_bridge's errors."""


class DecodeError(BridgeError):
    """Bytes from the device (or a file) do not fit the documented layout."""


class EncodeError(BridgeError):
    """A value cannot be encoded: it is outside what the wire format allows."""


class TransportError(BridgeError):
    """The byte pipe to the device failed (connect, send, receive)."""


class TransportTimeout(TransportError):
    """No answer came within the named timeout."""


class AttRefused(BridgeError):
    """The device answered a GATT request with an ATT error (device-ble.md 4.1)."""

    def __init__(self, code: int, operation: str) -> None:
        super().__init__(f"{operation}: ATT error 0x{code:02x}")
        self.code = code
        self.operation = operation


class PeerNotFound(TransportError):
    """The adapter does not know the device (not advertising, or never seen)."""


class LinkLost(TransportError):
    """The connection went away while an operation was in flight."""


class LinkDBusError(TransportError):
    """BlueZ refused an operation; ``name`` is the D-Bus error name, kept for classification."""

    def __init__(self, name: str, details: str) -> None:
        super().__init__(f"{name}: {details}" if details else name)
        self.name = name
        self.details = details


class CharacteristicMissing(BridgeError):
    """The controller does not expose a characteristic (older firmware, or a GATT cache gone
    stale after a firmware change)."""

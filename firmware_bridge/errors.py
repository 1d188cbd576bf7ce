"""The firmware_bridge error tree: protocol and transport errors of the controller's language."""


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

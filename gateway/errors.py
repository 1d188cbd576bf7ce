"""The gateway package's error tree: every error the daemon raises derives from GatewayError."""


class GatewayError(Exception):
    """Root of the gateway's errors."""


class ConfigError(GatewayError):
    """Configuration is missing or invalid."""


class StoreError(GatewayError):
    """A store in the state directory (disk full, locked, damaged): transient for whoever met it,
    retried with backoff, never a programming error."""


class RegistryError(StoreError):
    """The controller registry (SQLite) could not be read or written."""


class UnknownController(GatewayError):
    """The address is not a paired controller."""


class ControllerBusy(GatewayError):
    """The controller is busy with something that excludes the request (a firmware update)."""


class PairingError(GatewayError):
    """Pairing failed or was refused (window closed, wrong passkey, bond slots full)."""


class ControlError(GatewayError):
    """The daemon's control socket failed or answered with an error."""


class ControlBusy(ControlError):
    """The daemon serves as many control clients as it takes at once: try again shortly."""


class ControlRefused(ControlError):
    """The op needs root or the service user; the socket's group is not enough."""


class CommandFailed(GatewayError):
    """The controller refused or never confirmed a command."""


class OutboxError(StoreError):
    """The outbox (SQLite in the state directory) could not be opened, read or written."""


class CloudLinkError(GatewayError):
    """The gateway's cloud identity or link (gateway id, refresh token) is unusable."""


class CloudFailed(GatewayError):
    """A cloud call failed or was refused (the cloud_client error is its __cause__)."""

"""The gateway package's error tree: every error the daemon raises derives from GatewayError."""


class GatewayError(Exception):
    """Root of the gateway's errors."""


class ConfigError(GatewayError):
    """Configuration is missing or invalid."""

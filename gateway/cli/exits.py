"""Exit codes a script can act on (README "The daemon and the CLI"). 2 is argparse's usage
error; 8-10 belong to `awgw ota` and `awgw image inspect`."""

from __future__ import annotations

from gateway.errors import (
    CommandFailed,
    ConfigError,
    ControllerBusy,
    GatewayError,
    PairingError,
    UnknownController,
)

FAILURE = 1
USAGE = 2
ERRORS: dict[type[GatewayError], int] = {
    UnknownController: 3,
    ControllerBusy: 4,
    CommandFailed: 5,
    PairingError: 6,
    ConfigError: 7,
}
COMMAND_REFUSED = ERRORS[CommandFailed]
OTA_REVERTED = 8
OTA_FAILED = 9
BAD_IMAGE = 10


def exit_code(exc: GatewayError) -> int:
    for cls, code in ERRORS.items():
        if isinstance(exc, cls):
            return code
    return FAILURE

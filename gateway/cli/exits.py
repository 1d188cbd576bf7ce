"""Exit codes a script can act on (README "The daemon and the CLI"). 2 is argparse's usage
error; 8-10 belong to `awgw ota` and `awgw image inspect`; 11 (not linked, link again) and 12
(the cloud failed or refused) to the cloud commands; 13 is `awgw doctor` finding a problem."""

from __future__ import annotations

from gateway.errors import (
    CloudFailed,
    CloudLinkError,
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
    CloudLinkError: 11,
    CloudFailed: 12,
}
COMMAND_REFUSED = ERRORS[CommandFailed]
OTA_REVERTED = 8
OTA_FAILED = 9
BAD_IMAGE = 10
# `awgw doctor` found a warning or an error (each with its remedy).
DOCTOR_PROBLEMS = 13


def exit_code(exc: GatewayError) -> int:
    for cls, code in ERRORS.items():
        if isinstance(exc, cls):
            return code
    return FAILURE

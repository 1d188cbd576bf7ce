"""`awgw image inspect` and `awgw ota`: their arguments. What they do is in ``cli/firmware.py``,
imported only when one of them runs (the MCUboot and SMP code is heavy to import)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from firmware_bridge.ota.outcome import ConfirmPolicy

COMMANDS = ("image", "ota")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    image = sub.add_parser("image", help="MCUboot image tools")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    inspect = image_sub.add_parser("inspect", parents=[common], help="parse and check an image")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--key", type=Path, default=None, help="public key PEM to verify with")
    inspect.add_argument("--slot-size", type=int, default=None,
                         help="usable bytes of the target slot")
    inspect.add_argument("--json", action="store_true")

    ota = sub.add_parser("ota", parents=[common], help="update a controller's firmware")
    ota.add_argument("target", nargs="+", metavar="ADDRESS FILE | FILE")
    how = ota.add_mutually_exclusive_group()
    how.add_argument("--serial", metavar="URL", help="SMP over serial, e.g. socket://host:port")
    how.add_argument("--udp", metavar="HOST[:PORT]", help="SMP over UDP")
    ota.add_argument("--window", type=int, default=None,
                     help="requests in flight (default: the device's buf_count)")
    ota.add_argument("--confirm", choices=[p.value for p in ConfirmPolicy],
                     default=ConfirmPolicy.SELF_THEN_EXPLICIT.value)
    ota.add_argument("--pre-erase", action="store_true",
                     help="erase slot 1 before the transfer (new uploads only)")
    ota.add_argument("--slot-limit", type=int, default=None, help="refuse larger images")
    ota.add_argument("--json", action="store_true")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command != "ota":
        return
    wants = 1 if (args.serial or args.udp) else 2
    if len(args.target) != wants:
        parser.error("ota takes ADDRESS FILE over BLE, or FILE with --serial/--udp")
    if args.window is not None and not 1 <= args.window <= 64:
        parser.error("--window must be 1..64")
    # The daemon reads the file from its own working directory: name it absolutely.
    args.target[-1] = str(Path(args.target[-1]).resolve())

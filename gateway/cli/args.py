"""Argument types and options shared by the command families."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from firmware_bridge.gatt.limits import CHANNELS, NO_CHANNEL


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    noun = "whole number" if kind is int else "number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be positive")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = positive(int)
positive_float = positive(float)


def passkey(text: str) -> int:
    if len(text) != 6 or not text.isdigit():
        raise argparse.ArgumentTypeError(f"passkey {text!r} is not 6 digits")
    return int(text)


def channel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"channel {text!r} is not a number") from None
    if not (0 <= value < CHANNELS or value == NO_CHANNEL):
        raise argparse.ArgumentTypeError(
            f"channel {value} is out of range (0..{CHANNELS - 1}, {NO_CHANNEL} master)")
    return value


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help="config file (default: $AWGW_CONFIG or /etc/awgw/config.toml)")
    return common

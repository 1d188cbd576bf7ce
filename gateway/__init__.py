"""The AutoWatering gateway: the fleet of controllers and its policy."""

from __future__ import annotations

from functools import cache


@cache
def _version() -> str:
    # importlib.metadata costs ~25 ms to import (it parses e-mail headers): only the daemon
    # and `awgw --version` need the version, never a CLI command's start.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autowatering-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

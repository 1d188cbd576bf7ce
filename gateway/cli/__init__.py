"""``awgw``: the gateway's command line, one module per command family."""

from gateway.cli.main import main

__all__ = ["main"]

"""``awgw``: the gateway's command line, one module per command family."""

import os

# pydantic looks for plugins among the entry points of every installed distribution the first
# time it builds a model (~20 ms on this machine, several times that on a Pi's SD card); the
# gateway uses none, and `awgw status` should answer at once. An operator who adds one can
# still name it here through the environment.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from gateway.cli.main import main  # after the environment it depends on

__all__ = ["main"]

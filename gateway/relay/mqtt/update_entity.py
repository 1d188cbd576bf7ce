"""Home Assistant's update entity, as the relay offers it: firmware offered by the cloud's
release check or staged on the hub, and the cloud's way to install an offer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

# A release found by the cloud's check, or an image a person staged on the hub.
OfferSource = Literal["cloud", "staged"]


class InstallOutcome(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def detail(self) -> Any: ...


CloudInstall = Callable[[str, Callable[[int, str], None]], Awaitable[InstallOutcome]]


@dataclass
class Offer:
    """Firmware the update entity offers: a release from the cloud check, or an image staged
    on the hub (``<state_dir>/firmware/staged/<node>.bin``)."""

    version: str
    source: OfferSource
    file: Path | None = None
    stamp: float = 0.0  # the staged file's mtime

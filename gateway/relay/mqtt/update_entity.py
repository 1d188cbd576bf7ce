"""Home Assistant's update entity, as the relay offers it: firmware offered by the cloud's
release check (through gateway.relay.offers) or staged on the hub."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# A release found by the cloud's check, or an image a person staged on the hub.
OfferSource = Literal["cloud", "staged"]


@dataclass
class Offer:
    """Firmware the update entity offers: a release from the cloud check, or an image staged
    on the hub (``<state_dir>/firmware/staged/<node>.bin``)."""

    version: str
    source: OfferSource
    file: Path | None = None
    stamp: float = 0.0  # the staged file's mtime

"""The cloud's firmware offers between the release check that finds them and whoever shows and
installs them (Home Assistant's update entity over MQTT).

Both sides are given the one board by the composition root, so neither needs the other: the
release check posts each offer and serves the installer; the update entity listens and asks
the board to install."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class InstallOutcome(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def detail(self) -> Any: ...


# (address, progress(percent, stage)) -> what came of it.
CloudInstall = Callable[[str, Callable[[int, str], None]], Awaitable[InstallOutcome]]
# (address, serial, version): a newer release is offered for that controller.
OfferListener = Callable[[str, str | None, str], None]


class OfferBoard:
    def __init__(self) -> None:
        self._listeners: list[OfferListener] = []
        self._install: CloudInstall | None = None

    def listen(self, listener: OfferListener) -> None:
        self._listeners.append(listener)

    def serve(self, install: CloudInstall) -> None:
        self._install = install

    def offered(self, address: str, serial: str | None, version: str) -> None:
        for listener in self._listeners:
            listener(address, serial, version)

    @property
    def installer(self) -> CloudInstall | None:
        """How to install an offer; None while nothing serves it (cloud updates are off)."""
        return self._install

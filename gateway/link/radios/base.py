"""What every radio is to the rest of the gateway: a name, a kind, slots, what it hears, and a
connect through it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.smp.ble import BleSmpTransport
from gateway.errors import GatewayError
from gateway.link.paths import Sighting
from gateway.link.scheduler import SlotScheduler
from gateway.ops.health import RadioKind

# ESP-IDF's Bluedroid holds at most 9 LE links (CONFIG_BT_ACL_CONNECTIONS): a proxy reporting
# more, or more free than its limit, is not a real proxy's.
MAX_PROXY_SLOTS = 9


class RadioRefused(GatewayError):
    """A radio that cannot be used as configured (wrong key, unreachable, impossible slot
    counts, missing adapter): the message says why, ``remedy`` what a person can do."""

    def __init__(self, message: str, remedy: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.remedy = remedy
        # Out of reach (power, Wi-Fi) rather than refused as configured: what a proxy that
        # was up goes through in every power cut, not an error of the configuration.
        self.transient = transient


class NoPath(GatewayError):
    """No radio can serve the controller now (none hears it, or its pinned radio cannot):
    classified as not_found, so its supervisor backs off until some radio hears it."""


@dataclass(frozen=True)
class RadioReport:
    """A radio as `awgw status`, the metrics and Home Assistant show it."""

    name: str
    kind: RadioKind
    up: bool
    reason: str | None  # why it is down, with the remedy
    slots_used: int
    slots_limit: int
    heard: int  # paired controllers it heard within HEARD_WITHIN_S
    detail: Mapping[str, str]  # e.g. a proxy's host, API version, firmware


class Radio(Protocol):
    name: str
    kind: RadioKind
    scheduler: SlotScheduler

    @property
    def up(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...

    def heard(self, address: str) -> Sighting | None: ...

    async def connect(self, address: str, timeout_s: float,
                      on_disconnect: Callable[[], None]) -> GattLink: ...

    def smp_transport(self, address: str) -> BleSmpTransport:
        """An unconnected SMP transport to ``address`` through this radio (firmware updates)."""
        ...

    async def refresh_services(self, address: str) -> bool:
        """Forget the services cached for ``address``; False if this radio cannot (BlueZ:
        its caller re-pairs instead)."""
        ...

    async def forget_bond(self, address: str) -> bool:
        """Have the radio's own bond with ``address`` forgotten, so its next connect pairs
        afresh; False if the bond is the hub's (BlueZ: its caller removes it and re-pairs)."""
        ...

    async def release_orphan(self, address: str) -> bool:
        """Release a link to ``address`` held by nobody (an earlier run's); True if one was."""
        ...

    async def run(self) -> None: ...

    def detail(self) -> Mapping[str, str]: ...

"""The daemon's side of the systemd contract after READY=1: WATCHDOG=1 while the hub makes
progress (``HubHealth.progressing``), STATUS= whenever the one-line summary changes."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from gateway.clock import Clock
from gateway.daemon import systemd
from gateway.daemon.health import PROBE_PERIOD_S, HubHealth
from gateway.ops.health import HubStatus

log = structlog.get_logger(__name__)


async def report(health: HubHealth, status: Callable[[], HubStatus],
                 watchdog_s: float | None, clock: Clock) -> None:
    """Probe, then ping or withhold, then refresh STATUS=, once per period: the probe period,
    or the ping interval (half of WatchdogSec=) when that is shorter."""
    period = PROBE_PERIOD_S if watchdog_s is None else min(PROBE_PERIOD_S, watchdog_s)
    withheld: str | None = None
    last_line = ""
    while True:
        await health.probe_once()
        ok, reason = health.progressing()
        if watchdog_s is not None:
            if ok:
                systemd.notify("WATCHDOG=1")
                if withheld is not None:
                    log.info("watchdog_resumed", adapter=health.adapter)
            elif reason != withheld:
                log.error("watchdog_withheld", adapter=health.adapter, reason=reason,
                          remedy="systemd restarts the service after WatchdogSec= without a "
                                 "ping; if it keeps happening run `awgw doctor`")
            withheld = None if ok else reason
        line = status().summary()
        if line != last_line:
            systemd.notify(f"STATUS={line}")
            last_line = line
        await clock.sleep(period)

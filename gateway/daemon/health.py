"""The hub's health as systemd, `awgw status` and the metrics see it.

The watchdog contract (systemd/awgw.service, WatchdogSec=): the daemon pings only while its
event loop turns AND its radio side makes progress. The radio side is judged by what the daemon
can check without disturbing the links:
- BlueZ answers over D-Bus and the configured adapter exists and is powered (a crashed
  controller firmware on the Pi's combined chip makes hci0 vanish; a wedged one stays down);
- no supervisor sits in CONNECTING longer than its own connect timeout plus a margin (the
  connect's own timeout should have ended it: something below it is stuck).
A short dip (our own recovery ladder powering the adapter off for POWER_SETTLE_S) is not a
wedge: the radio must be bad for RADIO_GRACE_S in a row before the pings stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gateway.bluez.probe import AdapterProbe
from gateway.link.manager import ConnectionManager
from gateway.link.scanner import POWER_SETTLE_S
from gateway.ops.health import RadioHealth
from gateway.ops.models import LinkState

log = structlog.get_logger(__name__)

# One D-Bus round trip to bluetoothd takes milliseconds; a bluetoothd that takes this long is
# itself the problem.
PROBE_TIMEOUT_S = 5.0
# How often the radio is probed at most; with a watchdog the probe runs at least once per ping.
PROBE_PERIOD_S = 10.0
# Twice our own ladder's power cycle: a power cycle we did ourselves never reads as a wedge.
RADIO_GRACE_S = 2 * POWER_SETTLE_S
# A connect has its own timeout (link.connect_timeout_s); past it plus this, the supervisor is
# stuck below the timeout (BlueZ never answered the cancel).
STUCK_MARGIN_S = 30.0
# The event-loop lag sampler's tick; the lag is how late the tick wakes up.
LAG_TICK_S = 0.5


class HubHealth:
    def __init__(self, manager: ConnectionManager, probe: AdapterProbe, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self.probe = probe
        self.clock = clock
        self.started_at = clock()
        self.loop_lag_s = 0.0
        self._radio_problem: str | None = None
        self._bad_since: float | None = None
        self._probed = asyncio.Event()

    @property
    def adapter(self) -> str:
        return self.probe.adapter

    async def probe_once(self) -> None:
        problem = await self.probe.check()
        now = self.clock()
        if problem is None:
            self._bad_since = None
        elif self._bad_since is None:
            self._bad_since = now
        if problem != self._radio_problem:
            if problem is None:
                log.info("radio_recovered", adapter=self.adapter)
            else:
                log.warning("radio_problem", adapter=self.adapter, reason=problem,
                            remedy="sudo systemctl restart bluetooth; check `rfkill list` and "
                                   "`awgw doctor`")
        self._radio_problem = problem
        self._probed.set()

    async def run(self) -> None:
        """Sample the event loop's lag; the probes are the watchdog's (service/watchdog.py),
        which runs them at its own period."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            self.loop_lag_s = max(0.0, loop.time() - before - LAG_TICK_S)

    def stuck(self) -> list[str]:
        limit = self.manager.settings.connect_timeout_s + STUCK_MARGIN_S
        stuck = []
        for address, supervisor in self.manager.supervisors.items():
            since = supervisor.since
            if supervisor.state is LinkState.CONNECTING and since is not None \
                    and supervisor.clock.now() - since > limit:
                stuck.append(address)
        return sorted(stuck)

    def radio(self) -> RadioHealth:
        reason = self._radio_problem
        stuck = self.stuck()
        if reason is None and stuck:
            reason = f"supervisor stuck connecting: {', '.join(stuck)}"
        return RadioHealth(adapter=self.adapter, ok=reason is None,
                           scanning=self.manager.scanner.scanning, reason=reason)

    def progressing(self) -> tuple[bool, str | None]:
        """May the watchdog ping? (the loop turns, or this would not run)."""
        stuck = self.stuck()
        if stuck:
            return False, f"supervisor stuck connecting: {', '.join(stuck)}"
        if self._bad_since is not None and self.clock() - self._bad_since >= RADIO_GRACE_S:
            return False, self._radio_problem
        return True, None

    def uptime_s(self) -> float:
        return self.clock() - self.started_at

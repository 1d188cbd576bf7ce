"""What the composition root built: one ``Hub`` holding every part of the daemon, and the
supervision tree that runs them.

Every long-running part runs under a named guard (gateway/supervise.py): the connection manager
(and under it each controller's supervisor), the cloud relay, the MQTT relay, cloud updates, the
state feed, the hub's health sampler, the control server, the metrics and the systemd watchdog.
A part's crash costs that part a restart with backoff; the daemon itself ends only on
SIGTERM/SIGINT, on a configuration error before READY, or by the watchdog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.control.server import ControlServer
from gateway.daemon import systemd, watchdog
from gateway.daemon.health import HubHealth
from gateway.daemon.metrics import HubMetrics
from gateway.daemon.operations import ControllerOperations, WaysOut
from gateway.daemon.status import hub_status
from gateway.link.manager import ConnectionManager
from gateway.ops.health import HubStatus
from gateway.store.registry_cache import CachedRegistry
from gateway.supervise import Supervision

log = structlog.get_logger(__name__)

Run = Callable[[], Awaitable[None]]

# BlueZ starts with the hub; until it answers there is nothing to supervise. systemd's
# TimeoutStartSec= (systemd/awgw.service) bounds the wait; this is how often we ask.
BLUEZ_RETRY_S = 2.0


@dataclass
class Hub:
    config: GatewayConfig
    registry: CachedRegistry
    manager: ConnectionManager
    controllers: ControllerOperations
    ways_out: WaysOut
    supervision: Supervision
    health: HubHealth
    metrics: HubMetrics
    server: ControlServer
    clock: Clock
    # What carries state out of the house, by part name (relays, cloud updates, the feed).
    relays: dict[str, Run] = field(default_factory=dict)
    # Set once READY=1 was sent.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Where the metrics listen, once they do.
    metrics_url: str | None = None

    def status(self) -> HubStatus:
        """The one account of the hub's health (`awgw status`, STATUS=, the metrics)."""
        return hub_status(self)

    async def run(self) -> None:
        """Every part in one TaskGroup, each under its guard; READY=1 once BlueZ answers, the
        supervisors exist and the control socket listens. Returns only when cancelled."""
        guard = self.supervision.guard
        async with asyncio.TaskGroup() as tasks:

            def part(name: str, run: Run) -> None:
                tasks.create_task(guard(name, run), name=name)

            part("registry writer", lambda: self.registry.write_behind(self.clock))
            part("connection manager", self.manager.run)
            for name, run in self.relays.items():
                part(name, run)
            part("hub health", self.health.run)
            await self._bluez_answers()
            await self.manager.ready.wait()
            part("control server", self.server.run)
            await self.server.listening.wait()
            if self.config.metrics_port:
                self.metrics_url = await self.metrics.serve(self.config.metrics_port)
            if self.metrics_url is not None:
                part("metrics", self.metrics.run)
            self.ready.set()
            systemd.notify("READY=1")
            log.info("daemon_ready", controllers=len(self.manager.supervisors),
                     metrics=self.metrics_url)
            part("systemd watchdog", lambda: watchdog.report(
                self.health, self.status, systemd.watchdog_interval_s(),
                self.clock))

    async def _bluez_answers(self) -> None:
        """Until bluetoothd answers at all; what it says of the adapter is the watchdog's and
        `awgw doctor`'s business."""
        waited = False
        while True:
            await self.health.probe_once()
            if self.health.probe.bluez_answered:
                return
            if not waited:
                log.warning("waiting_for_bluez", reason=self.health.radio().reason,
                            remedy="sudo systemctl start bluetooth")
                waited = True
            await self.clock.sleep(BLUEZ_RETRY_S)

    async def close(self) -> None:
        self.registry.flush()
        await self.metrics.close()
        self.health.probe.close()

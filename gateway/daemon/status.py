"""One ``HubStatus`` from the daemon's parts: what `awgw status`, systemd's STATUS= line and the
metrics all report, so they never disagree."""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.ops.health import HubStatus, RadioHealth, RelayHealth, RelayState, UpdateInProgress
from gateway.ops.models import LinkState

if TYPE_CHECKING:
    from gateway.daemon.operations import DaemonOperations

DISABLED = RelayHealth(enabled=False, state=RelayState.DISABLED)


def hub_status(ops: DaemonOperations) -> HubStatus:
    manager, health = ops.manager, ops.health
    store = manager.store
    supervisors = manager.supervisors
    states = collections.Counter(s.state.value for s in supervisors.values())
    fresh = sum(1 for address in supervisors if store.fresh(address))
    radio = health.radio() if health is not None else RadioHealth(
        adapter=ops.config.link.adapter, ok=True, scanning=manager.scanner.scanning, reason=None)
    updates = [UpdateInProgress(address=a, phase=p.phase.value, offset=p.offset, total=p.total,
                                rate_bytes_per_s=round(p.rate_bytes_per_s, 1))
               for a, p in sorted(ops.updates.items())]
    return HubStatus(
        version=__version__, uptime_s=round(health.uptime_s(), 1) if health else 0.0,
        ready=ops.ready, radio=radio,
        links=states.get(LinkState.CONNECTED.value, 0) + states.get(LinkState.SYNCING.value, 0),
        max_links=ops.config.link.max_links, controllers=len(supervisors), fresh=fresh,
        stale=len(supervisors) - fresh, link_states=dict(sorted(states.items())),
        updates=updates, cloud=_cloud(ops), mqtt=_mqtt(ops),
        loop_lag_ms=round(1000 * health.loop_lag_s, 1) if health else 0.0,
        metrics_url=ops.metrics_url,
        parts=ops.supervision.parts() if ops.supervision is not None else [],
        tasks=len(asyncio.all_tasks()),
        threads=threading.active_count())


def _cloud(ops: DaemonOperations) -> RelayHealth:
    relay = ops.cloud
    if relay is None:
        return DISABLED
    stats = relay.outbox.stats()
    return RelayHealth(enabled=True, state=relay.state(), outbox_depth=stats.depth,
                       outbox_dropped=sum(stats.dropped.values()),
                       delivered=relay.counters.delivered,
                       lag_s=None if stats.oldest_age_s is None else round(stats.oldest_age_s, 1),
                       last_error=relay.counters.last_error)


def _mqtt(ops: DaemonOperations) -> RelayHealth:
    relay = ops.mqtt
    if relay is None:
        return DISABLED
    stats = relay.outbox.stats()
    return RelayHealth(enabled=True, state=relay.state(),
                       outbox_depth=stats.depth, outbox_dropped=sum(stats.dropped.values()),
                       delivered=relay.published_states,
                       lag_s=None if stats.oldest_age_s is None else round(stats.oldest_age_s, 1))

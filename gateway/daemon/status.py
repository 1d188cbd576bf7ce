"""One ``HubStatus`` from the daemon's parts: what `awgw status`, systemd's STATUS= line and the
metrics all report, so they never disagree."""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.errors import OutboxError
from gateway.ops.health import (
    HubStatus,
    RadioStatus,
    RelayHealth,
    RelayState,
    UpdateInProgress,
)
from gateway.ops.models import LinkState
from gateway.store.outbox import Outbox, OutboxWriter

if TYPE_CHECKING:
    from gateway.daemon.hub import Hub
    from gateway.relay.cloud import CloudRelay
    from gateway.relay.mqtt.relay import MqttRelay

DISABLED = RelayHealth(enabled=False, state=RelayState.DISABLED)


def hub_status(hub: Hub) -> HubStatus:
    manager, health, controllers = hub.manager, hub.health, hub.controllers
    store = manager.store
    supervisors = manager.supervisors
    states = collections.Counter(s.state.value for s in supervisors.values())
    fresh = sum(1 for address in supervisors if store.fresh(address))
    updates = [UpdateInProgress(address=a, phase=p.phase.value, offset=p.offset, total=p.total,
                                rate_bytes_per_s=round(p.rate_bytes_per_s, 1))
               for a, p in sorted(controllers.updates.items())]
    return HubStatus(
        version=__version__, uptime_s=round(health.uptime_s(), 1),
        ready=hub.ready.is_set(), radio=health.radio(), radios=radio_statuses(hub),
        links=states.get(LinkState.CONNECTED.value, 0) + states.get(LinkState.SYNCING.value, 0),
        max_links=hub.config.link.max_links, controllers=len(supervisors), fresh=fresh,
        stale=len(supervisors) - fresh, link_states=dict(sorted(states.items())),
        updates=updates, cloud=_cloud(hub.ways_out.cloud), mqtt=_mqtt(hub.ways_out.mqtt),
        loop_lag_ms=round(1000 * health.loop_lag_s, 1), metrics_url=hub.metrics_url,
        parts=hub.supervision.parts(), tasks=len(asyncio.all_tasks()),
        threads=threading.active_count())


def radio_statuses(hub: Hub) -> list[RadioStatus]:
    radios = hub.manager.radios
    addresses = list(hub.manager.supervisors)
    served = collections.Counter(radios.serving(a) for a in addresses)
    return [RadioStatus(name=r.name, kind=r.kind, up=r.up, reason=r.reason,
                        slots_used=r.slots_used, slots_limit=r.slots_limit, heard=r.heard,
                        served=served.get(r.name, 0), detail=dict(r.detail))
            for r in radios.reports(addresses)]


def _cloud(relay: CloudRelay | None) -> RelayHealth:
    if relay is None:
        return DISABLED
    return _relay(relay.state(), relay.writer, relay.counters.delivered,
                  relay.counters.last_error)


def _mqtt(relay: MqttRelay | None) -> RelayHealth:
    if relay is None:
        return DISABLED
    health = _relay(relay.state(), relay.writer, relay.published_states, None)
    return health.model_copy(update={"identity_clash": relay.identity_clash()})


def _relay(state: RelayState, writer: OutboxWriter, delivered: int,
           last_error: str | None) -> RelayHealth:
    outbox = writer.outbox
    # Items waiting in memory for a commit that fails (a full card) count as waiting, and
    # those the memory bound dropped as dropped.
    pending, lost = writer.backlog, writer.dropped_in_memory
    try:
        stats = outbox.stats()
    except OutboxError as exc:  # `awgw status` answers whatever the disk does
        return RelayHealth(enabled=True, state=state, delivered=delivered,
                           outbox_depth=pending or None, outbox_dropped=lost,
                           last_error=str(exc), outbox_quarantined=_aside(outbox))
    return RelayHealth(enabled=True, state=state, outbox_depth=stats.depth + pending,
                       outbox_dropped=sum(stats.dropped.values()) + lost, delivered=delivered,
                       lag_s=None if stats.oldest_age_s is None else round(stats.oldest_age_s, 1),
                       last_error=last_error, outbox_quarantined=stats.quarantined,
                       outbox_in_memory=stats.in_memory)


def _aside(outbox: Outbox) -> str | None:
    return None if outbox.quarantined is None else str(outbox.quarantined)


"""Prometheus metrics on a localhost port (config ``metrics_port``; 0 turns them off).

The families are built every METRICS_PERIOD_S from the same ``HubStatus`` `awgw status`
shows, and a scrape (served by the event loop, gateway/daemon/metrics_server.py) renders the
latest list."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.clock import Clock
from gateway.daemon.metrics_server import MetricsServer
from gateway.ops.health import HubStatus

if TYPE_CHECKING:
    from gateway.daemon.operations import ControllerOperations

log = structlog.get_logger(__name__)

# Prometheus scrapes every 15-60 s; a fresher view than 5 s buys nothing and costs a status.
METRICS_PERIOD_S = 5.0


class HubMetrics(Collector):
    def __init__(self, ops: ControllerOperations, status: Callable[[], HubStatus],
                 clock: Clock) -> None:
        self.ops = ops
        self.clock = clock
        self.status = status
        self.registry = CollectorRegistry(auto_describe=False)
        self._families: list[Metric] = []
        self.registry.register(self)
        self.server = MetricsServer(lambda: generate_latest(self.registry), CONTENT_TYPE_LATEST)

    def collect(self) -> Iterable[Metric]:
        return list(self._families)

    def describe(self) -> Iterable[Metric]:
        return []

    async def serve(self, port: int) -> str | None:
        return await self.server.start(port)

    async def close(self) -> None:
        await self.server.close()

    async def run(self) -> None:
        while True:
            self.update()
            await self.clock.sleep(METRICS_PERIOD_S)

    def update(self) -> None:
        self._families = self.families(self.status())

    def families(self, status: HubStatus) -> list[Metric]:
        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"awgw_{name}", text, value=value)

        out: list[Metric] = [
            gauge("ready", "1 once READY=1 was sent", float(status.ready)),
            gauge("radio_ok", "1 while BlueZ answers and the adapter is powered",
                  float(status.radio.ok)),
            gauge("links", "BLE links held", status.links),
            gauge("max_links", "BLE links the radio may hold", status.max_links),
            gauge("event_loop_lag_seconds", "how late the event loop's tick woke up",
                  status.loop_lag_ms / 1000),
            gauge("uptime_seconds", "seconds since the daemon started", status.uptime_s),
            gauge("ota_in_progress", "firmware updates running", len(status.updates)),
            gauge("asyncio_tasks", "the daemon's asyncio tasks", status.tasks),
        ]
        controllers = GaugeMetricFamily("awgw_controllers", "paired controllers by freshness",
                                        labels=["freshness"])
        controllers.add_metric(["fresh"], status.fresh)
        controllers.add_metric(["stale"], status.stale)
        states = GaugeMetricFamily("awgw_link_state", "controllers by link state",
                                   labels=["state"])
        for state, count in status.link_states.items():
            states.add_metric([state], count)
        connects = CounterMetricFamily("awgw_link_connects", "BLE connections made")
        failures = CounterMetricFamily("awgw_link_failures", "link failures by class",
                                       labels=["failure_class"])
        by_class: dict[str, int] = {}
        total = 0
        for supervisor in self.ops.manager.supervisors.values():
            total += supervisor.connects
            for kind, count in supervisor.failures.items():
                by_class[kind] = by_class.get(kind, 0) + count
        connects.add_metric([], total)
        for kind, count in sorted(by_class.items()):
            failures.add_metric([kind], count)
        out += [controllers, states, connects, failures]
        up = GaugeMetricFamily("awgw_relay_up", "1 while the relay delivers", labels=["relay"])
        lag = GaugeMetricFamily("awgw_relay_lag_seconds", "age of the oldest undelivered item",
                                labels=["relay"])
        depth = GaugeMetricFamily("awgw_outbox_depth", "items waiting to go out",
                                  labels=["relay"])
        dropped = CounterMetricFamily("awgw_outbox_dropped", "items dropped by the outbox bounds",
                                      labels=["relay"])
        delivered = CounterMetricFamily("awgw_relay_delivered", "items delivered",
                                        labels=["relay"])
        for name, relay in (("cloud", status.cloud), ("mqtt", status.mqtt)):
            if not relay.enabled:
                continue
            up.add_metric([name], float(relay.up))
            lag.add_metric([name], relay.lag_s or 0.0)
            depth.add_metric([name], relay.outbox_depth or 0)
            dropped.add_metric([name], relay.outbox_dropped)
            delivered.add_metric([name], relay.delivered)
        out += [up, lag, depth, dropped, delivered]
        ota_bytes = CounterMetricFamily("awgw_ota_bytes", "firmware bytes uploaded")
        ota_bytes.add_metric([], self.ops.ota_bytes)
        outcomes = CounterMetricFamily("awgw_ota_outcomes", "firmware updates by result",
                                       labels=["result"])
        for result, count in sorted(self.ops.ota_outcomes.items()):
            outcomes.add_metric([result], count)
        out += [ota_bytes, outcomes]
        part_up = GaugeMetricFamily("awgw_part_up", "1 while the daemon's part runs",
                                    labels=["part"])
        restarts = CounterMetricFamily("awgw_part_restarts",
                                       "restarts of the daemon's part after a crash",
                                       labels=["part"])
        for part in status.parts:
            part_up.add_metric([part.name], float(part.up))
            restarts.add_metric([part.name], part.restarts)
        out += [part_up, restarts]
        labels = ["radio", "kind"]
        radio_families = {
            "up": GaugeMetricFamily("awgw_radio_up", "1 while the radio can serve", labels=labels),
            "slots_used": GaugeMetricFamily("awgw_radio_slots_used", "links held through it",
                                            labels=labels),
            "slots_limit": GaugeMetricFamily("awgw_radio_slots_limit",
                                             "links the gateway may hold through it",
                                             labels=labels),
            "heard": GaugeMetricFamily("awgw_radio_heard",
                                       "paired controllers it heard in the last minute",
                                       labels=labels),
            "served": GaugeMetricFamily("awgw_radio_served",
                                        "paired controllers it served last", labels=labels)}
        for radio in status.radios:
            for field, family in radio_families.items():
                family.add_metric([radio.name, radio.kind.value], float(getattr(radio, field)))
        out += list(radio_families.values())
        return out

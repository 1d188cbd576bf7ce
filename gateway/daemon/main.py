"""`awgw daemon`: the long-running gateway, and its composition root. Builds the registry, the
connection manager, the operations, the relays and the control socket into one ``Hub`` whose
parts each run under a guard, with systemd readiness and structured shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import ssl
from dataclasses import dataclass

import structlog

from gateway import __version__
from gateway.bluez.probe import AdapterProbe
from gateway.clock import Clock, LoopClock
from gateway.config import GatewayConfig
from gateway.control.server import ControlServer
from gateway.daemon import systemd
from gateway.daemon.health import HubHealth
from gateway.daemon.hub import Hub, Run
from gateway.daemon.metrics import HubMetrics
from gateway.daemon.operations import (
    ControllerOperations,
    HubOperations,
    SupervisedHistory,
    WaysOut,
)
from gateway.link.decision import Action
from gateway.link.manager import ConnectionManager
from gateway.link.scanner import Scanner
from gateway.link.supervisor import Connector
from gateway.ops.health import HubStatus
from gateway.ops.models import Request, Result
from gateway.ops.protocol import ProgressFn, dispatch
from gateway.ota.jobs import CloudUpdates
from gateway.ota.service import read_public_key
from gateway.relay.account import CloudAccount
from gateway.relay.cloud import CloudRelay
from gateway.relay.feed import FanOut, StateFeed
from gateway.relay.mqtt.password import read_password
from gateway.relay.mqtt.relay import MqttRelay
from gateway.relay.mqtt.tls import open_broker, tls_context
from gateway.relay.mqtt.topics import SERIAL
from gateway.relay.offers import OfferBoard
from gateway.store.credentials import gateway_id
from gateway.store.outbox import open_outbox
from gateway.store.registry import Registry
from gateway.store.registry_cache import CachedRegistry
from gateway.supervise import DEFAULT_POLICY, RestartPolicy, Supervision

log = structlog.get_logger(__name__)


def _relays(config: GatewayConfig, registry: Registry, manager: ConnectionManager,
            operations: ControllerOperations, mqtt_password: str | None,
            mqtt_tls: ssl.SSLContext | None,
            supervision: Supervision, clock: Clock) -> tuple[dict[str, Run], WaysOut]:
    """What carries state out of the house, by task name: the cloud relay and cloud-driven
    updates ([cloud]), the MQTT relay ([mqtt]), and the state feed that serves them."""
    runs: dict[str, Run] = {}
    sinks: list[CloudRelay | MqttRelay] = []
    cloud: CloudRelay | None = None
    account: CloudAccount | None = None
    # The cloud's firmware offers, between the release check and the update entity.
    offers = OfferBoard()
    mqtt: MqttRelay | None = None
    if config.cloud.enabled:
        account = CloudAccount(config)

        def serials() -> list[str]:
            return [r.serial for r in registry.all() if r.serial and SERIAL.match(r.serial)]

        cloud = CloudRelay(config.cloud, account.gateway_id,
                           open_outbox(config.cloud_outbox_path, account.gateway_id),
                           account.client, account.auth, serials=serials,
                           token_stamp=account.store.stamp,
                           status_path=config.cloud_status_path, clock=clock)
        runs["cloud relay"] = cloud.run
        sinks.append(cloud)
    if config.mqtt.enabled:
        gid = gateway_id(config.cloud_dir)
        outbox = open_outbox(config.mqtt_outbox_path, gid)

        def gateway_state() -> dict[str, object]:
            return {"cloud_outbox_depth": cloud.outbox.stats().depth if cloud else None,
                    "controllers": len(manager.supervisors), "sw_version": __version__}

        def rssi_of(address: str) -> int | None:  # the best any radio hears
            return max(manager.radios.rssi_by_radio(address).values(), default=None)

        mqtt = MqttRelay(config.mqtt, gid, outbox, operations,
                         radio_ok=manager.scanner.healthy, rssi_of=rssi_of,
                         radio_of=manager.radios.serving,
                         gateway_state=gateway_state, password=mqtt_password, tls=mqtt_tls,
                         staged_dir=config.staged_firmware_dir,
                         supervision=supervision, clock=clock, offers=offers)
        runs["mqtt relay"] = mqtt.run
        sinks.append(mqtt)
    if cloud is not None and account is not None:
        relay = cloud
        updates = CloudUpdates(config, registry, account.client, account.gateway_id,
                               operations, FanOut(sinks), lambda: relay.mode,
                               supervision=supervision, clock=clock, offers=offers)
        runs["cloud updates"] = updates.run
    if sinks:
        history_s = config.cloud.history_period_s
        runs["state feed"] = StateFeed(manager.store, registry, sinks,
                                       SupervisedHistory(manager), history_s, clock=clock).run
    return runs, WaysOut(cloud=cloud, account=account, mqtt=mqtt)


@dataclass(frozen=True)
class RadioParts:
    """What the daemon reaches BlueZ through: tests give it fakes, the daemon BlueZ itself."""

    scanner: Scanner | None = None
    connector: Connector | None = None
    probe: AdapterProbe | None = None


def build_hub(config: GatewayConfig, *, radio: RadioParts | None = None,
              restart: RestartPolicy = DEFAULT_POLICY, clock: Clock | None = None) -> Hub:
    """The composition root: every store, relay and server the daemon runs, wired once.
    Raises GatewayError (exit 7 at the CLI) for a configuration that cannot run."""
    radio = radio or RadioParts()
    # Secrets first: a missing one stops the start before any store is opened.
    mqtt_password = read_password(config.mqtt) if config.mqtt.enabled else None
    mqtt_tls = tls_context(config.mqtt) if config.mqtt.enabled else None
    read_public_key(config.ota)  # a bad [ota] public_key stops the start here, exit 7
    if (exposure := open_broker(config.mqtt)) is not None:
        log.warning("mqtt_exposed", problem=exposure.problem, remedy=exposure.remedy)
    # The one clock every part waits on (tests pass a virtual one).
    clock = clock or LoopClock()
    supervision = Supervision(clock, restart)
    registry = CachedRegistry(config.registry_path)

    async def repair(address: str, action: Action) -> None:  # the supervisors' automatic reset
        await controllers.repair(address, action)

    manager = ConnectionManager(config, registry, connector=radio.connector,
                                scanner=radio.scanner, repairer=repair, supervision=supervision,
                                clock=clock)
    controllers = ControllerOperations(config, registry, manager)
    relays, ways_out = _relays(config, registry, manager, controllers, mqtt_password, mqtt_tls,
                               supervision, clock)
    health = HubHealth(manager, radio.probe or AdapterProbe(config.link.adapter))

    def status() -> HubStatus:  # the hub is built last: its status is read only once it runs
        return hub.status()

    metrics = HubMetrics(controllers, status, clock)
    operations = HubOperations(controllers, ways_out, status)

    async def handle(request: Request, progress: ProgressFn | None) -> Result:
        return await dispatch(operations, request, progress)

    hub = Hub(config=config, registry=registry, manager=manager, controllers=controllers,
              ways_out=ways_out, supervision=supervision, health=health, metrics=metrics,
              server=ControlServer(config.socket_path, handle), clock=clock, relays=relays)
    return hub


async def run_daemon(config: GatewayConfig, *, radio: RadioParts | None = None,
                     restart: RestartPolicy = DEFAULT_POLICY) -> None:
    """READY=1 once BlueZ answers, the config is valid (it was parsed before this), the stores
    are open and the control socket listens; STOPPING=1 as soon as SIGTERM arrives, then every
    task is cancelled so each persists its own work (outbox writers flush, an update's session
    stays on disk and a cloud job stays in progress, to resume at the next start)."""
    hub = build_hub(config, radio=radio, restart=restart)
    log.info("daemon_starting", state_dir=str(config.state_dir), adapter=config.link.adapter,
             max_links=config.link.max_links, policy=config.link.default_policy.value)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            systemd.notify("STOPPING=1")
            log.info("daemon_stopping")
        stopping = True
        if main is not None:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await hub.run()
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if not stopping:
            systemd.notify("STOPPING=1")  # stopping for another reason than a signal
        await hub.close()
        log.info("daemon_stopped")

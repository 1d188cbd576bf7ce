"""`awgw daemon`: the long-running gateway. Connection manager + control socket, with
systemd readiness, structured shutdown on SIGTERM, and no single controller able to stop it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import structlog

from firmware_bridge.link.outcome import CommandOutcome, OutcomeStatus
from firmware_bridge.link.session import ControllerSession
from firmware_bridge.ota.session_store import FileSessionStore
from firmware_bridge.ota.update import ConfirmPolicy, FirmwareUpdate, OtaSettings
from firmware_bridge.smp.ble import BleSmpTransport
from firmware_bridge.smp.transport import FrameTransport
from gateway import bluez, systemd
from gateway.config import GatewayConfig
from gateway.control import ControlRequest, ControlServer
from gateway.errors import ControlError, ControllerBusy
from gateway.link.manager import ConnectionManager
from gateway.link.scheduler import Priority
from gateway.ops.radio import (
    SCAN_TIMEOUT_S,
    CommandResult,
    DeviceEntry,
    ScanEntry,
    ValveAction,
    list_devices,
    pair_on_radio,
    read_image,
    result_of,
    unpair_on_radio,
    valve_command,
)
from gateway.store.registry import Registry, normalise_address

log = structlog.get_logger(__name__)


class DaemonOperations:
    """The CLI's operations, answered through the supervisors so the daemon stays the only
    owner of the radio."""

    def __init__(self, config: GatewayConfig, registry: Registry,
                 manager: ConnectionManager) -> None:
        self.config = config
        self.registry = registry
        self.manager = manager

    async def scan(self) -> list[ScanEntry]:
        paired = {r.address for r in self.registry.all()}
        if not self.manager.scanner.present():
            await asyncio.sleep(SCAN_TIMEOUT_S)
        return [ScanEntry(address=s.address, name=s.name, rssi=s.rssi,
                          paired=s.address in paired) for s in self.manager.scanner.present()]

    async def pair(self, address: str, passkey: int | None) -> DeviceEntry:
        address = normalise_address(address)
        scheduler = self.manager.scheduler
        async with scheduler.slot(address, Priority.URGENT, kept=False), \
                scheduler.connect_turn():
            entry = await pair_on_radio(self.config, self.registry, address, passkey)
        supervisor = self.manager.add(self.registry.get(address))
        supervisor.bond_reset()
        return entry

    async def repair(self, address: str) -> None:
        """The supervisor's one automatic attempt after an authentication failure: forget our
        half of the bond and pair again (Just Works)."""
        await bluez.remove_bond(self.config.link.adapter, address)
        self.manager.scanner.forget(address)
        scheduler = self.manager.scheduler
        async with scheduler.connect_turn():
            await pair_on_radio(self.config, self.registry, address, None)

    async def unpair(self, address: str) -> DeviceEntry:
        address = normalise_address(address)
        self.registry.get(address)
        await self.manager.remove(address)
        return await unpair_on_radio(self.config, self.registry, address)

    async def devices(self) -> list[DeviceEntry]:
        links = {a: s.state.value for a, s in self.manager.supervisors.items()}
        return await list_devices(self.config, self.registry, links)

    async def state(self, address: str) -> dict[str, Any]:
        address = normalise_address(address)
        record = self.registry.get(address)
        supervisor = self.manager.supervisor(address)
        if not self.manager.store.fresh(address):
            # Nothing fresh to show: ask for an urgent visit rather than print old values.
            await supervisor.submit("refresh", _refresh)
        document = self.manager.store.as_json(address, record.firmware_version)
        document["link_state"] = supervisor.state.value
        document["policy"] = supervisor.policy.value
        return document

    async def valve(self, address: str, channel: int, action: ValveAction,
                    minutes: int | None) -> CommandResult:
        address = normalise_address(address)
        self.registry.get(address)
        name, run = valve_command(channel, action, minutes)
        outcome = await self.manager.command(address, name, run)
        return result_of(address, name, outcome)

    async def ota(self, address: str, file: str, options: dict[str, Any]) -> dict[str, Any]:
        """A BLE update run by the daemon: the supervisor hands the controller over (commands
        answer busy meanwhile) and the update holds an urgent slot until it ends."""
        address = normalise_address(address)
        self.registry.get(address)
        _path, data = read_image(Path(file))
        settings = OtaSettings(window=options.get("window"),
                               pre_erase=bool(options.get("pre_erase")),
                               confirm=ConfirmPolicy(options.get("confirm") or
                                                     ConfirmPolicy.SELF_THEN_EXPLICIT.value),
                               slot_limit=options.get("slot_limit"))
        scheduler = self.manager.scheduler

        async def connect() -> FrameTransport:
            transport = BleSmpTransport(self.manager.scanner.device(address) or address,
                                        adapter=self.config.link.adapter)
            async with scheduler.connect_turn():
                await transport.connect(self.config.link.connect_timeout_s)
            return transport

        supervisor = self.manager.supervisor(address)
        task = self.manager.store.as_json(address)["current_task"]
        if task is not None and task["status"] in ("running", "paused"):
            # ota.md 5.1: never update a controller in the middle of watering.
            raise ControllerBusy(f"{address} is watering channel {task['channel']}; update "
                                 "it when the task has finished")
        async with supervisor.firmware_update(), scheduler.slot(address, Priority.URGENT,
                                                                kept=False):
            outcome = await FirmwareUpdate(
                connect, data, device=address, settings=settings,
                store=FileSessionStore(self.config.state_dir / "ota")).run()
        log.info("ota_done", address=address, result=outcome.result.value,
                 reason=outcome.reason.value if outcome.reason else None)
        return outcome.as_json()

    async def handle(self, request: ControlRequest) -> Any:
        args = request.args
        match request.op:
            case "ping":
                return {"pong": True}
            case "scan":
                return await self.scan()
            case "pair":
                return await self.pair(str(args["address"]), args.get("passkey"))
            case "unpair":
                return await self.unpair(str(args["address"]))
            case "devices":
                return await self.devices()
            case "state":
                return await self.state(str(args["address"]))
            case "ota":
                return await self.ota(str(args["address"]), str(args["file"]), args)
            case "valve":
                return await self.valve(str(args["address"]), int(args["channel"]),
                                        args["action"], args.get("minutes"))
        raise ControlError(f"unsupported operation {request.op}")


async def _refresh(session: ControllerSession) -> CommandOutcome:
    await session.refresh()
    return CommandOutcome(OutcomeStatus.CONFIRMED, "refreshed")


async def _watchdog(interval_s: float) -> None:
    """Ping systemd while the event loop turns: a wedged loop stops the pings and systemd
    restarts the service (WatchdogSec= in systemd/awgw.service)."""
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


async def run_daemon(config: GatewayConfig) -> None:
    registry = Registry(config.registry_path)
    manager = ConnectionManager(config, registry)
    operations = DaemonOperations(config, registry, manager)
    manager.repairer = operations.repair
    server = ControlServer(config.socket_path, operations.handle)
    log.info("daemon_starting", state_dir=str(config.state_dir), adapter=config.link.adapter,
             max_links=config.link.max_links, policy=config.link.default_policy.value)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        if main is not None:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(manager.run(), name="connection manager")
            await manager.ready.wait()
            await server.start()
            systemd.notify("READY=1")
            systemd.notify(f"STATUS=supervising {len(manager.supervisors)} controllers")
            interval = systemd.watchdog_interval_s()
            if interval is not None:
                tasks.create_task(_watchdog(interval), name="systemd watchdog")
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        systemd.notify("STOPPING=1")
        await server.close()
        log.info("daemon_stopped")

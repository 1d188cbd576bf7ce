"""``Operations``: what every caller can ask of the gateway, answered directly on the radio
(``cli.direct``), by the daemon (``daemon.operations``), or through the daemon's control socket
(``control.client``). ``dispatch`` routes a parsed ``Request`` to the method that answers it, so
the control socket and MQTT need no routing of their own; MQTT reaches only the controllers'
part (``ControllerOps``, ``dispatch_to_controllers``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from firmware_bridge.ota.outcome import Progress
from gateway.errors import ControlError
from gateway.ops.health import CloudStatus, HubStatus
from gateway.ops.models import (
    Claim,
    ClaimResult,
    CloudStatusQuery,
    CommandResult,
    ControllerState,
    DeviceEntry,
    Devices,
    GetState,
    HubStatusQuery,
    Ota,
    OtaReport,
    Pair,
    Ping,
    Pong,
    Refresh,
    Request,
    Result,
    Scan,
    ScanEntry,
    Unclaim,
    Unpair,
    ValveClose,
    ValveOpen,
)

ProgressFn = Callable[[Progress], None]


class ControllerOps(Protocol):
    """What can be asked of the controllers: the part of the operations MQTT commands and cloud
    jobs reach."""

    async def scan(self) -> list[ScanEntry]: ...
    async def pair(self, request: Pair) -> DeviceEntry: ...
    async def unpair(self, request: Unpair) -> DeviceEntry: ...
    async def devices(self) -> list[DeviceEntry]: ...
    async def state(self, request: GetState) -> ControllerState: ...
    async def refresh(self, request: Refresh) -> ControllerState: ...
    async def valve_open(self, request: ValveOpen) -> CommandResult: ...
    async def valve_close(self, request: ValveClose) -> CommandResult: ...
    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport: ...


class Operations(ControllerOps, Protocol):
    """Everything: the controllers, and what only the hub as a whole answers."""

    async def cloud_status(self) -> CloudStatus: ...
    async def claim(self, request: Claim) -> ClaimResult: ...
    async def unclaim(self, request: Unclaim) -> ClaimResult: ...
    async def status(self) -> HubStatus: ...


async def dispatch(ops: Operations, request: Request,
                   on_progress: ProgressFn | None = None) -> Result:
    match request:
        case CloudStatusQuery():
            return await ops.cloud_status()
        case Claim():
            return await ops.claim(request)
        case Unclaim():
            return await ops.unclaim(request)
        case HubStatusQuery():
            return await ops.status()
    return await dispatch_to_controllers(ops, request, on_progress)


async def dispatch_to_controllers(ops: ControllerOps, request: Request,
                                  on_progress: ProgressFn | None = None) -> Result:
    match request:
        case Ping():
            return Pong()
        case Scan():
            return await ops.scan()
        case Pair():
            return await ops.pair(request)
        case Unpair():
            return await ops.unpair(request)
        case Devices():
            return await ops.devices()
        case GetState():
            return await ops.state(request)
        case Refresh():
            return await ops.refresh(request)
        case ValveOpen():
            return await ops.valve_open(request)
        case ValveClose():
            return await ops.valve_close(request)
        case Ota():
            return await ops.ota(request, on_progress)
    raise ControlError(f"{request.op} is not an operation on the controllers")

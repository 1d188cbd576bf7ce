"""The operations as the CLI sees them while the daemon runs: each one a request over the
control socket, answered by the daemon's own ``DaemonOperations``."""

from __future__ import annotations

from pathlib import Path

from gateway.control import call
from gateway.ops.models import (
    CLAIM,
    CLOUD_STATUS,
    COMMAND,
    DEVICE,
    DEVICES,
    HUB_STATUS,
    OTA_REPORT,
    SCAN_ENTRIES,
    STATE,
    Claim,
    ClaimResult,
    CloudStatus,
    CloudStatusQuery,
    CommandResult,
    ControllerState,
    DeviceEntry,
    Devices,
    GetState,
    HubStatus,
    HubStatusQuery,
    Ota,
    OtaReport,
    Pair,
    Refresh,
    Scan,
    ScanEntry,
    Unclaim,
    Unpair,
    ValveClose,
    ValveOpen,
)
from gateway.ops.protocol import ProgressFn


class SocketOperations:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def scan(self) -> list[ScanEntry]:
        return await call(self.path, Scan(), SCAN_ENTRIES)

    async def pair(self, request: Pair) -> DeviceEntry:
        return await call(self.path, request, DEVICE)

    async def unpair(self, request: Unpair) -> DeviceEntry:
        return await call(self.path, request, DEVICE)

    async def devices(self) -> list[DeviceEntry]:
        return await call(self.path, Devices(), DEVICES)

    async def state(self, request: GetState) -> ControllerState:
        return await call(self.path, request, STATE)

    async def refresh(self, request: Refresh) -> ControllerState:
        return await call(self.path, request, STATE)

    async def valve_open(self, request: ValveOpen) -> CommandResult:
        return await call(self.path, request, COMMAND)

    async def valve_close(self, request: ValveClose) -> CommandResult:
        return await call(self.path, request, COMMAND)

    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport:
        return await call(self.path, request, OTA_REPORT, on_progress)

    async def cloud_status(self) -> CloudStatus:
        return await call(self.path, CloudStatusQuery(), CLOUD_STATUS)

    async def claim(self, request: Claim) -> ClaimResult:
        return await call(self.path, request, CLAIM)

    async def unclaim(self, request: Unclaim) -> ClaimResult:
        return await call(self.path, request, CLAIM)

    async def status(self) -> HubStatus:
        return await call(self.path, HubStatusQuery(), HUB_STATUS)

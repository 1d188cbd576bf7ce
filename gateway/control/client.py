"""The CLI's half of the control socket: one request per connection, its typed answer (or the
daemon's typed error raised again), progress lines on the way; and the operations as the CLI sees
them while the daemon runs, each one such a request."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from firmware_bridge.ota.outcome import Phase, Progress
from gateway import errors
from gateway.control.wire import CLIENT_TIMEOUT_S, ProgressSink, problems
from gateway.errors import ControlError, GatewayError
from gateway.ops.health import CloudStatus, HubStatus
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
    Refresh,
    Request,
    Scan,
    ScanEntry,
    Unclaim,
    Unpair,
    ValveClose,
    ValveOpen,
)
from gateway.ops.protocol import ProgressFn

T = TypeVar("T")


def _progress_of(line: bytes) -> Progress | None:
    if not line.startswith(b'{"progress"'):
        return None
    try:
        p = json.loads(line)["progress"]
        return Progress(Phase(p["phase"]), int(p["offset"]), int(p["total"]),
                        float(p["rate_bytes_per_s"]),
                        None if p.get("eta_s") is None else float(p["eta_s"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ControlError("the daemon sent an unreadable progress line") from exc


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def daemon_running(path: Path) -> bool:
    return path.is_socket()


async def call(path: Path, request: Request, result: TypeAdapter[T],
               on_progress: ProgressSink | None = None) -> T:
    """One request to the daemon, its answer parsed by ``result`` (``ops.models.RESULTS`` names
    the one for each op); the daemon's typed errors come back as the same GatewayError class.
    Progress lines on the way go to ``on_progress``."""
    op = request.op
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
    except OSError as exc:
        remedy = ""
        if isinstance(exc, PermissionError):
            # The socket is 0660 with the unit's group: only its members may ask the daemon.
            remedy = (f"; only members of the socket's group may use the daemon: sudo usermod "
                      f"-aG awgw {_user()}, then log in again")
        raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror}{remedy}") \
            from exc
    try:
        writer.write(request.model_dump_json().encode() + b"\n")
        await writer.drain()
        while True:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                line = await reader.readline()
            progress = _progress_of(line)
            if progress is None:
                break
            if on_progress is not None:
                on_progress(progress)
    except TimeoutError:
        raise ControlError(f"the daemon did not answer {op} within {CLIENT_TIMEOUT_S:.0f} s") \
            from None
    finally:
        writer.close()
    if not line:
        raise ControlError(f"the daemon closed the connection before answering {op} (it "
                           "stopped or restarted); run it again: an update resumes where it "
                           "stopped")
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"the daemon sent an unreadable answer to {op}") from exc
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"the daemon sent a malformed answer to {op}")
    if answer["ok"]:
        try:
            return result.validate_python(answer.get("result"))
        except ValidationError as exc:
            raise ControlError(f"the daemon's answer to {op} does not fit its result: "
                               f"{problems(exc)}") from exc
    error = answer.get("error") or {}
    cls = getattr(errors, str(error.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, GatewayError)):
        cls = ControlError
    raise cls(str(error.get("message", "unknown daemon error")))


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

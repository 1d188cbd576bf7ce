"""The daemon's local control socket: one JSON request per connection, one JSON answer.

A request is one of ``ops.models.Request`` (discriminated on ``op``); anything else (unknown
op, missing or wrongly typed fields, an oversized or unreadable body) is answered with a typed
``ControlError`` and the server keeps serving. The answer is ``{"ok": true, "result": ...}``
with the op's result model, or ``{"ok": false, "error": {"type": ..., "message": ...}}`` naming
a GatewayError class, which the client raises again. A long operation (a firmware update)
may send ``{"progress": {...}}`` lines before its answer; a client that does not want them
skips them.

The socket is created owner+group only (0660): whoever may run `awgw` against the daemon is
decided by the socket's group (the systemd unit's), not by anything on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from firmware_bridge.ota.outcome import Phase, Progress
from gateway import errors
from gateway.errors import ControlError, GatewayError
from gateway.ops.models import REQUEST, Request, Result

log = structlog.get_logger(__name__)

SOCKET_MODE = 0o660
# Longest request line we accept; real requests are < 200 bytes.
MAX_REQUEST = 64 * 1024
# A client that connects and sends nothing is dropped after this.
REQUEST_READ_TIMEOUT_S = 5.0
# The slowest operation is a command to a share-policy controller: slot + connect + confirm
# (supervisor.COMMAND_DEADLINE_S = 60 s) or a pairing window (up to 600 s, configured). The
# client waits this long for each line: an update's progress lines restart the wait.
CLIENT_TIMEOUT_S = 660.0
# A cancelled request winds down (an update's engine closes its transport) within this; less
# than the unit's TimeoutStopSec= so the daemon exits by itself.
CLOSE_CLIENTS_S = 10.0
# Progress lines at most this often (a person's bar, not a trace); phase changes always go.
PROGRESS_EVERY_S = 0.2

ProgressSink = Callable[[Progress], None]
Handler = Callable[[Request, ProgressSink | None], Awaitable[Result]]
T = TypeVar("T")


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a previous run
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                           limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, SOCKET_MODE)
        log.info("control_socket_listening", path=str(self.path))

    async def close(self) -> None:
        """Stop listening, then cancel the requests still running (an update through the
        socket stops where it is; its session on disk resumes it) and wait for them."""
        if self._server is not None:
            self._server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        if clients:
            await asyncio.wait(clients, timeout=CLOSE_CLIENTS_S)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)
        try:
            try:
                async with asyncio.timeout(REQUEST_READ_TIMEOUT_S):
                    line = await reader.readline()
                request = REQUEST.validate_json(line)
            except ValidationError as exc:
                await _send(writer, _error("ControlError",
                                           f"bad control request: {_problems(exc)}"))
                return
            except (TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
                # ValueError: a line over MAX_REQUEST (asyncio's limit) or not UTF-8.
                reason = "no request within the read timeout" if isinstance(exc, TimeoutError) \
                    else f"unreadable or oversized request ({type(exc).__name__})"
                await _send(writer, _error("ControlError", f"bad control request: {reason}"))
                return
            try:
                result = await self.handler(request, _progress_lines(writer))
                await _send(writer, {"ok": True, "result": to_jsonable_python(result)})
            except GatewayError as exc:
                await _send(writer, _error(type(exc).__name__, str(exc)))
            except Exception as exc:
                log.exception("control_request_failed", op=request.op)
                await _send(writer, _error("GatewayError", f"internal error: {exc}"))
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()


def _progress_lines(writer: asyncio.StreamWriter) -> ProgressSink:
    sent_at = [0.0]
    phase = [""]

    def send(progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase.value == phase[0] and now - sent_at[0] < PROGRESS_EVERY_S:
            return
        sent_at[0], phase[0] = now, progress.phase.value
        if writer.is_closing():
            return  # the client went away; the update goes on
        writer.write(json.dumps({"progress": {
            "phase": progress.phase.value, "offset": progress.offset, "total": progress.total,
            "rate_bytes_per_s": round(progress.rate_bytes_per_s, 1),
            "eta_s": progress.eta_s}}).encode() + b"\n")
    return send


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "message": message}}


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                     for e in exc.errors())


async def _send(writer: asyncio.StreamWriter, document: dict[str, Any]) -> None:
    writer.write(json.dumps(document).encode() + b"\n")
    await writer.drain()


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
                      f"-aG bluetooth {_user()}, then log in again")
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
                               f"{_problems(exc)}") from exc
    error = answer.get("error") or {}
    cls = getattr(errors, str(error.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, GatewayError)):
        cls = ControlError
    raise cls(str(error.get("message", "unknown daemon error")))

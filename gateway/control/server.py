"""The daemon's half of the local control socket: one JSON request per connection, one JSON
answer.

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
from typing import Any

import structlog
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from firmware_bridge.ota.outcome import Progress
from gateway.control.wire import (
    CLOSE_CLIENTS_S,
    MAX_REQUEST,
    PROGRESS_EVERY_S,
    REQUEST_READ_TIMEOUT_S,
    SOCKET_MODE,
    ProgressSink,
    error_document,
    problems,
)
from gateway.errors import GatewayError
from gateway.ops.models import REQUEST, Request, Result

log = structlog.get_logger(__name__)

Handler = Callable[[Request, ProgressSink | None], Awaitable[Result]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self.listening = asyncio.Event()

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
        self.listening.set()
        log.info("control_socket_listening", path=str(self.path))

    async def run(self) -> None:
        """The guarded part: listen, serve until cancelled, then close (a restart after a crash
        listens again on a fresh socket)."""
        await self.start()
        try:
            await self._serve()
        finally:
            await self.close()

    async def _serve(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

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
            self._server = None
        self.listening.clear()
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
                await _send(writer, error_document("ControlError",
                                           f"bad control request: {problems(exc)}"))
                return
            except (TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
                # ValueError: a line over MAX_REQUEST (asyncio's limit) or not UTF-8.
                reason = "no request within the read timeout" if isinstance(exc, TimeoutError) \
                    else f"unreadable or oversized request ({type(exc).__name__})"
                await _send(writer, error_document("ControlError",
                                                   f"bad control request: {reason}"))
                return
            try:
                result = await self.handler(request, _progress_lines(writer))
                await _send(writer, {"ok": True, "result": to_jsonable_python(result)})
            except GatewayError as exc:
                await _send(writer, error_document(type(exc).__name__, str(exc)))
            except Exception as exc:
                log.exception("control_request_failed", op=request.op)
                await _send(writer, error_document("GatewayError", f"internal error: {exc}"))
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


async def _send(writer: asyncio.StreamWriter, document: dict[str, Any]) -> None:
    writer.write(json.dumps(document).encode() + b"\n")
    await writer.drain()

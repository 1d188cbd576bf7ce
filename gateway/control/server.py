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
decided by the socket's group (``awgw``, the unit's), not by anything on the network. Within
the group, reading and watering are open to every member; pairing, firmware and the cloud
account's claims only to root and the service user (the peer's uid comes from the kernel,
SO_PEERCRED). Every op that changes something is logged with that uid. At most MAX_CLIENTS
connections are held at once: a newcomer beyond that takes the place of the oldest one that
has not sent its request yet (an idle flood cannot keep a person's command out), and only
when every place runs a real request is it answered ControlBusy and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
# Clients served at once: a person's CLI, a script or two, the doctor; far below the unit's
# file-descriptor limit (hostile-edges M2: 200 idle connections stopped every answer).
MAX_CLIENTS = 16
# Ops that only read: everything else is logged with the peer's uid.
READ_ONLY_OPS = frozenset({"ping", "scan", "devices", "state", "cloud_status", "status"})
# Ops beyond watering the garden: a new radio peer, firmware, the cloud account's devices.
PRIVILEGED_OPS = frozenset({"pair", "unpair", "ota", "claim", "unclaim"})


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(writer: asyncio.StreamWriter) -> Peer | None:
    """The connecting process as the kernel reports it (Linux SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    return Peer(*struct.unpack("3i", raw))

Handler = Callable[[Request, ProgressSink | None], Awaitable[Result]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler,
                 privileged_uids: frozenset[int] | None = None) -> None:
        self.path = path
        self.handler = handler
        # Root and whoever runs the daemon (the service user).
        self.privileged_uids = privileged_uids if privileged_uids is not None else frozenset(
            {0, os.geteuid()})
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        # Connections still waiting for their request line, oldest first: the first to go
        # when the cap is reached.
        self._reading: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.listening = asyncio.Event()
        self.evicted = 0  # idle connections closed to make room

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
        if len(self._clients) >= MAX_CLIENTS:
            if not self._reading:
                with contextlib.suppress(ConnectionError, OSError):
                    await _send(writer, error_document(
                        "ControlBusy", f"the daemon is serving {MAX_CLIENTS} requests: "
                                       "try again"))
                writer.close()
                return
            oldest = next(iter(self._reading))
            # Its connection is cut, not its task cancelled: the read ends and the task
            # finishes on its own (asyncio reports a cancelled client task as an error).
            self._reading.pop(oldest).transport.abort()
            self._clients.discard(oldest)
            self.evicted += 1
        if task is not None:
            self._clients.add(task)
            self._reading[task] = writer
            task.add_done_callback(self._clients.discard)
        try:
            try:
                async with asyncio.timeout(REQUEST_READ_TIMEOUT_S):
                    line = await reader.readline()
                if task is not None:
                    self._reading.pop(task, None)
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
            peer = peer_of(writer)
            refusal = self._refusal(request, peer)
            if refusal is not None:
                await _send(writer, error_document("ControlRefused", refusal))
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
            if task is not None:
                self._reading.pop(task, None)
            writer.close()

    def _refusal(self, request: Request, peer: Peer | None) -> str | None:
        """Why ``peer`` may not run ``request`` (None: it may); every op that changes
        something is logged with who asked, allowed or not."""
        if request.op in READ_ONLY_OPS:
            return None
        uid = peer.uid if peer is not None else None
        allowed = request.op not in PRIVILEGED_OPS or uid in self.privileged_uids
        log.info("control_op", op=request.op, uid=uid, pid=peer.pid if peer else None,
                 address=getattr(request, "address", None), allowed=allowed)
        if allowed:
            return None
        return (f"{request.op} needs root or the service user (uid {uid} is in the socket's "
                f"group, which may read and water only): run it with sudo")


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

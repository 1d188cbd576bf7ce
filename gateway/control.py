"""The daemon's local control socket: one JSON request per connection, one JSON answer.

The socket is created owner+group only (0660): whoever may run `awgw` against the daemon is
decided by the socket's group (the systemd unit's), not by anything on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway import errors
from gateway.errors import ControlError, GatewayError

log = structlog.get_logger(__name__)

SOCKET_MODE = 0o660
# Longest request line we accept; real requests are < 200 bytes.
MAX_REQUEST = 64 * 1024
# A client that connects and sends nothing is dropped after this.
REQUEST_READ_TIMEOUT_S = 5.0
# The slowest operation is a command to a share-policy controller: slot + connect + confirm
# (supervisor.COMMAND_DEADLINE_S = 60 s) or a pairing window (up to 600 s, configured).
CLIENT_TIMEOUT_S = 660.0

Op = Literal["scan", "pair", "unpair", "devices", "state", "valve", "ota", "ping"]


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Op
    args: dict[str, Any] = {}


Handler = Callable[[ControlRequest], Awaitable[Any]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.Server | None = None

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
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_READ_TIMEOUT_S):
                    line = await reader.readline()
                request = ControlRequest.model_validate_json(line)
            except (TimeoutError, ValueError, ValidationError, asyncio.LimitOverrunError) as exc:
                await _send(writer, {"ok": False, "error": {
                    "type": "ControlError", "message": f"bad control request: {exc}"}})
                return
            try:
                result = await self.handler(request)
                await _send(writer, {"ok": True, "result": result})
            except GatewayError as exc:
                await _send(writer, {"ok": False, "error": {"type": type(exc).__name__,
                                                            "message": str(exc)}})
            except Exception as exc:
                log.exception("control_request_failed", op=request.op)
                await _send(writer, {"ok": False, "error": {
                    "type": "GatewayError", "message": f"internal error: {exc}"}})
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()


async def _send(writer: asyncio.StreamWriter, document: dict[str, Any]) -> None:
    writer.write(json.dumps(document, default=_jsonable).encode() + b"\n")
    await writer.drain()


def _jsonable(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def daemon_running(path: Path) -> bool:
    return path.is_socket()


async def call(path: Path, op: Op, **args: Any) -> Any:
    """One request to the daemon; its typed errors come back as the same GatewayError class."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror}") from exc
    try:
        writer.write(ControlRequest(op=op, args=args).model_dump_json().encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            line = await reader.readline()
    except TimeoutError:
        raise ControlError(f"the daemon did not answer {op} within {CLIENT_TIMEOUT_S:.0f} s") \
            from None
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"the daemon sent an unreadable answer to {op}") from exc
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"the daemon sent a malformed answer to {op}")
    if answer["ok"]:
        return answer.get("result")
    error = answer.get("error") or {}
    cls = getattr(errors, str(error.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, GatewayError)):
        cls = ControlError
    raise cls(str(error.get("message", "unknown daemon error")))

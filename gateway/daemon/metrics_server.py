"""``GET /metrics`` on 127.0.0.1, served by the event loop.

prometheus-client's own server gives every TCP connection a thread with no read timeout: any
local user could hold the daemon's threads with idle connections until ``TasksMax`` stopped
``to_thread`` (the outboxes' commits) everywhere (hostile-edges M3). Here a connection costs a
coroutine, at most MAX_CONNECTIONS are served at once (one more is closed at once), and a
request head that does not arrive within READ_TIMEOUT_S ends its connection. The exposition
text is prometheus-client's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# Prometheus and a person's curl: a handful at once. An idle flood past this is closed, not
# queued.
MAX_CONNECTIONS = 8
# A scraper sends its request head at once; a connection silent this long is let go.
READ_TIMEOUT_S = 5.0
# A GET's head: a request line and a few headers.
MAX_HEAD_BYTES = 8192


class MetricsServer:
    def __init__(self, render: Callable[[], bytes], content_type: str) -> None:
        self.render = render
        self.content_type = content_type
        self._server: asyncio.Server | None = None
        self._open = 0
        self.refused = 0

    async def start(self, port: int) -> str | None:
        """Listen on 127.0.0.1 only (the metrics name the home's controllers); None, logged,
        when the port cannot be had."""
        try:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", port,
                                                      limit=MAX_HEAD_BYTES)
        except OSError as exc:
            log.warning("metrics_unavailable", port=port, error=str(exc),
                        remedy="set metrics_port to a free port, or 0 to turn metrics off")
            return None
        bound = self._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{bound}/metrics"
        log.info("metrics_listening", url=url)
        return url

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READ_TIMEOUT_S):
                    await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self._answer(head))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, OSError):
            pass  # silent, cut short, oversized or gone: nothing to answer
        finally:
            self._open -= 1
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"text/plain", b"GET only\n")
        if target not in (b"/metrics", b"/"):
            return _response(404, b"text/plain", b"/metrics\n")
        body = self.render()
        return _response(200, self.content_type.encode(), b"" if method == b"HEAD" else body,
                         length=len(body))


def _response(status: int, content_type: bytes, body: bytes, length: int | None = None) -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed"}[status]
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, reason, content_type,
                                            len(body) if length is None else length)) + body

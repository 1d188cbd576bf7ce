"""The metrics server on the event loop: an idle flood costs no threads and is let go after the
read timeout; a scrape gets prometheus-client's text; anything else a short answer."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.daemon import metrics_server
from gateway.daemon.metrics_server import MAX_CONNECTIONS, MetricsServer
from tests.helpers import until

BODY = b"# HELP awgw_ready 1 once READY=1 was sent\nawgw_ready 1.0\n"


async def get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    except ConnectionResetError:  # the server closed on a request it would not read
        return b""
    finally:
        writer.close()


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> MetricsServer:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT_S", 0.3)
    return MetricsServer(lambda: BODY, "text/plain; version=0.0.4")


async def test_an_idle_flood_holds_no_thread_and_is_let_go(server: MetricsServer) -> None:
    # hostile-edges M3: 150 idle connections held 150 threads, for good.
    url = await server.start(0)
    assert url is not None
    port = int(url.split(":")[2].split("/")[0])
    threads = threading.active_count()
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(150)]
    try:
        await asyncio.sleep(0.1)
        assert threading.active_count() == threads
        assert server.refused >= 150 - MAX_CONNECTIONS
        # The idle ones are let go after the read timeout; then a scrape is served.
        await until(lambda: server._open == 0, 5.0)  # the server's own count
        answer = await get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(BODY)
    finally:
        for _reader, writer in idle:
            writer.close()
        await server.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /metrics HTTP/1.1\r\n\r\n", b"200"), (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"200"),
    (b"GET /?x=1 HTTP/1.0\r\n\r\n", b"200"), (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
    (b"GET /admin HTTP/1.1\r\n\r\n", b"404"), (b"\x00\xff garbage\r\n\r\n", b"405"),
])
async def test_every_request_gets_a_short_answer(server: MetricsServer, request_bytes: bytes,
                                                 status: bytes) -> None:
    url = await server.start(0)
    assert url is not None
    port = int(url.split(":")[2].split("/")[0])
    try:
        answer = await get(port, request_bytes)
        assert answer.split(b" ")[1] == status
    finally:
        await server.close()


async def test_an_oversized_head_is_cut_off(server: MetricsServer) -> None:
    url = await server.start(0)
    assert url is not None
    port = int(url.split(":")[2].split("/")[0])
    try:
        assert await get(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000) == b""
    finally:
        await server.close()

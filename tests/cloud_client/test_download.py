"""A download goes only to an https URL (plain http only to this machine, where the tests'
emulator and a developer's server live); anything else is refused before a byte is asked."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_client import CloudClient
from cloud_client.client import check_download_url
from cloud_client.errors import DownloadRejected

BODY = b"firmware"


@pytest.mark.parametrize("url", [
    "https://[bad", "http://example.com/fw.bin", "http://192.168.1.10/fw.bin", "ftp://x/fw.bin",
    "file:///etc/passwd", "https:///no-host", "//example.com/fw.bin", "https://exa mple.com/x",
    "https://example.com:99999/x", "https://example.com/\x00",
])
async def test_a_hostile_download_url_is_refused_before_any_request(
        tmp_path: Path, url: str) -> None:
    # hostile-edges H2 D / M6: "https://[bad" raised ValueError from urlsplit, outside the typed
    # errors, and http:// or any host on the LAN was fetched.
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, content=BODY)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http, \
            CloudClient("https://api.example.com", http=http) as client:
        with pytest.raises(DownloadRejected):
            await client.download(url, tmp_path / "fw.bin", size_bytes=None, sha256=None)
    assert asked == [] and not (tmp_path / "fw.bin").exists()


@pytest.mark.parametrize("url", ["https://bucket.example.com/fw.bin?X-Amz-Signature=abc",
                                 "http://127.0.0.1:8080/fw.bin", "http://[::1]/fw.bin",
                                 "http://localhost:9/fw.bin"])
async def test_https_and_this_machine_are_fetched(tmp_path: Path, url: str) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda _r: httpx.Response(200, content=BODY))) as http, \
            CloudClient("https://api.example.com", http=http) as client:
        path = await client.download(url, tmp_path / "fw.bin", size_bytes=len(BODY), sha256=None)
    assert path.read_bytes() == BODY


@given(st.text(max_size=80))
def test_any_text_is_a_url_or_a_typed_refusal(url: str) -> None:
    with contextlib.suppress(DownloadRejected):
        check_download_url(url)

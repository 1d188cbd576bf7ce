"""An async client for every cloud route the gateway uses (cloud-api.md 4-7, 11).

Each call returns a typed model or raises one of cloud_client.errors. Retries are made only where
resending is safe: network errors, 429 (after Retry-After), 5xx, and 409 where the route says so
(5: the concurrent-update conflict, resent after 200-1000 ms of jitter). Every route the gateway
calls is idempotent (claims, merges, batch ids, job transitions), which is what makes that safe.
Redirects are never followed: a presigned URL or an API that answers 3xx is refused, so a token
cannot be carried to another host. TLS verification is httpx's default and cannot be turned off.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit

import httpx
import structlog
from pydantic import BaseModel, ValidationError

from cloud_client import jsonbody
from cloud_client.errors import (
    AuthRejected,
    CloudError,
    CloudResponseError,
    CloudUnreachable,
    Conflict,
    DownloadRejected,
    ErrorShape,
    MalformedResponse,
    RateLimited,
    RequestRejected,
    RouteNotFound,
    ServerFailure,
)
from cloud_client.models import (
    DEFAULT_BOARD,
    DEFAULT_CHANNEL,
    BackendErrorBody,
    ClaimDevice,
    ClaimedDevice,
    DownloadUrl,
    GatewayErrorBody,
    GatewayJobs,
    Health,
    MyDevices,
    OtaLatest,
    RegisteredGateway,
    RegisterGateway,
    ReportDeviceState,
    ReportedDeviceState,
    SavedUserState,
    SaveUserState,
    UnclaimDevice,
    UnclaimedDevice,
    UpdatedGatewayJob,
    UpdateGatewayJob,
    UserState,
    model_json,
)

log = structlog.get_logger("cloud_client")
M = TypeVar("M", bound=BaseModel)

# 1: API Gateway cuts a backend call at 30 s; waiting longer only delays the retry.
REQUEST_TIMEOUT_S = 30.0
# A TCP/TLS handshake to AWS takes well under a second; 10 s covers a congested home uplink.
CONNECT_TIMEOUT_S = 10.0
# The largest JSON answer the gateway reads is getUserState (state <= 512 KiB, 5) plus envelope.
MAX_RESPONSE_BYTES = 1024 * 1024
# ota.md 1.6: slot 1 on the nRF52840 is 472 KiB; a firmware file far larger is not ours.
MAX_DOWNLOAD_BYTES = 4 * 1024 * 1024
DOWNLOAD_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retryable failures: full jitter on an exponential base, capped."""

    attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0
    # 5: a user-item conflict is resent after 200-1000 ms.
    conflict_min_s: float = 0.2
    conflict_max_s: float = 1.0
    # A Retry-After beyond this is treated as "not now": the caller's own schedule takes over.
    max_retry_after_s: float = 120.0

    def backoff_s(self, attempt: int, rng: Callable[[], float]) -> float:
        return float(rng() * min(self.cap_s, self.base_s * (2 ** attempt)))

    def conflict_s(self, rng: Callable[[], float]) -> float:
        return self.conflict_min_s + rng() * (self.conflict_max_s - self.conflict_min_s)


def _shape(raw: object) -> tuple[ErrorShape, str | None, str]:
    if isinstance(raw, dict):
        try:
            backend = BackendErrorBody.model_validate(raw)
        except ValidationError:
            pass
        else:
            return "backend", backend.error.code, backend.error.message
        try:
            gateway = GatewayErrorBody.model_validate(raw)
        except ValidationError:
            pass
        else:
            return "gateway", None, gateway.message
    return "none", None, ""


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the Pi's clock may be wrong, so it is not trusted
    return seconds if seconds >= 0 else None


def error_for(route: str, response: httpx.Response, body: bytes) -> CloudResponseError:
    """The typed error for an error status, from either error shape (3) or none."""
    try:
        raw: object = jsonbody.decode(body) if body else None
    except (ValueError, UnicodeDecodeError):
        raw = None
    shape, code, message = _shape(raw)
    status = response.status_code
    request_id = response.headers.get("apigw-requestid")
    if status == 401:
        return AuthRejected(route, status, code, message, shape, request_id)
    if status == 404 and shape == "gateway":
        return RouteNotFound(route, status, code, message, shape, request_id)
    if status == 409:
        return Conflict(route, status, code, message, shape, request_id)
    if status == 429:
        return RateLimited(route, status, code, message, shape, request_id,
                           _retry_after_s(response.headers.get("retry-after")))
    if status >= 500:
        return ServerFailure(route, status, code, message, shape, request_id)
    return RequestRejected(route, status, code, message, shape, request_id)


def parse_response(route: str, response: httpx.Response, body: bytes, model: type[M]) -> M:
    """A success body as ``model``, or the typed error: nothing else leaves this function."""
    status = response.status_code
    if 300 <= status < 400:
        target = urlsplit(response.headers.get("location", "")).hostname or "?"
        raise MalformedResponse(route, f"redirect to {target} refused")
    if status >= 400 or status < 200:
        raise error_for(route, response, body)
    content_type = response.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise MalformedResponse(route, f"content type {content_type or 'missing'!r}")
    try:
        raw = jsonbody.decode(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedResponse(route, "body is not JSON") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise MalformedResponse(route, f"unexpected shape ({exc.error_count()} problems)") \
            from exc


def check_download_url(url: str) -> str:
    """The host of a download URL the gateway may fetch, or DownloadRejected: https with a
    host and a valid port; plain http only to this machine (the emulator, a developer's
    server), never to another host, where anyone on the path could swap the image."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise DownloadRejected("?", f"not a URL ({exc})") from None
    if not host or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise DownloadRejected(host or "?", "not a URL with a host")
    if parts.scheme == "https":
        return host
    if parts.scheme == "http" and _loopback(host):
        return host
    raise DownloadRejected(host, f"{parts.scheme or 'no'} scheme refused: https only")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CloudClient:
    """One per gateway; ``auth`` (CognitoAuth) signs the JWT routes only."""

    def __init__(self, base_url: str, auth: httpx.Auth | None = None, *,
                 http: httpx.AsyncClient | None = None, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: Callable[[], float] = random.random) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            follow_redirects=False)
        self.retry = retry
        self._sleep = sleep
        self._rng = rng

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # ---- the routes ------------------------------------------------------------------------------

    async def health(self) -> Health:
        return await self._call("GET /health", "GET", "/health", Health)

    async def ota_latest(self, current_version: str, board: str = DEFAULT_BOARD,
                         channel: str = DEFAULT_CHANNEL) -> OtaLatest:
        # 7: always send current_version, else update_available is true for any release.
        return await self._call("GET /ota/latest", "GET", "/ota/latest", OtaLatest, params={
            "board": board, "channel": channel, "current_version": current_version})

    async def download_url(self, version: str, board: str = DEFAULT_BOARD,
                           channel: str = DEFAULT_CHANNEL) -> DownloadUrl:
        path = f"/ota/releases/{quote(version, safe='')}/download-url"
        return await self._call("GET /ota/releases/{version}/download-url", "GET", path,
                                DownloadUrl, params={"board": board, "channel": channel})

    async def get_user_state(self) -> UserState:
        return await self._call("GET /getUserState", "GET", "/getUserState", UserState, jwt=True)

    async def save_user_state(self, body: SaveUserState) -> SavedUserState:
        return await self._call("POST /saveUserState", "POST", "/saveUserState", SavedUserState,
                                body=body, jwt=True, retry_conflict=True)

    async def my_devices(self) -> MyDevices:
        return await self._call("GET /myDevices", "GET", "/myDevices", MyDevices, jwt=True)

    async def claim_device(self, serial: str) -> ClaimedDevice:
        # 6: re-claiming one's own device is idempotent, so a conflict is simply resent.
        return await self._call("POST /claimDevice", "POST", "/claimDevice", ClaimedDevice,
                                body=ClaimDevice(serial=serial), jwt=True, retry_conflict=True)

    async def unclaim_device(self, serial: str, reason: str | None = None) -> UnclaimedDevice:
        body = UnclaimDevice(serial=serial, reason=reason)
        try:
            return await self._call("POST /unclaimDevice", "POST", "/unclaimDevice",
                                    UnclaimedDevice, body=body, jwt=True)
        except Conflict as conflict:
            if not conflict.concurrent_update:
                raise
        # 6: the device record was unclaimed before the user item lost the race; the resend
        # answers 403 not_owned, which after that conflict means success.
        await self._sleep(self.retry.conflict_s(self._rng))
        try:
            return await self._call("POST /unclaimDevice", "POST", "/unclaimDevice",
                                    UnclaimedDevice, body=body, jwt=True)
        except RequestRejected as again:
            if again.status == 403 and again.code == "not_owned":
                return UnclaimedDevice(ok=True, unclaimed=True, serial=serial)
            raise

    async def register_gateway(self, body: RegisterGateway) -> RegisteredGateway:
        return await self._call("POST /registerGateway", "POST", "/registerGateway",
                                RegisteredGateway, body=body, jwt=True)

    async def report_device_state(self, body: ReportDeviceState) -> ReportedDeviceState:
        # The batch id makes a resend a replay (11 P2), never a second write.
        return await self._call("POST /reportDeviceState", "POST", "/reportDeviceState",
                                ReportedDeviceState, body=body, jwt=True)

    async def gateway_jobs(self, gateway_id: str, after: str | None = None) -> GatewayJobs:
        params = {"gateway_id": gateway_id} | ({"after": after} if after else {})
        return await self._call("GET /gatewayJobs", "GET", "/gatewayJobs", GatewayJobs,
                                params=params, jwt=True)

    async def update_gateway_job(self, body: UpdateGatewayJob) -> UpdatedGatewayJob:
        # 11 P3: sending the state a job is already in is a no-op, so resends are safe.
        return await self._call("POST /updateGatewayJob", "POST", "/updateGatewayJob",
                                UpdatedGatewayJob, body=body, jwt=True)

    async def download(self, url: str, dest: Path, *, size_bytes: int | None,
                       sha256: str | None, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
        """Stream a presigned URL into ``dest`` (atomically), checking size and sha256.

        No Authorization header goes with it (7, rule 1). A 403 or 404 raises
        DownloadRejected with ``problem`` starting "HTTP 403": the caller fetches a fresh
        URL once (rule 2)."""
        host = check_download_url(url)
        limit = min(max_bytes, size_bytes) if size_bytes is not None else max_bytes
        partial = dest.with_name(dest.name + ".part")
        try:
            received, digest = await self._fetch(url, host, partial, limit)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise CloudUnreachable(f"download {host}", type(exc).__name__) from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        problem = None
        if size_bytes is not None and received != size_bytes:
            problem = f"{received} bytes, the release says {size_bytes}"
        elif sha256 is not None and digest != sha256.lower():
            problem = "sha256 differs from the release's"
        if problem is not None:
            partial.unlink(missing_ok=True)
            raise DownloadRejected(host, problem)
        partial.replace(dest)
        return dest

    async def _fetch(self, url: str, host: str, partial: Path, limit: int) -> tuple[int, str]:
        digest = hashlib.sha256()
        received = 0
        async with self.http.stream("GET", url, follow_redirects=False) as response:
            if 300 <= response.status_code < 400:
                raise DownloadRejected(host, "redirect refused")
            if response.status_code != 200:
                raise DownloadRejected(host, f"HTTP {response.status_code}")
            with partial.open("wb") as out:
                async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK_BYTES):
                    received += len(chunk)
                    if received > limit:
                        raise DownloadRejected(host, f"more than {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        return received, digest.hexdigest()

    # ---- one call, its retries and its log line -------------------------------------------------

    async def _call(self, route: str, method: str, path: str, model: type[M], *,
                    body: BaseModel | None = None, params: dict[str, str] | None = None,
                    jwt: bool = False, retry_conflict: bool = False) -> M:
        attempt = 0
        while True:
            try:
                return await self._once(route, method, path, model, body, params, jwt)
            except CloudError as exc:
                delay = self._retry_delay(exc, attempt, retry_conflict)
                attempt += 1
                if delay is None or attempt >= self.retry.attempts:
                    raise
            log.info("cloud_retry", route=route, attempt=attempt, delay_s=round(delay, 3))
            await self._sleep(delay)

    def _retry_delay(self, exc: CloudError, attempt: int, retry_conflict: bool) -> float | None:
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            if exc.retry_after_s > self.retry.max_retry_after_s:
                return None
            return exc.retry_after_s
        if isinstance(exc, Conflict):
            return self.retry.conflict_s(self._rng) if retry_conflict else None
        if isinstance(exc, CloudUnreachable | ServerFailure | RateLimited):
            return self.retry.backoff_s(attempt, self._rng)
        return None

    async def _once(self, route: str, method: str, path: str, model: type[M],
                    body: BaseModel | None, params: dict[str, str] | None, jwt: bool) -> M:
        content = json.dumps(model_json(body)).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        request = self.http.build_request(method, self.base_url + path, params=params,
                                          content=content, headers=headers)
        started = time.monotonic()
        try:
            response = await self.http.send(
                request, auth=self.auth if jwt and self.auth is not None else None,
                stream=True, follow_redirects=False)
            try:
                payload = await self._read_capped(route, response)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            log.info("cloud_call", route=route, error=type(exc).__name__,
                     latencyMs=round((time.monotonic() - started) * 1000))
            raise CloudUnreachable(route, type(exc).__name__) from exc
        error_code = None
        try:
            return parse_response(route, response, payload, model)
        except CloudResponseError as exc:
            error_code = exc.code
            raise
        finally:
            log.info("cloud_call", route=route, statusCode=response.status_code,
                     latencyMs=round((time.monotonic() - started) * 1000),
                     requestId=response.headers.get("apigw-requestid"), errorCode=error_code)

    @staticmethod
    async def _read_capped(route: str, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            raise MalformedResponse(route, f"{declared} bytes is over the limit")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > MAX_RESPONSE_BYTES:
                raise MalformedResponse(route, f"over {MAX_RESPONSE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


"""Cognito sign-in and token refresh (cloud-api.md 2.3-2.5), the refresh as an httpx.Auth flow.

The flow follows the app's policy (2.4): refresh when the ID token expires within
REFRESH_AHEAD_S, and once more after any 401, then resend once. Expiry is tracked on a
monotonic clock from ``ExpiresIn`` because a Raspberry Pi has no RTC: until NTP syncs, ``exp``
inside the JWT cannot be compared with the wall clock. A refresh that Cognito refuses with
NotAuthorizedException ends the session: ``state`` becomes ``relink_needed`` and every later
JWT call fails at once with RelinkNeeded, without network traffic, until ``link`` is called.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx
from pydantic import ValidationError

from cloud_client import jsonbody
from cloud_client.errors import AuthError, MalformedResponse, RelinkNeeded, ServerFailure
from cloud_client.models import (
    CognitoErrorBody,
    CognitoTokens,
    InitiateAuthRequest,
    InitiateAuthResponse,
    model_json,
)

# 2.4 rule 1: the app refreshes when the ID token has less than a minute left.
REFRESH_AHEAD_S = 60.0
COGNITO_TARGET = "AWSCognitoIdentityProviderService.InitiateAuth"
COGNITO_CONTENT_TYPE = "application/x-amz-json-1.1"
# A Cognito answer is a few KiB of tokens; anything far larger is not Cognito.
MAX_COGNITO_BODY_BYTES = 64 * 1024
AuthState = Literal["unlinked", "linked", "relink_needed"]


class RefreshTokenStore(Protocol):
    """Where the refresh token is kept between runs (the gateway: a 0600 file)."""

    def load(self) -> str | None: ...

    def save(self, refresh_token: str) -> None: ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class CognitoSettings:
    # https://cognito-idp.{region}.amazonaws.com/ in production; the emulator's in tests.
    endpoint: str
    client_id: str


@dataclass(frozen=True)
class Tokens:
    id_token: str
    refresh_token: str | None
    expires_in_s: int


def initiate_auth_request(settings: CognitoSettings, body: InitiateAuthRequest) -> httpx.Request:
    return httpx.Request(
        "POST", settings.endpoint,
        headers={"Content-Type": COGNITO_CONTENT_TYPE, "X-Amz-Target": COGNITO_TARGET},
        content=json.dumps(model_json(body)).encode())


def read_initiate_auth(response: httpx.Response, *, refreshing: bool) -> Tokens:
    """Tokens from an InitiateAuth answer, or the typed reason there are none."""
    body = response.content
    if len(body) > MAX_COGNITO_BODY_BYTES:
        raise MalformedResponse("cognito", f"{len(body)} bytes")
    if response.status_code >= 500:
        raise ServerFailure("cognito", response.status_code, None, "Cognito unavailable", "none")
    try:
        raw = jsonbody.decode(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedResponse("cognito", "not JSON") from exc
    if response.status_code != 200:
        try:
            error = CognitoErrorBody.model_validate(raw)
        except ValidationError as exc:
            raise MalformedResponse("cognito", f"HTTP {response.status_code} without __type") \
                from exc
        if refreshing and error.kind == "NotAuthorizedException":
            raise RelinkNeeded(error.kind, error.message)
        raise AuthError(error.kind, error.message)
    try:
        parsed = InitiateAuthResponse.model_validate(raw)
    except ValidationError as exc:
        raise MalformedResponse("cognito", "unexpected InitiateAuth shape") from exc
    result: CognitoTokens | None = parsed.AuthenticationResult
    if result is None:
        # 2.3: MFA or a forced password change; the app does not support them either.
        raise AuthError(parsed.ChallengeName or "challenge", "a challenge is not supported")
    return Tokens(result.IdToken, result.RefreshToken, result.ExpiresIn)


def token_claims(id_token: str) -> dict[str, object]:
    """The claims of a JWT, unverified: for showing who is linked, never for trusting it (the
    backend checks the signature, 2.2)."""
    try:
        payload = id_token.split(".")[1]
        raw = jsonbody.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


async def sign_in(http: httpx.AsyncClient, settings: CognitoSettings, username: str,
                  password: str) -> Tokens:
    """USER_PASSWORD_AUTH, once, for ``awgw cloud link``; the password is not kept."""
    request = initiate_auth_request(settings, InitiateAuthRequest(
        AuthFlow="USER_PASSWORD_AUTH", ClientId=settings.client_id,
        AuthParameters={"USERNAME": username, "PASSWORD": password}))
    tokens = read_initiate_auth(await http.send(request), refreshing=False)
    if tokens.refresh_token is None:
        raise AuthError("NoRefreshToken", "Cognito returned no refresh token")
    return tokens


class CognitoAuth(httpx.Auth):
    """Bearer ID token on every request; refresh ahead of expiry and after a 401."""

    requires_response_body = True

    def __init__(self, settings: CognitoSettings, store: RefreshTokenStore,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._store = store
        self._clock = clock
        self._id_token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.state: AuthState = "linked" if store.load() else "unlinked"
        self.refreshes = 0

    @property
    def id_token(self) -> str | None:
        return self._id_token

    @property
    def expires_in_s(self) -> float | None:
        if self._id_token is None:
            return None
        return max(0.0, self._expires_at - self._clock())

    def link(self, tokens: Tokens) -> None:
        if tokens.refresh_token is not None:
            self._store.save(tokens.refresh_token)
        self._accept(tokens)
        self.state = "linked"

    def unlink(self) -> None:
        self._store.clear()
        self._id_token = None
        self.state = "unlinked"

    def _accept(self, tokens: Tokens) -> None:
        self._id_token = tokens.id_token
        self._expires_at = self._clock() + tokens.expires_in_s
        if tokens.refresh_token is not None:
            # 2.3: a pool with rotation sends a new refresh token; the old one is dropped.
            self._store.save(tokens.refresh_token)

    def _usable(self) -> bool:
        return self._id_token is not None and self._expires_at - self._clock() > REFRESH_AHEAD_S

    async def async_auth_flow(
            self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.state == "relink_needed":
            raise RelinkNeeded("NotAuthorizedException", "the gateway must be linked again")
        if self.state == "unlinked":
            raise RelinkNeeded("NotLinked", "the gateway is not linked to a cloud account")
        async with self._lock:
            if not self._usable():
                await self._refresh_flow_done((yield self.refresh_request()))
        request.headers["Authorization"] = f"Bearer {self._id_token}"
        response = yield request
        if response.status_code != 401:
            return
        # 2.4 rule 2: any 401 on a JWT route is a token problem: refresh once, resend once.
        stale = self._id_token
        async with self._lock:
            if self._id_token == stale:
                await self._refresh_flow_done((yield self.refresh_request()))
        request.headers["Authorization"] = f"Bearer {self._id_token}"
        yield request

    def refresh_request(self) -> httpx.Request:
        refresh_token = self._store.load()
        if refresh_token is None:
            self.state = "unlinked"
            raise RelinkNeeded("NotLinked", "no refresh token is stored")
        return initiate_auth_request(self.settings, InitiateAuthRequest(
            AuthFlow="REFRESH_TOKEN_AUTH", ClientId=self.settings.client_id,
            AuthParameters={"REFRESH_TOKEN": refresh_token}))

    async def _refresh_flow_done(self, response: httpx.Response) -> None:
        await response.aread()
        try:
            tokens = read_initiate_auth(response, refreshing=True)
        except RelinkNeeded:
            self.state = "relink_needed"
            self._id_token = None
            raise
        self.refreshes += 1
        self._accept(tokens)

"""The client's response parsing meets arbitrary bytes, JSON and statuses with typed errors
only (cloud-api.md 3), and reads both error shapes."""

from __future__ import annotations

import base64
import contextlib
import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_client.auth import read_initiate_auth, token_claims
from cloud_client.client import parse_response
from cloud_client.errors import (
    AuthError,
    CloudError,
    Conflict,
    MalformedResponse,
    RateLimited,
    RequestRejected,
    RouteNotFound,
    ServerFailure,
)
from cloud_client.models import GatewayJobs, OtaLatest, ReportedDeviceState, UserState

MODELS = [OtaLatest, UserState, ReportedDeviceState, GatewayJobs]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
statuses = st.sampled_from([200, 201, 204, 301, 302, 400, 401, 403, 404, 409, 413, 429, 500,
                            502, 503])
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "text/html", "", "application/xml"])


def response(status: int, body: bytes, content_type: str = "application/json",
             **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body,
                          headers={"content-type": content_type, **headers})


@given(statuses, st.binary(max_size=300), content_types, st.sampled_from(MODELS))
def test_arbitrary_bytes_give_typed_errors_only(status: int, body: bytes, ctype: str,
                                                model: type[OtaLatest]) -> None:
    with contextlib.suppress(CloudError):
        parse_response("GET /x", response(status, body, ctype), body, model)


@given(statuses, json_values, st.sampled_from(MODELS))
def test_arbitrary_json_gives_a_model_or_a_typed_error(status: int, value: object,
                                                       model: type[OtaLatest]) -> None:
    body = json.dumps(value).encode()
    try:
        parsed = parse_response("GET /x", response(status, body), body, model)
    except CloudError:
        return
    assert isinstance(parsed, model) and 200 <= status < 300


@given(st.integers(200, 599), st.binary(max_size=200))
def test_cognito_answers_give_tokens_or_typed_errors(status: int, body: bytes) -> None:
    with contextlib.suppress(CloudError):
        read_initiate_auth(httpx.Response(status, content=body), refreshing=True)


def test_both_error_shapes_and_statuses() -> None:
    backend = json.dumps({"error": {"code": "already_claimed", "message": "taken"}}).encode()
    with pytest.raises(Conflict) as conflict:
        parse_response("POST /claimDevice", response(409, backend), backend, OtaLatest)
    assert (conflict.value.shape, conflict.value.code) == ("backend", "already_claimed")
    gateway = b'{"message":"Not Found"}'
    with pytest.raises(RouteNotFound) as missing:
        parse_response("POST /registerGateway", response(404, gateway), gateway, OtaLatest)
    assert missing.value.shape == "gateway"
    body = b'{"error":{"code":"release_not_found","message":"no"}}'
    with pytest.raises(RequestRejected):  # a backend 404 is the route's answer, not a gap
        parse_response("GET /ota", response(404, body), body, OtaLatest)
    body = b'{"message":"Too Many Requests"}'
    with pytest.raises(RateLimited) as limited:
        parse_response("GET /x", response(429, body, **{"retry-after": "7"}), body, OtaLatest)
    assert limited.value.retry_after_s == 7.0
    with pytest.raises(ServerFailure):
        parse_response("GET /x", response(502, b"<html>", "text/html"), b"<html>", OtaLatest)
    with pytest.raises(MalformedResponse, match="content type"):
        parse_response("GET /x", response(200, b"{}", "text/html"), b"{}", OtaLatest)
    with pytest.raises(MalformedResponse, match="not JSON"):
        parse_response("GET /x", response(200, b"{nope"), b"{nope", OtaLatest)
    with pytest.raises(MalformedResponse, match="shape"):
        parse_response("GET /x", response(200, b"[]"), b"[]", OtaLatest)


def test_cognito_error_namespace_and_challenge() -> None:
    body = b'{"__type":"com.amazon#NotAuthorizedException","message":"Refresh Token revoked"}'
    with pytest.raises(AuthError) as revoked:
        read_initiate_auth(httpx.Response(400, content=body), refreshing=True)
    assert revoked.value.kind == "NotAuthorizedException"
    body = b'{"ChallengeName":"SMS_MFA","Session":"x"}'
    with pytest.raises(AuthError, match="SMS_MFA"):
        read_initiate_auth(httpx.Response(200, content=body), refreshing=False)


DEEP = b"[" * 100_000 + b"]" * 100_000  # well under the 1 MiB cap


def test_deeply_nested_json_is_a_malformed_response() -> None:
    # hostile-edges M6: RecursionError escaped every typed error (GET /health, a 503 body,
    # Cognito), and through the relay's pump ended the part.
    with pytest.raises(MalformedResponse):
        parse_response("GET /health", response(200, DEEP), DEEP, OtaLatest)
    with pytest.raises(ServerFailure):
        parse_response("GET /health", response(503, DEEP), DEEP, OtaLatest)
    with pytest.raises(MalformedResponse):
        read_initiate_auth(httpx.Response(200, content=DEEP), refreshing=True)
    with pytest.raises(MalformedResponse):
        read_initiate_auth(httpx.Response(400, content=DEEP), refreshing=True)
    payload = base64.urlsafe_b64encode(DEEP).decode().rstrip("=")
    assert token_claims(f"h.{payload}.s") == {}


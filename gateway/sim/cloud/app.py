"""The emulated cloud over HTTP: the backend's routes with their quirks, API Gateway's answers
for anything undeclared, a Cognito endpoint, presigned S3-style URLs, and ``/_emulator/*``
for tests and the demo (cloud-api.md; ota.md 6.6, 6.8).

In ``user_state`` mode the proposed routes (11) are not declared, as on the backend of today,
so they answer API Gateway's ``404 {"message": "Not Found"}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_client.models import (
    CreateDeviceJob,
    RegisterGateway,
    ReportDeviceState,
    UpdateGatewayJob,
)
from gateway.sim.cloud.world import ApiError, Fault, World, now_iso

Handler = Callable[[Request], Awaitable[Response]]
# 11 P2: the whole-request limit of reportDeviceState.
MAX_REPORT_BODY_BYTES = 256 * 1024


def _error(exc: ApiError) -> Response:
    headers = dict(exc.headers)
    if exc.shape == "gateway":
        return JSONResponse({"message": exc.message}, exc.status, headers)
    if exc.shape == "cognito":
        return Response(json.dumps({"__type": exc.code, "message": exc.message}), exc.status,
                        headers, media_type="application/x-amz-json-1.1")
    if exc.shape == "s3":
        xml = f"<Error><Code>{exc.code}</Code><Message>{exc.message}</Message></Error>"
        return Response(xml, exc.status, headers, media_type="application/xml")
    return JSONResponse({"error": {"code": exc.code, "message": exc.message, **exc.extra}},
                        exc.status, headers)


def _handled(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc)
    return run


async def _lenient_json(request: Request) -> dict[str, Any]:
    """The backend reads a body that is not JSON (or not an object) as {} (5)."""
    try:
        raw = json.loads(await request.body())
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


async def _strict_json(request: Request, limit: int = MAX_REPORT_BODY_BYTES) -> object:
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"{len(body)} bytes is over {limit}")
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(400, "invalid_request", "body is not JSON") from None


def build_app(world: World) -> ASGIApp:
    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True, "status": "alive", "timestamp": now_iso()})

    async def latest(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(world.latest(q.get("board", "arduino_nano_33_ble"),
                                         q.get("channel", "stable"),
                                         q.get("current_version", "")))

    async def download_url(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(world.download_url(request.path_params["version"],
                                               q.get("board", "arduino_nano_33_ble"),
                                               q.get("channel", "stable")))

    async def get_state(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "user_state_load_failed")
        return JSONResponse(world.load_state(user))

    async def save_state(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "user_state_save_failed")
        body = await _lenient_json(request)
        if user.uid in world.saving:
            # 5: a write for this user is in flight; the doc_version race is lost.
            world.applied.conflicts += 1
            raise ApiError(409, "user_state_save_failed", "Concurrent update conflict — "
                           "please retry")
        world.saving.add(user.uid)
        try:
            await asyncio.sleep(0)  # let a parallel save of the same user see this one
            return JSONResponse(world.save_state(user, body.get("state"), body.get("version")))
        finally:
            world.saving.discard(user.uid)

    async def my_devices(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "internal_error")
        return JSONResponse(world.my_devices(user))

    async def claim(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "internal_error")
        return JSONResponse(world.claim(user, (await _lenient_json(request)).get("serial")))

    async def unclaim(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "internal_error")
        return JSONResponse(world.unclaim(user, (await _lenient_json(request)).get("serial")))

    async def provision(request: Request) -> Response:
        body = await _lenient_json(request)
        status, reply = world.provision(request.headers.get("x-factory-token"),
                                        str(body.get("hw_id", "")))
        return JSONResponse(reply, status)

    def admin_token(request: Request) -> str | None:
        token = request.headers.get("x-admin-token")
        bearer = request.headers.get("authorization", "")
        return token or (bearer[7:].strip() if bearer.lower().startswith("bearer ") else None)

    async def create_release(request: Request) -> Response:
        return JSONResponse(world.create_release(admin_token(request),
                                                 await _lenient_json(request)), 201)

    async def publish(request: Request) -> Response:
        body = await _lenient_json(request)
        q = request.query_params
        return JSONResponse(world.publish(
            admin_token(request), request.path_params["version"],
            str(body.get("board") or q.get("board", "arduino_nano_33_ble")),
            str(body.get("channel") or q.get("channel", "stable"))))

    async def s3_get(request: Request) -> Response:
        world.downloads += 1
        if "authorization" in request.headers:
            raise ApiError(400, "InvalidArgument", "Only one auth mechanism allowed", "s3")
        key = request.path_params["key"]
        q = request.query_params
        world.check_presigned("GET", key, q.get("X-Amz-Expires", ""),
                              q.get("X-Amz-Signature", ""))
        blob = world.blobs.get(key)
        if blob is None:
            raise ApiError(404, "NoSuchKey", "The specified key does not exist.", "s3")
        return Response(blob, media_type="application/octet-stream")

    async def s3_put(request: Request) -> Response:
        key = request.path_params["key"]
        q = request.query_params
        world.check_presigned("PUT", key, q.get("X-Amz-Expires", ""),
                              q.get("X-Amz-Signature", ""))
        if request.headers.get("content-type") != "application/octet-stream":
            raise ApiError(403, "SignatureDoesNotMatch", "content type is signed", "s3")
        world.blobs[key] = await request.body()
        return Response(b"", 200)

    async def cognito(request: Request) -> Response:
        if request.headers.get("x-amz-target", "").rsplit(".", 1)[-1] != "InitiateAuth":
            raise ApiError(400, "UnknownOperationException", "unknown", "cognito")
        body = await _lenient_json(request)
        return Response(json.dumps(world.initiate_auth(body)), 200,
                        media_type="application/x-amz-json-1.1")

    async def register_gateway(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "invalid_token")
        try:
            body = RegisterGateway.model_validate(await _strict_json(request))
        except ValidationError:
            raise ApiError(400, "invalid_gateway_id", "invalid registerGateway body") from None
        status, reply = world.register_gateway(user, body.model_dump())
        return JSONResponse(reply, status)

    async def report(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "invalid_token")
        raw = await _strict_json(request)
        try:
            batch = ReportDeviceState.model_validate(raw)
        except ValidationError as exc:
            raise ApiError(400, "invalid_batch", f"{exc.error_count()} problems") from None
        return JSONResponse(world.report(user, batch))

    async def jobs(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "invalid_token")
        q = request.query_params
        return JSONResponse(world.poll_jobs(user, q.get("gateway_id", ""), q.get("after")))

    async def update_job(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "invalid_token")
        try:
            body = UpdateGatewayJob.model_validate(await _strict_json(request))
        except ValidationError:
            raise ApiError(400, "invalid_request", "invalid updateGatewayJob body") from None
        return JSONResponse(world.update_job(user, body.model_dump(exclude_none=True)))

    async def create_job(request: Request) -> Response:
        user = world.caller(request.headers.get("authorization"), "invalid_token")
        try:
            body = CreateDeviceJob.model_validate(await _strict_json(request))
        except ValidationError:
            raise ApiError(400, "invalid_request", "invalid createDeviceJob body") from None
        job = world.create_job(user, body.model_dump(mode="json", exclude_none=True))
        return JSONResponse({"ok": True, "job": job.model_dump(mode="json")}, 201)

    # ---- /_emulator: set-up and inspection for tests and the demo -----------------------------

    async def emu_user(request: Request) -> Response:
        body = await _lenient_json(request)
        user = world.add_user(str(body["username"]), str(body["password"]))
        return JSONResponse({"uid": user.uid})

    async def emu_device(request: Request) -> Response:
        body = await _lenient_json(request)
        device = world.add_device(str(body["serial"]), body.get("hw_id"))
        return JSONResponse({"serial": device.serial, "hw_id": device.hw_id})

    async def emu_fault(request: Request) -> Response:
        body = await _lenient_json(request)
        world.faults.append(Fault(**body))
        return JSONResponse({"ok": True, "faults": len(world.faults)})

    async def emu_sign_out(request: Request) -> Response:
        body = await _lenient_json(request)
        world.sign_out_everywhere(str(body["uid"]))
        return JSONResponse({"ok": True})

    async def emu_expire_tokens(_request: Request) -> Response:
        world.expire_id_tokens()
        return JSONResponse({"ok": True})

    async def emu_applied(_request: Request) -> Response:
        return JSONResponse(dataclasses.asdict(world.applied))

    async def emu_jobs(_request: Request) -> Response:
        return JSONResponse({"jobs": [j.model_dump(mode="json") for j in world.jobs.values()],
                             "progress": world.progress})

    async def emu_user_state(request: Request) -> Response:
        return JSONResponse(world.load_state(world.users[request.path_params["uid"]]))

    routes = [
        ("/health", health, "GET"), ("/ota/latest", latest, "GET"),
        ("/ota/releases/{version}/download-url", download_url, "GET"),
        ("/ota/releases", create_release, "POST"),
        ("/ota/releases/{version}/publish", publish, "POST"),
        ("/getUserState", get_state, "GET"), ("/saveUserState", save_state, "POST"),
        ("/myDevices", my_devices, "GET"), ("/claimDevice", claim, "POST"),
        ("/unclaimDevice", unclaim, "POST"), ("/provision", provision, "POST"),
        ("/_s3/{key:path}", s3_get, "GET"), ("/_s3/{key:path}", s3_put, "PUT"),
        ("/_cognito/", cognito, "POST"),
        ("/_emulator/users", emu_user, "POST"), ("/_emulator/devices", emu_device, "POST"),
        ("/_emulator/faults", emu_fault, "POST"), ("/_emulator/sign_out", emu_sign_out, "POST"),
        ("/_emulator/expire_tokens", emu_expire_tokens, "POST"),
        ("/_emulator/applied", emu_applied, "GET"), ("/_emulator/jobs", emu_jobs, "GET"),
        ("/_emulator/user_state/{uid}", emu_user_state, "GET"),
    ]
    if world.mode == "gateway_routes":
        routes += [
            ("/registerGateway", register_gateway, "POST"),
            ("/reportDeviceState", report, "POST"), ("/gatewayJobs", jobs, "GET"),
            ("/updateGatewayJob", update_job, "POST"),
            ("/createDeviceJob", create_job, "POST"),
        ]

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return JSONResponse({"message": "Not Found"}, 404)  # API Gateway's own (1)

    app = Starlette(routes=[Route(p, _handled(h), methods=[m]) for p, h, m in routes],
                    exception_handlers={404: not_found, 405: not_found})
    return FaultLayer(app, world)


class FaultLayer:
    """Faults on demand in front of every route: 5xx, 429 + Retry-After, latency, a dropped
    connection (headers sent, the body cut short)."""

    def __init__(self, app: ASGIApp, world: World) -> None:
        self.app = app
        self.world = world

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            await self.app(scope, receive, send)
            return
        fault = self.world.take_fault(f"{scope['method']} {scope['path']}")
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.kind == "latency":
            await asyncio.sleep(fault.latency_s)
            await self.app(scope, receive, send)
            return
        if fault.kind == "drop":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"ok": tr', "more_body": True})
            return  # the server closes the connection mid-body
        if fault.kind == "rate_limit":
            response: Response = JSONResponse(
                {"message": "Too Many Requests"}, 429,
                {"Retry-After": str(fault.retry_after_s)})
        elif fault.code is not None:
            response = JSONResponse({"error": {"code": fault.code, "message": fault.message}},
                                    fault.status)
        else:
            response = JSONResponse({"message": fault.message}, fault.status)
        await response(scope, receive, send)

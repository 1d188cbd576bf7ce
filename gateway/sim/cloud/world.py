"""What the emulated cloud knows: users and tokens, devices, user state documents, OTA releases
and their binaries, and the proposed gateway routes' records (cloud-api.md, ota.md 6).

Plain synchronous state behind the HTTP layer (app.py), so tests can also read it directly.
Each failure is an ApiError carrying the status, the body shape and the code the real backend
(or API Gateway in front of it) would answer with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import JsonValue

from cloud_client.models import (
    EventItem,
    Job,
    JobStatus,
    ReportDeviceState,
    SnapshotItem,
    iso_ms,
)
from cloud_client.versions import newer, normalise, version_key

Shape = Literal["backend", "gateway", "s3", "cognito"]
Mode = Literal["gateway_routes", "user_state"]
CONCURRENT = "Concurrent update conflict — please retry"
# 11 P2: a batch id is remembered for 48 h.
BATCH_MEMORY_S = 48 * 3600
STATE_LIMIT_BYTES = 524_288
# 6.4: presigned URL lifetimes; 6.6: upload URLs live 900 s.
DOWNLOAD_TTL_S = 3600
UPLOAD_TTL_S = 900
TRANSITIONS: dict[str, set[str]] = {
    "queued": {"in_progress", "succeeded", "failed", "rejected"},
    "in_progress": {"succeeded", "failed", "rejected"},
}


class ApiError(Exception):
    def __init__(self, status: int, code: str | None, message: str,
                 shape: Shape = "backend", extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.shape = shape
        self.extra = extra or {}
        self.headers = headers or {}


def now_iso(at: datetime | None = None) -> str:
    return iso_ms(at or datetime.now(UTC))


@dataclass
class User:
    uid: str
    username: str
    password: str
    state: dict[str, JsonValue] | None = None
    state_version: str | None = None
    state_updated: str | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    saves: int = 0


@dataclass
class Device:
    serial: str
    hw_id: str
    status: str = "active"
    owner: str | None = None
    claimed_at: str | None = None


@dataclass
class ReleaseRecord:
    version: str
    channel: str
    board: str
    mandatory: bool
    notes: str
    artifact_name: str
    size_bytes: int | None
    sha256: str
    published: bool = False
    published_at: str | None = None

    @property
    def key(self) -> str:
        return f"ota/{self.channel}/{self.board}/{self.version}/{self.artifact_name}"


@dataclass
class GatewayRecord:
    gateway_id: str
    owner: str
    doc_version: int
    registered_at: str
    updated_at: str
    serials: list[str]
    last_poll: float | None = None


@dataclass
class Applied:
    """What the emulated cloud stored, in arrival order: the record tests and benches read."""

    snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    duplicate_events: int = 0
    stale_snapshots: int = 0
    replayed_batches: int = 0
    batches: int = 0
    user_state_saves: int = 0
    conflicts: int = 0


@dataclass
class Fault:
    """One fault on demand: ``kind`` in status | rate_limit | latency | drop, for ``count``
    requests (to ``route`` if set; routes are "METHOD /path" without the query)."""

    kind: Literal["status", "rate_limit", "latency", "drop"]
    count: int = 1
    route: str | None = None
    status: int = 503
    retry_after_s: float = 1.0
    latency_s: float = 0.0
    # With a code, a "status" fault answers in the backend's shape (e.g. 409 + the conflict
    # message); without, in API Gateway's.
    code: str | None = None
    message: str = "Service Unavailable"


@dataclass
class World:
    mode: Mode = "gateway_routes"
    factory_token: str = "factory-secret"
    admin_token: str = "admin-secret"
    client_id: str = "gateway-client"
    id_token_ttl_s: int = 3600
    poll_after_s: float = 60.0
    base_url: str = "http://127.0.0.1"
    clock: Callable[[], float] = time.monotonic
    users: dict[str, User] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    id_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    releases: dict[tuple[str, str, str], ReleaseRecord] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    gateways: dict[str, GatewayRecord] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    batch_replies: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    event_ids: set[tuple[str, str]] = field(default_factory=set)
    device_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: Applied = field(default_factory=Applied)
    progress: dict[str, list[int]] = field(default_factory=dict)
    downloads: int = 0  # GETs of presigned firmware URLs, served or refused
    faults: list[Fault] = field(default_factory=list)
    saving: set[str] = field(default_factory=set)
    # 6: unclaims that lose the user-item race after the device record was already unclaimed.
    unclaim_conflicts: int = 0
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    # 7: what the backend's own configuration advertises when the registry has nothing.
    fallback_release: tuple[str, str, str] = ("0.0.2", "stable", "arduino_nano_33_ble")
    serial_seq: int = 0

    # ---- Cognito (2.3) --------------------------------------------------------------------------

    def add_user(self, username: str, password: str) -> User:
        user = User(uid=str(uuid.uuid4()), username=username, password=password)
        self.users[user.uid] = user
        return user

    def initiate_auth(self, body: dict[str, Any]) -> dict[str, Any]:
        flow = body.get("AuthFlow")
        params = body.get("AuthParameters") or {}
        if not isinstance(params, dict) or body.get("ClientId") != self.client_id:
            raise ApiError(400, "InvalidParameterException", "bad request", "cognito")
        if flow == "USER_PASSWORD_AUTH":
            user = next((u for u in self.users.values()
                         if u.username == params.get("USERNAME")), None)
            if user is None or user.password != params.get("PASSWORD"):
                raise ApiError(400, "NotAuthorizedException", "Incorrect username or password.",
                               "cognito")
            refresh = "rt-" + secrets.token_urlsafe(24)
            user.refresh_tokens.add(refresh)
            return self._auth_result(user, refresh)
        if flow == "REFRESH_TOKEN_AUTH":
            token = params.get("REFRESH_TOKEN")
            user = next((u for u in self.users.values() if token in u.refresh_tokens), None)
            if user is None:
                raise ApiError(400, "NotAuthorizedException", "Refresh Token has expired",
                               "cognito")
            return self._auth_result(user, None)  # 2.3: no RefreshToken on refresh
        raise ApiError(400, "InvalidParameterException", "unsupported AuthFlow", "cognito")

    def _auth_result(self, user: User, refresh: str | None) -> dict[str, Any]:
        token = _jwt_shaped({"sub": user.uid, "email": user.username, "token_use": "id",
                             "aud": self.client_id, "jti": secrets.token_urlsafe(12)})
        self.id_tokens[token] = (user.uid, self.clock() + self.id_token_ttl_s)
        result: dict[str, Any] = {"IdToken": token, "AccessToken": token + ".access",
                                  "ExpiresIn": self.id_token_ttl_s, "TokenType": "Bearer"}
        if refresh is not None:
            result["RefreshToken"] = refresh
        return {"AuthenticationResult": result, "ChallengeParameters": {}}

    def sign_out_everywhere(self, uid: str) -> None:
        """GlobalSignOut from the app (2.4): every refresh token of the user is revoked."""
        self.users[uid].refresh_tokens.clear()

    def expire_id_tokens(self) -> None:
        for token, (uid, _exp) in list(self.id_tokens.items()):
            self.id_tokens[token] = (uid, self.clock() - 1)

    def caller(self, authorization: str | None, catch_all: str) -> User:
        """2.2/2.6: the bearer's user, or 401 with the route's own code."""
        value = (authorization or "").strip()
        if not value.lower().startswith("bearer "):
            raise ApiError(401, catch_all, "Missing authorization token")
        entry = self.id_tokens.get(value[7:].strip())
        if entry is None or entry[1] <= self.clock():
            raise ApiError(401, catch_all, "Invalid auth token")
        return self.users[entry[0]]

    # ---- devices (6, 9) -------------------------------------------------------------------------

    def provision(self, token: str | None, hw_id: str) -> tuple[int, dict[str, Any]]:
        if token != self.factory_token:
            raise ApiError(401, "unauthorized", "Unauthorized")
        hw = hw_id.upper()
        known = next((d for d in self.devices.values() if d.hw_id == hw), None)
        created = known is None
        if known is None:
            self.serial_seq += 1
            known = Device(serial=f"{self.serial_seq:06d}", hw_id=hw)
            self.devices[known.serial] = known
        return (201 if created else 200), {"ok": True, "created": created, "hw_id": known.hw_id,
                                          "serial": known.serial, "status": known.status}

    def add_device(self, serial: str, hw_id: str | None = None) -> Device:
        """Provision a controller under a given serial (its DIS serial number on the rig)."""
        device = Device(serial=serial, hw_id=(hw_id or f"AW{serial}00").upper())
        self.devices[serial] = device
        return device

    def claim(self, user: User, serial: object) -> dict[str, Any]:
        device = self._device(serial, "internal_error")
        serial = device.serial
        if device.owner not in (None, user.uid):
            raise ApiError(409, "already_claimed", "Device is claimed by another account")
        if device.status != "active":
            raise ApiError(409, "not_claimable", "Device is not active")
        device.owner = user.uid
        device.claimed_at = now_iso()
        user.devices[serial] = {"serial": serial, "hw_id": device.hw_id,
                                "thing_name": f"autowatering-{serial}", "status": device.status,
                                "claimed_at": device.claimed_at}
        return {"ok": True, "claimed": True, "serial": serial, "hw_id": device.hw_id,
                "thing_name": f"autowatering-{serial}", "owner_uid": user.uid,
                "claimed_at": device.claimed_at, "already_owned": False}

    def unclaim(self, user: User, serial: object) -> dict[str, Any]:
        device = self._device(serial, "internal_error")
        serial = device.serial
        if device.owner != user.uid:
            raise ApiError(403, "not_owned", "Device is not owned by caller")
        if device.status != "active":
            raise ApiError(409, "not_active", "Device is not active")
        device.owner = None
        if self.unclaim_conflicts > 0:
            self.unclaim_conflicts -= 1
            raise ApiError(409, "internal_error", CONCURRENT)
        # 6, known defect: the user's list keeps the entry.
        return {"ok": True, "unclaimed": True, "serial": serial, "hw_id": device.hw_id}

    def my_devices(self, user: User) -> dict[str, Any]:
        return {"ok": True, "owner_uid": user.uid, "count": len(user.devices),
                "devices": list(user.devices.values())}

    def _device(self, serial: object, catch_all: str) -> Device:
        if not isinstance(serial, str) or len(serial) != 6 or not serial.isdigit():
            raise ApiError(400, "invalid_serial", "serial must be a 6-digit string")
        device = self.devices.get(serial)
        if device is None:
            raise ApiError(404, "device_not_found", "No provisioned device with that serial")
        del catch_all
        return device

    # ---- user state (5) -------------------------------------------------------------------------

    def save_state(self, user: User, state: object, version: object) -> dict[str, Any]:
        incoming = state if isinstance(state, dict | list) else {}
        size = len(_compact(incoming).encode())
        if size > STATE_LIMIT_BYTES:
            raise ApiError(413, "user_state_save_failed",
                           f"State payload too large ({size} bytes). Max is 524288.")
        if isinstance(incoming, list):
            user.state = {"": incoming}  # 5: an array replaces everything; never sent by us
        else:
            user.state = _deep_merge(user.state or {}, incoming)
        user.state_version = (version if isinstance(version, str) else "v1")[:64]
        user.state_updated = now_iso()
        user.saves += 1
        self.applied.user_state_saves += 1
        return {"ok": True, "bytes": size, "version": user.state_version,
                "updatedAt": user.state_updated}

    def load_state(self, user: User) -> dict[str, Any]:
        return {"uid": user.uid, "state": user.state, "updatedAt": user.state_updated,
                "version": user.state_version}

    # ---- OTA (7, ota.md 6) ----------------------------------------------------------------------

    def create_release(self, token: str | None, body: dict[str, Any]) -> dict[str, Any]:
        self._admin(token)
        version = normalise(str(body.get("version") or ""))
        if not version:
            raise ApiError(400, "missing_version", "version is required")
        board = str(body.get("board") or "arduino_nano_33_ble").lower()
        channel = str(body.get("channel") or "stable").lower()
        if (board, channel, version) in self.releases:
            raise ApiError(409, "release_exists", "Release already exists")
        size = body.get("artifact_size_bytes")
        record = ReleaseRecord(
            version=version, channel=channel, board=board,
            mandatory=body.get("mandatory") is True, notes=str(body.get("notes") or "").strip(),
            artifact_name=str(body.get("artifact_name") or "zephyr.signed.bin"),
            size_bytes=int(size) if isinstance(size, int | float) and size >= 0 else None,
            sha256=str(body.get("artifact_sha256") or "").strip().lower())
        self.releases[(board, channel, version)] = record
        return {"ok": True, "version": version, "channel": channel, "board": board,
                "storage_key": record.key, "upload_url": self._presign("PUT", record.key,
                                                                       UPLOAD_TTL_S)[0],
                "upload_expires_in": UPLOAD_TTL_S}

    def publish(self, token: str | None, version: str, board: str, channel: str) -> dict[str, Any]:
        self._admin(token)
        record = self.releases.get((board.lower(), channel.lower(), normalise(version)))
        if record is None:
            raise ApiError(404, "release_not_found", "Release not found")
        record.published = True
        record.published_at = now_iso()
        return {"ok": True, "version": record.version, "channel": record.channel,
                "board": record.board, "published": True, "published_at": record.published_at}

    def _admin(self, token: str | None) -> None:
        if token != self.admin_token:
            raise ApiError(401, "internal_error", "Unauthorized")

    def latest(self, board: str, channel: str, current: str) -> dict[str, Any]:
        published = [r for r in self.releases.values() if r.published
                     and r.board == board.lower() and r.channel == channel.lower()]
        if not published:
            version, fb_channel, fb_board = self.fallback_release
            if (board.lower(), channel.lower()) != (fb_board, fb_channel):
                return {"ok": True, "update_available": False, "latest": None}
            latest = {"version": version, "channel": fb_channel, "mandatory": False}
            return {"ok": True, "update_available": not current or newer(version, current),
                    "latest": latest}
        best = max(published, key=lambda r: version_key(r.version))
        return {"ok": True, "update_available": not current or newer(best.version, current),
                "latest": self._release_json(best)}

    def _release_json(self, record: ReleaseRecord) -> dict[str, Any]:
        artifact: dict[str, Any] = {"name": record.artifact_name}
        if record.size_bytes is not None:
            artifact["size_bytes"] = record.size_bytes
        if record.sha256:
            artifact["sha256"] = record.sha256
        url, expires = self._presign("GET", record.key, DOWNLOAD_TTL_S)
        body: dict[str, Any] = {"version": record.version, "channel": record.channel,
                                "mandatory": record.mandatory, "artifact": artifact,
                                "download": {"url": url, "expires_at": expires}}
        if record.notes:
            body["notes"] = record.notes
        return body

    def download_url(self, version: str, board: str, channel: str) -> dict[str, Any]:
        if not normalise(version):
            raise ApiError(400, "invalid_version", "Invalid version")
        record = self.releases.get((board.lower(), channel.lower(), normalise(version)))
        if record is None or not record.published:
            raise ApiError(404, "release_not_found", "Release not found")
        url, expires = self._presign("GET", record.key, DOWNLOAD_TTL_S)
        return {"ok": True, "version": record.version, "url": url,
                "download": {"url": url, "expires_at": expires}}

    def _presign(self, method: str, key: str, ttl_s: int) -> tuple[str, str]:
        expires = int(self.clock() + ttl_s)
        signature = self._signature(method, key, expires)
        wall = datetime.now(UTC) + timedelta(seconds=ttl_s)
        return (f"{self.base_url}/_s3/{key}?X-Amz-Expires={expires}"
                f"&X-Amz-Signature={signature}", now_iso(wall))

    def _signature(self, method: str, key: str, expires: int) -> str:
        return hmac.new(self.secret, f"{method} {key} {expires}".encode(),
                        hashlib.sha256).hexdigest()

    def check_presigned(self, method: str, key: str, expires: str, signature: str) -> None:
        try:
            deadline = int(expires)
        except ValueError:
            raise ApiError(403, "AccessDenied", "bad expiry", "s3") from None
        if not hmac.compare_digest(self._signature(method, key, deadline), signature):
            raise ApiError(403, "SignatureDoesNotMatch", "signature", "s3")
        if deadline < self.clock():
            raise ApiError(403, "AccessDenied", "Request has expired", "s3")

    def expire_urls(self, by_s: float) -> None:
        """Age every URL signed so far (and later) by ``by_s`` seconds of the emulator clock."""
        base = self.clock
        self.clock = lambda: base() + by_s

    # ---- proposed gateway routes (11) -----------------------------------------------------------

    def register_gateway(self, user: User, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        gateway_id = body["gateway_id"]
        known = self.gateways.get(gateway_id)
        if known is not None and known.owner != user.uid:
            raise ApiError(409, "gateway_owned_by_other", "Gateway belongs to another account")
        expected = body.get("expected_doc_version")
        if known is not None and expected is not None and expected != known.doc_version:
            raise ApiError(409, "optimistic_lock_failed", "doc_version mismatch",
                           extra={"current_doc_version": known.doc_version})
        rejected = []
        served = []
        for serial in body["serials"]:
            device = self.devices.get(serial)
            if device is None:
                rejected.append({"serial": serial, "code": "device_not_found"})
            elif device.owner != user.uid:
                rejected.append({"serial": serial, "code": "not_owned"})
            else:
                served.append(serial)
        stamp = now_iso()
        if known is None:
            known = GatewayRecord(gateway_id, user.uid, 1, stamp, stamp, served)
            self.gateways[gateway_id] = known
            created = True
        else:
            known.doc_version += 1
            known.updated_at = stamp
            known.serials = served
            created = False
        return (201 if created else 200), {
            "ok": True, "created": created, "gateway_id": gateway_id, "owner_uid": user.uid,
            "doc_version": known.doc_version, "registered_at": known.registered_at,
            "updated_at": known.updated_at, "rejected_serials": rejected}

    def report(self, user: User, batch: ReportDeviceState) -> dict[str, Any]:
        gateway = self.gateways.get(batch.gateway_id)
        if gateway is None or gateway.owner != user.uid:
            raise ApiError(403, "gateway_not_registered", "Gateway is not registered")
        now = self.clock()
        remembered = self.batch_replies.get(batch.batch_id)
        if remembered is not None and now - remembered[0] < BATCH_MEMORY_S:
            self.applied.replayed_batches += 1
            return {**remembered[1], "replayed": True}
        self.applied.batches += 1
        results: list[dict[str, Any]] = []
        accepted = duplicates = 0
        for index, item in enumerate(batch.items):
            device = self.devices.get(item.serial)
            if device is None:
                results.append({"index": index, "status": "rejected",
                                "code": "device_not_found"})
            elif device.owner != user.uid:
                results.append({"index": index, "status": "rejected", "code": "not_owned"})
            elif len(_compact(item.data).encode()) > 8 * 1024:
                results.append({"index": index, "status": "rejected", "code": "invalid_item"})
            elif isinstance(item, SnapshotItem):
                results.append(self._snapshot(index, item))
                accepted += results[-1]["status"] == "stored"
            else:
                results.append(self._event(index, item))
                if results[-1]["status"] == "duplicate":
                    duplicates += 1
                else:
                    accepted += 1
        reply = {"ok": True, "batch_id": batch.batch_id, "replayed": False,
                 "accepted": accepted, "duplicates": duplicates, "results": results}
        self.batch_replies[batch.batch_id] = (now, reply)
        return reply

    def _snapshot(self, index: int, item: SnapshotItem) -> dict[str, Any]:
        stored = self.device_state.get(item.serial)
        if stored is not None and item.seq <= stored["last_seq"]:
            self.applied.stale_snapshots += 1
            return {"index": index, "status": "stale"}
        version = (stored["doc_version"] if stored else 0) + 1
        if (item.expected_doc_version is not None and stored is not None
                and item.expected_doc_version != stored["doc_version"]):
            return {"index": index, "status": "rejected", "code": "optimistic_lock_failed",
                    "current_doc_version": stored["doc_version"]}
        record = {"last_seq": item.seq, "doc_version": version, "data": item.data,
                  "observed_at": now_iso(item.observed_at), "fw_version": item.fw_version}
        self.device_state[item.serial] = record
        self.applied.snapshots.setdefault(item.serial, []).append(record)
        return {"index": index, "status": "stored", "doc_version": version}

    def _event(self, index: int, item: EventItem) -> dict[str, Any]:
        key = (item.serial, item.event_id)
        if key in self.event_ids:
            self.applied.duplicate_events += 1
            return {"index": index, "status": "duplicate"}
        self.event_ids.add(key)
        self.applied.events.append({"serial": item.serial, "event_id": item.event_id,
                                    "type": item.type, "data": item.data,
                                    "observed_at": now_iso(item.observed_at)})
        return {"index": index, "status": "stored"}

    def create_job(self, user: User, body: dict[str, Any]) -> Job:
        device = self._device(body.get("serial"), "internal_error")
        if device.owner != user.uid:
            raise ApiError(403, "not_owned", "Device is not owned by caller")
        stamp = datetime.now(UTC)
        job = Job.model_validate({
            "job_id": uuid.uuid4().hex, "serial": device.serial, "type": body["type"],
            "status": "queued", "doc_version": 1, "created_at": now_iso(stamp),
            "expires_at": now_iso(stamp + timedelta(seconds=int(body.get("expires_in_s",
                                                                         7 * 86400)))),
            "ota": body.get("ota"), "command": body.get("command")})
        self.jobs[job.job_id] = job
        return job

    def poll_jobs(self, user: User, gateway_id: str, after: str | None) -> dict[str, Any]:
        gateway = self.gateways.get(gateway_id)
        if gateway is None or gateway.owner != user.uid:
            raise ApiError(403, "gateway_not_registered", "Gateway is not registered")
        now = self.clock()
        if gateway.last_poll is not None and now - gateway.last_poll < self.poll_after_s:
            wait = self.poll_after_s - (now - gateway.last_poll)
            raise ApiError(429, "rate_limited", "Poll again later",
                           headers={"Retry-After": str(max(1, round(wait)))})
        gateway.last_poll = now
        open_jobs = [j for j in self.jobs.values() if j.serial in gateway.serials
                     and j.status in ("queued", "in_progress")]
        open_jobs.sort(key=lambda j: j.job_id)
        if after:
            open_jobs = [j for j in open_jobs if j.job_id > after and j.status == "queued"] + [
                j for j in open_jobs if j.status == "in_progress"]
        return {"ok": True, "gateway_id": gateway_id,
                "jobs": [j.model_dump(mode="json") for j in open_jobs],
                "next_cursor": open_jobs[-1].job_id if open_jobs else after,
                "poll_after_s": self.poll_after_s}

    def update_job(self, user: User, body: dict[str, Any]) -> dict[str, Any]:
        job = self.jobs.get(body["job_id"])
        gateway = self.gateways.get(body["gateway_id"])
        if job is None:
            raise ApiError(404, "job_not_found", "Job not found")
        if gateway is None or gateway.owner != user.uid or job.serial not in gateway.serials:
            raise ApiError(403, "not_owned", "Job is not for this gateway")
        status: JobStatus = body["status"]
        if status == job.status:
            # 11 P3: a no-op (idempotent resend); progress on the way is kept for the record.
            if body.get("progress_pct") is not None or body.get("detail"):
                job = job.model_copy(update={
                    "progress_pct": body.get("progress_pct", job.progress_pct),
                    "detail": body.get("detail") or job.detail})
                self.jobs[job.job_id] = job
                self.progress.setdefault(job.job_id, []).append(job.progress_pct or 0)
            return {"ok": True, "job": job.model_dump(mode="json")}
        expected = body.get("expected_doc_version")
        if expected is not None and expected != job.doc_version:
            raise ApiError(409, "optimistic_lock_failed", "doc_version mismatch",
                           extra={"current_doc_version": job.doc_version})
        if status not in TRANSITIONS.get(job.status, set()):
            raise ApiError(409, "invalid_transition", f"{job.status} -> {status}")
        updated = job.model_copy(update={
            "status": status, "doc_version": job.doc_version + 1,
            "progress_pct": body.get("progress_pct", job.progress_pct),
            "detail": body.get("detail") or job.detail})
        self.jobs[job.job_id] = updated
        if updated.progress_pct is not None:
            self.progress.setdefault(job.job_id, []).append(updated.progress_pct)
        return {"ok": True, "job": updated.model_dump(mode="json")}

    # ---- faults ---------------------------------------------------------------------------------

    def take_fault(self, route: str) -> Fault | None:
        for fault in self.faults:
            if fault.route in (None, route) and fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None


def _jwt_shaped(claims: dict[str, Any]) -> str:
    """A token shaped like Cognito's (header.payload.signature); the emulator checks it by
    lookup, the gateway only reads its claims for display."""
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'kid': 'emulator'})}.{part(claims)}.{secrets.token_urlsafe(16)}"


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _deep_merge(stored: dict[str, JsonValue], incoming: dict[str, JsonValue]) -> dict[
        str, JsonValue]:
    """5: objects merge key by key; arrays, scalars and null replace; nothing is deleted."""
    merged = dict(stored)
    for key, value in incoming.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merged[key] = _deep_merge(old, value)
        else:
            merged[key] = value
    return merged

"""The cloud client against the cloud emulator over real HTTP on loopback: every route the
gateway uses, each documented error, 401 then refresh, the 409 retry, both error shapes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cloud_client import CloudClient, CognitoAuth, CognitoSettings, RetryPolicy, sign_in
from cloud_client.errors import (
    AuthError,
    AuthRejected,
    CloudUnreachable,
    Conflict,
    DownloadRejected,
    MalformedResponse,
    RateLimited,
    RelinkNeeded,
    RequestRejected,
    RouteNotFound,
    ServerFailure,
)
from cloud_client.models import (
    EventItem,
    RegisterGateway,
    ReportDeviceState,
    SaveUserState,
    SnapshotItem,
    UpdateGatewayJob,
)
from gateway.sim.cloud import EmulatorServer, Fault, World
from gateway.sim.cloud.publish import publish_release
from gateway.sim.cloud.world import GatewayRecord

FAST = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, conflict_min_s=0.01,
                   conflict_max_s=0.02)
SERIAL = "100001"


class MemoryStore:
    def __init__(self) -> None:
        self.token: str | None = None
        self.saved = 0

    def load(self) -> str | None:
        return self.token

    def save(self, refresh_token: str) -> None:
        self.token = refresh_token
        self.saved += 1

    def clear(self) -> None:
        self.token = None


@dataclass
class Cloud:
    world: World
    url: str
    client: CloudClient
    auth: CognitoAuth
    store: MemoryStore
    uid: str


async def _cloud(mode: str = "gateway_routes") -> AsyncIterator[Cloud]:
    world = World(mode=mode)  # type: ignore[arg-type]
    async with EmulatorServer(world) as server:
        user = world.add_user("ana@example.com", "correct horse")
        world.add_device(SERIAL)
        store = MemoryStore()
        settings = CognitoSettings(server.url + "/_cognito/", world.client_id)
        auth = CognitoAuth(settings, store)
        async with CloudClient(server.url, auth, retry=FAST) as client:
            auth.link(await sign_in(client.http, settings, "ana@example.com", "correct horse"))
            yield Cloud(world, server.url, client, auth, store, user.uid)


@pytest.fixture
async def cloud() -> AsyncIterator[Cloud]:
    async for c in _cloud():
        yield c


@pytest.fixture
async def today_cloud() -> AsyncIterator[Cloud]:
    async for c in _cloud("user_state"):
        yield c


async def test_health_and_ota_fallback(cloud: Cloud) -> None:
    assert (await cloud.client.health()).status == "alive"
    fallback = await cloud.client.ota_latest("0.0.1")
    assert fallback.update_available and fallback.latest is not None
    assert fallback.latest.version == "0.0.2" and fallback.latest.download is None
    other = await cloud.client.ota_latest("0.0.1", board="other_board")
    assert not other.update_available and other.latest is None


async def test_published_release_download_is_checked(cloud: Cloud, tmp_path: Path) -> None:
    binary = bytes(range(256)) * 40
    await publish_release(cloud.client.http, cloud.url, cloud.world.admin_token, "v1.4.0",
                          binary, notes="fixes")
    latest = await cloud.client.ota_latest("1.3.9")
    assert latest.update_available and latest.latest is not None
    release = latest.latest
    assert release.version == "1.4.0" and release.artifact is not None
    assert release.artifact.sha256 == hashlib.sha256(binary).hexdigest()
    assert not (await cloud.client.ota_latest("1.4")).update_available  # 1.4 == 1.4.0
    assert release.download is not None
    file = await cloud.client.download(release.download.url, tmp_path / "fw.bin",
                                       size_bytes=len(binary), sha256=release.artifact.sha256)
    assert file.read_bytes() == binary
    with pytest.raises(DownloadRejected, match="sha256"):
        await cloud.client.download(release.download.url, tmp_path / "bad.bin",
                                    size_bytes=len(binary), sha256="0" * 64)
    with pytest.raises(DownloadRejected, match="bytes"):
        await cloud.client.download(release.download.url, tmp_path / "short.bin",
                                    size_bytes=len(binary) + 1, sha256=None)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()
    cloud.world.expire_urls(2 * 3600)
    with pytest.raises(DownloadRejected, match="HTTP 403"):
        await cloud.client.download(release.download.url, tmp_path / "late.bin",
                                    size_bytes=len(binary), sha256=None)
    fresh = await cloud.client.download_url("1.4.0")
    assert (await cloud.client.download(fresh.url, tmp_path / "again.bin",
                                        size_bytes=len(binary), sha256=None)).exists()
    with pytest.raises(RequestRejected) as missing:
        await cloud.client.download_url("9.9.9")
    assert (missing.value.status, missing.value.code, missing.value.shape) == (
        404, "release_not_found", "backend")


async def test_missing_binary_and_dropped_download(cloud: Cloud, tmp_path: Path) -> None:
    await publish_release(cloud.client.http, cloud.url, cloud.world.admin_token, "2.0.0", None)
    url = (await cloud.client.download_url("2.0.0")).url
    with pytest.raises(DownloadRejected, match="HTTP 404"):
        await cloud.client.download(url, tmp_path / "x.bin", size_bytes=None, sha256=None)
    await publish_release(cloud.client.http, cloud.url, cloud.world.admin_token, "2.0.1",
                          b"x" * 5000)
    url = (await cloud.client.download_url("2.0.1")).url
    cloud.world.faults.append(Fault("drop", route="GET /_s3/ota/stable/arduino_nano_33_ble/"
                                                  "2.0.1/zephyr.signed.bin"))
    with pytest.raises(CloudUnreachable):
        await cloud.client.download(url, tmp_path / "cut.bin", size_bytes=5000, sha256=None)
    assert not (tmp_path / "cut.bin").exists()


async def test_user_state_merges_and_keeps_the_apps_keys(cloud: Cloud) -> None:
    assert (await cloud.client.get_user_state()).state is None
    cloud.world.users[cloud.uid].state = {"schema": "v1", "storage": {"zones": [1, 2]}}
    saved = await cloud.client.save_user_state(SaveUserState(
        state={"gateways": {"gw1": {"controllers": {SERIAL: {"fresh": True}}}}}))
    assert saved.ok and saved.version == "gw-v1"
    await cloud.client.save_user_state(SaveUserState(
        state={"gateways": {"gw1": {"seen": "now"}}}))
    state = (await cloud.client.get_user_state()).state
    assert state == {"schema": "v1", "storage": {"zones": [1, 2]}, "gateways": {"gw1": {
        "controllers": {SERIAL: {"fresh": True}}, "seen": "now"}}}


async def test_conflict_on_save_is_resent_with_jitter(cloud: Cloud) -> None:
    cloud.world.faults.append(Fault("status", count=2, route="POST /saveUserState", status=409,
                                    code="user_state_save_failed",
                                    message="Concurrent update conflict — please retry"))
    assert (await cloud.client.save_user_state(SaveUserState(state={"gateways": {}}))).ok
    assert cloud.world.users[cloud.uid].saves == 1


async def test_claim_unclaim_and_their_errors(cloud: Cloud) -> None:
    claimed = await cloud.client.claim_device(SERIAL)
    assert claimed.claimed and claimed.owner_uid == cloud.uid
    assert (await cloud.client.claim_device(SERIAL)).claimed  # idempotent
    assert [d.serial for d in (await cloud.client.my_devices()).devices] == [SERIAL]
    with pytest.raises(RequestRejected) as unknown:
        await cloud.client.claim_device("999999")
    assert unknown.value.code == "device_not_found" and unknown.value.status == 404
    other = cloud.world.add_user("bo@example.com", "pw")
    cloud.world.add_device("100002").owner = other.uid
    with pytest.raises(Conflict) as taken:
        await cloud.client.claim_device("100002")
    assert taken.value.code == "already_claimed" and not taken.value.concurrent_update
    # 6: the conflict came after the device record was unclaimed; the resend's 403 is success.
    cloud.world.unclaim_conflicts = 1
    assert (await cloud.client.unclaim_device(SERIAL, "moved")).unclaimed
    assert cloud.world.devices[SERIAL].owner is None
    with pytest.raises(RequestRejected) as again:
        await cloud.client.unclaim_device(SERIAL)
    assert (again.value.status, again.value.code) == (403, "not_owned")


async def test_401_refreshes_once_and_retries(cloud: Cloud) -> None:
    cloud.world.expire_id_tokens()
    assert (await cloud.client.my_devices()).ok
    assert cloud.auth.refreshes == 1


async def test_refresh_ahead_of_expiry_on_the_monotonic_clock(cloud: Cloud) -> None:
    now = [0.0]
    auth = CognitoAuth(cloud.auth.settings, cloud.store, clock=lambda: now[0])
    client = CloudClient(cloud.url, auth, http=cloud.client.http, retry=FAST)
    assert (await client.my_devices()).ok  # no ID token yet: refreshed first
    assert auth.refreshes == 1
    now[0] = 3600 - 30  # inside the minute before expiry
    assert (await client.my_devices()).ok
    assert auth.refreshes == 2


async def test_revoked_refresh_token_means_relink(cloud: Cloud) -> None:
    cloud.world.sign_out_everywhere(cloud.uid)
    cloud.world.expire_id_tokens()
    with pytest.raises(RelinkNeeded):
        await cloud.client.my_devices()
    assert cloud.auth.state == "relink_needed"
    sent_before = len(cloud.world.id_tokens)
    with pytest.raises(RelinkNeeded):
        await cloud.client.get_user_state()  # no network: fails at once
    assert len(cloud.world.id_tokens) == sent_before
    assert (await cloud.client.health()).ok  # public routes keep working


async def test_wrong_password_is_a_typed_auth_error(cloud: Cloud) -> None:
    with pytest.raises(AuthError) as refused:
        await sign_in(cloud.client.http, cloud.auth.settings, "ana@example.com", "nope")
    assert refused.value.kind == "NotAuthorizedException"
    assert not isinstance(refused.value, RelinkNeeded)


async def test_route_specific_401_codes_without_auth(cloud: Cloud) -> None:
    bare = CloudClient(cloud.url, None, http=cloud.client.http, retry=FAST)
    with pytest.raises(AuthRejected) as state:
        await bare.get_user_state()
    assert state.value.code == "user_state_load_failed"
    with pytest.raises(AuthRejected) as devices:
        await bare.my_devices()
    assert devices.value.code == "internal_error"
    assert devices.value.message == "Missing authorization token"


async def test_transient_failures_are_retried(cloud: Cloud) -> None:
    world = cloud.world
    world.faults.append(Fault("status", count=2, route="GET /health", status=503))
    assert (await cloud.client.health()).ok
    world.faults.append(Fault("rate_limit", route="GET /health", retry_after_s=0.05))
    assert (await cloud.client.health()).ok
    world.faults.append(Fault("drop", route="GET /myDevices"))
    assert (await cloud.client.my_devices()).ok
    world.faults.append(Fault("status", count=10, route="GET /health", status=500))
    with pytest.raises(ServerFailure) as down:
        await cloud.client.health()
    assert down.value.shape == "gateway" and down.value.status == 500
    world.faults.clear()
    world.faults.append(Fault("rate_limit", count=10, route="GET /health", retry_after_s=500))
    with pytest.raises(RateLimited) as slow:
        await cloud.client.health()  # a wait beyond the policy's cap is left to the caller
    assert slow.value.retry_after_s == 500


async def test_proposed_routes(cloud: Cloud) -> None:
    await cloud.client.claim_device(SERIAL)
    registered = await cloud.client.register_gateway(RegisterGateway(
        gateway_id="gw-1", name="hub", sw_version="0.1.0", platform="test",
        capabilities=["ble"], serials=[SERIAL, "000777"]))
    assert registered.created and [r.code for r in registered.rejected_serials] == [
        "device_not_found"]
    at = datetime.now(UTC)
    batch = ReportDeviceState(gateway_id="gw-1", batch_id="b1", sent_at=at, items=[
        SnapshotItem(serial=SERIAL, seq=1, observed_at=at, data={"fresh": True}),
        EventItem(serial=SERIAL, event_id="e1", observed_at=at, type="alarm_raised",
                  data={"code": 1}),
        EventItem(serial=SERIAL, event_id="e1", observed_at=at, type="alarm_raised",
                  data={"code": 1})])
    first = await cloud.client.report_device_state(batch)
    assert [r.status for r in first.results] == ["stored", "stored", "duplicate"]
    replay = await cloud.client.report_device_state(batch)
    assert replay.replayed and len(cloud.world.applied.events) == 1
    job = cloud.world.create_job(cloud.world.users[cloud.uid], {
        "serial": SERIAL, "type": "ota_update", "ota": {"version": "1.0.0"}})
    polled = await cloud.client.gateway_jobs("gw-1")
    assert [j.job_id for j in polled.jobs] == [job.job_id]
    moved = await cloud.client.update_gateway_job(UpdateGatewayJob(
        gateway_id="gw-1", job_id=job.job_id, status="in_progress", progress_pct=10))
    assert moved.job.status == "in_progress" and moved.job.doc_version == 2
    with pytest.raises(Conflict) as back:
        await cloud.client.update_gateway_job(UpdateGatewayJob(
            gateway_id="gw-1", job_id=job.job_id, status="queued"))
    assert back.value.code == "invalid_transition"


async def test_todays_backend_has_no_gateway_routes(today_cloud: Cloud) -> None:
    with pytest.raises(RouteNotFound) as missing:
        await today_cloud.client.register_gateway(RegisterGateway(
            gateway_id="gw-1", name="hub", sw_version="0.1.0", platform="test",
            capabilities=[], serials=[]))
    assert missing.value.shape == "gateway" and missing.value.message == "Not Found"


async def test_redirects_are_refused(cloud: Cloud) -> None:
    def redirect(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "https://evil.example/steal"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(redirect)) as http:
        client = CloudClient("https://cloud.example", None, http=http, retry=FAST)
        with pytest.raises(MalformedResponse, match=r"redirect to evil\.example refused"):
            await client.health()


async def test_documented_errors_of_each_route(cloud: Cloud) -> None:
    world, client = cloud.world, cloud.client
    world.add_device("100003").status = "revoked"
    with pytest.raises(Conflict) as revoked:
        await client.claim_device("100003")
    assert revoked.value.code == "not_claimable"
    await client.claim_device(SERIAL)
    world.devices[SERIAL].status = "revoked"
    with pytest.raises(Conflict) as inactive:
        await client.unclaim_device(SERIAL)
    assert inactive.value.code == "not_active"
    with pytest.raises(RequestRejected) as big:
        await client.save_user_state(SaveUserState(state={"blob": "x" * 600_000}))
    assert (big.value.status, big.value.code) == (413, "user_state_save_failed")
    world.faults.append(Fault("status", route="GET /health", status=500, code="config_error",
                              count=10))
    with pytest.raises(ServerFailure) as config:
        await client.health()
    assert (config.value.code, config.value.shape) == ("config_error", "backend")
    world.faults.clear()
    other = world.add_user("bo@example.com", "pw")
    world.gateways["gw-taken"] = GatewayRecord("gw-taken", other.uid, 1, "", "", [])
    with pytest.raises(Conflict) as owned:
        await client.register_gateway(RegisterGateway(
            gateway_id="gw-taken", name="hub", sw_version="0", platform="t", capabilities=[],
            serials=[]))
    assert owned.value.code == "gateway_owned_by_other"
    at = datetime.now(UTC)
    with pytest.raises(RequestRejected) as unregistered:
        await client.report_device_state(ReportDeviceState(
            gateway_id="gw-nobody", batch_id="b", sent_at=at, items=[EventItem(
                serial=SERIAL, event_id="e", observed_at=at, type="t", data={})]))
    assert (unregistered.value.status, unregistered.value.code) == (
        403, "gateway_not_registered")
    with pytest.raises(RequestRejected) as no_job:
        await client.update_gateway_job(UpdateGatewayJob(gateway_id="gw-taken", job_id="nope",
                                                         status="in_progress"))
    assert (no_job.value.status, no_job.value.code) == (404, "job_not_found")


async def test_factory_provisioning_makes_a_device_claimable(cloud: Cloud) -> None:
    http = cloud.client.http
    refused = await http.post(f"{cloud.url}/provision", json={"hw_id": "F0E1D2C3B4A59687"},
                              headers={"x-factory-token": "wrong"})
    assert refused.status_code == 401
    made = await http.post(f"{cloud.url}/provision", json={"hw_id": "F0E1D2C3B4A59687"},
                           headers={"x-factory-token": cloud.world.factory_token})
    assert made.status_code == 201
    serial = made.json()["serial"]
    again = await http.post(f"{cloud.url}/provision", json={"hw_id": "f0e1d2c3b4a59687"},
                            headers={"x-factory-token": cloud.world.factory_token})
    assert again.status_code == 200 and again.json()["serial"] == serial  # idempotent
    assert (await cloud.client.claim_device(serial)).claimed

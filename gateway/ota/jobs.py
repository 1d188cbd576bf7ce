"""Cloud-triggered firmware updates: jobs from gatewayJobs (cloud-api.md 11 P3) and the
gateway's own ota/latest check per (board, channel) with each controller's policy (7, ota.md
6.9). This module only sequences: the client downloads, ``mcuboot`` checks, the OTA service
updates (with its local gates), the relay carries the outcome.

For every update, in order: the board is checked before anything is downloaded (a release for
another board fails as ``wrong_board``); the file is streamed to the state directory with its
size and sha256 checked (a 403 or expired URL: one fresh URL); the image is checked; its
MCUboot header version, not the release's number, is compared with what the controller runs
(the runbook's rollback can publish an older binary under a newer number): the same version
is already current, an older one is a downgrade, applied only for a job (which names its
version) or with ``allow_downgrade``, otherwise skipped with the reason. Then the controller
must be idle (never while a zone waters or a task runs): the update waits for that. A failed
or reverted update is reported and remembered, never retried blindly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import structlog
from pydantic import JsonValue

from cloud_client import CloudClient
from cloud_client.errors import (
    CloudError,
    CloudResponseError,
    DownloadRejected,
    RateLimited,
)
from cloud_client.models import Artifact, Job, OtaLatest, Release, UpdateGatewayJob
from cloud_client.versions import valid_version, version_key
from firmware_bridge.mcuboot import (
    ImageFormatError,
    SignatureError,
    image_problems,
    parse_image,
    verify_signature,
)
from firmware_bridge.ota.outcome import Progress
from gateway.backoff import full_jitter
from gateway.clock import Clock, LoopClock
from gateway.config import CloudMode, GatewayConfig, OtaPolicy
from gateway.errors import ControllerBusy, GatewayError
from gateway.ops.models import ControllerState, GetState, Ota, OtaReport
from gateway.ops.protocol import ProgressFn
from gateway.ota.service import read_public_key
from gateway.relay.events import DerivedEvent, ota_event
from gateway.relay.offers import OfferBoard
from gateway.store.images import read_image
from gateway.store.registry import ControllerRecord, Registry
from gateway.supervise import Supervision

log = structlog.get_logger("gateway.ota.jobs")
# The guarded part this runs as (gateway/daemon/hub.py); each job is its child.
PART = "cloud updates"
# A watering controller is looked at again this often (a state-store read, no radio traffic).
GATE_POLL_S = 5.0
# Job progress goes to the cloud in steps of this many percent (11 P3 has no rate of its own;
# ten updates an upload keeps the job record useful without a call per chunk).
PROGRESS_STEP_PCT = 10
# Jitter on the release check period (ota.md 6.9: "every 6 h with jitter").
CHECK_JITTER = 0.1
# After a failed poll of gatewayJobs: back off up to this.
POLL_BACKOFF_MAX_S = 600.0
# How often to look whether the relay's start-up probe has chosen the cloud mode.
MODE_WAIT_S = 1.0
# The longest the gateway waits between two polls of gatewayJobs, whatever the cloud says: a
# job queued from the app starts within this.
JOBS_POLL_MAX_S = 3600.0
# Images kept in the firmware cache (a few releases across boards; each at most 4 MiB).
CACHE_KEEP = 4

Status = Literal["succeeded", "failed", "rejected", "skipped", "retry"]


class UpdateTarget(Protocol):
    """What the jobs need of the operations (the daemon's ControllerOperations)."""

    async def state(self, request: GetState) -> ControllerState: ...

    async def ota(self, request: Ota, on_progress: ProgressFn | None = None) -> OtaReport: ...


class EventSink(Protocol):
    def record_event(self, serial: str, event: DerivedEvent, at: float | None = None) -> None: ...


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str | None
    detail: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    record: ControllerRecord
    version: str
    board: str
    channel: str
    artifact: Artifact | None
    explicit: bool  # a job named this version


class CloudUpdates:
    def __init__(self, config: GatewayConfig, registry: Registry, client: CloudClient,
                 gateway_id: str, target: UpdateTarget, events: EventSink | None,
                 mode: Callable[[], CloudMode | None], *,
                 gate_poll_s: float = GATE_POLL_S, rng: Callable[[], float] = random.random,
                 clock: Clock | None = None,
                 supervision: Supervision | None = None,
                 offers: OfferBoard | None = None) -> None:
        self.config = config
        self.registry = registry
        self.client = client
        self.gateway_id = gateway_id
        self.target = target
        self.events = events
        self.mode = mode
        self.gate_poll_s = gate_poll_s
        self._rng = rng
        self.clock = clock or LoopClock()
        self.cache = config.firmware_cache_dir
        self._failed_path = config.failed_updates_path
        self._public_key = read_public_key(config.ota)
        self._finished: set[str] = set()
        self._announced: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()  # one cloud-driven update at a time
        self.supervision = supervision or Supervision(self.clock)
        # The newest release offered per controller by the last check; the board tells who
        # wants to know (the MQTT relay's update entity) and brings their installs here.
        self._offers: dict[str, Release] = {}
        self.board = offers or OfferBoard()
        self.board.serve(self.install_offer)

    # ---- the loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._poll_jobs(), name="gateway jobs")
            tasks.create_task(self._check_releases(), name="release check")

    async def _poll_jobs(self) -> None:
        cursor: str | None = None
        failures = 0
        while True:
            mode = self.mode()
            if mode is None:
                await self.clock.sleep(MODE_WAIT_S)  # the relay's probe has not answered yet
                continue
            if mode is not CloudMode.GATEWAY_ROUTES:
                return  # today's backend has no jobs

            try:
                polled = await self.client.gateway_jobs(self.gateway_id, cursor)
            except RateLimited as exc:
                await self.clock.sleep(exc.retry_after_s or 60.0)
                continue
            except CloudError as exc:
                failures += 1
                delay = full_jitter(self._rng, failures, 1.0, POLL_BACKOFF_MAX_S)
                log.info("gateway_jobs_poll_failed", error=str(exc), retry_in_s=round(delay, 1))
                await self.clock.sleep(delay)
                continue
            failures = 0
            for job in polled.jobs:
                if job.job_id not in self._finished:
                    await self._guarded_job(job)
            cursor = polled.next_cursor or cursor
            await self.clock.sleep(poll_delay_s(polled.poll_after_s,
                                                self.config.cloud.jobs_poll_min_s))

    async def _check_releases(self) -> None:
        while True:
            try:
                await self.check_releases()
            except (CloudError, GatewayError) as exc:  # the cloud, or the registry's disk
                log.info("release_check_failed", error=str(exc))
            period = self.config.cloud.ota_check_period_s
            await self.clock.sleep(period * (1 + CHECK_JITTER * (2 * self._rng() - 1)))

    # ---- jobs -----------------------------------------------------------------------------------

    async def _guarded_job(self, job: Job) -> None:
        """A job is a child of cloud updates: its crash (a bug) is logged, counted and reported
        as failed, and the next job runs."""
        if not await self.supervision.child(PART, f"job {job.job_id}", self._run_job(job)):
            await self._report(job, "failed", None, {"reason": "gateway_error"})
            self._finished.add(job.job_id)

    async def _run_job(self, job: Job) -> None:
        if job.type != "ota_update" or job.ota is None:
            await self._report(job, "rejected", None, {"reason": "unsupported_job_type"})
            self._finished.add(job.job_id)
            return
        record = next((r for r in self.registry.all() if r.serial == job.serial), None)
        if record is None:
            await self._report(job, "failed", None, {"reason": "unknown_controller"})
            self._finished.add(job.job_id)
            return
        spec = job.ota
        plan = Plan(record, spec.version, spec.board, spec.channel, spec.artifact, True)
        if job.status == "queued":
            await self._report(job, "in_progress", 0, {"stage": "queued_on_gateway"})
        # Progress goes out through one queue drained in order by one reporter, which has
        # finished before the final status is sent: an in_progress never lands after it.
        reports: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        last = [-PROGRESS_STEP_PCT]

        def progress(pct: int, stage: str) -> None:
            if pct - last[0] >= PROGRESS_STEP_PCT or pct == 100:
                last[0] = pct
                reports.put_nowait((pct, stage))

        async def reporter() -> None:
            while (item := await reports.get()) is not None:
                await self._report(job, "in_progress", item[0], {"stage": item[1]})

        failure: Exception | None = None
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(reporter(), name=f"job progress {job.job_id}")
            try:
                outcome = await self.apply(plan, progress)
            except Exception as exc:  # noqa: BLE001 - raised as itself below, not in a TaskGroup's group
                failure = exc
            finally:
                reports.put_nowait(None)
        if failure is not None:
            raise failure
        if outcome.status == "retry":
            return  # transient (the cloud or the download went away): the next poll resumes
        status: str = outcome.status
        if outcome.status == "skipped":
            # Already running that version: done. Nothing else is skipped for a job (it names
            # its version, so a downgrade is applied).
            status = "succeeded" if outcome.reason == "already_current" else "rejected"
        detail = dict(outcome.detail)
        if outcome.reason:
            detail["reason"] = outcome.reason
        await self._report(job, status, 100 if status == "succeeded" else None, detail)
        self._finished.add(job.job_id)

    async def _report(self, job: Job, status: str, pct: int | None,
                      detail: dict[str, JsonValue]) -> None:
        try:
            await self.client.update_gateway_job(UpdateGatewayJob(
                gateway_id=self.gateway_id, job_id=job.job_id, status=status,  # type: ignore[arg-type]
                progress_pct=pct, detail=detail))
        except CloudResponseError as exc:
            log.warning("job_update_refused", job=job.job_id, status=status, code=exc.code)
        except CloudError as exc:
            log.info("job_update_failed", job=job.job_id, status=status, error=str(exc))

    # ---- releases found by the gateway's own check ----------------------------------------------

    async def check_releases(self) -> None:
        """ota/latest once per (board, channel, current version) and each controller's policy."""
        cloud = self.config.cloud
        answers: dict[tuple[str, str, str], OtaLatest] = {}
        for record in self.registry.all():
            current = record.firmware_version or ""
            key = (record.board, cloud.ota_channel, current)
            if key not in answers:
                answers[key] = await self.client.ota_latest(current, record.board,
                                                            cloud.ota_channel)
            latest = answers[key]
            release = latest.latest
            if not latest.update_available or release is None:
                self._offers.pop(record.address, None)
                continue
            self._offers[record.address] = release
            self.board.offered(record.address, record.serial, release.version)
            policy = record.ota_policy or cloud.ota_policy
            wanted = policy is OtaPolicy.AUTO or (policy is OtaPolicy.MANDATORY
                                                  and release.mandatory)
            if (record.address, release.version) in self._failed():
                continue  # failed or reverted before: never retried blindly
            if not wanted or (release.download is None and release.artifact is None):
                self._announce(record, release.version, release.mandatory)
                continue
            if not self._in_window():
                log.info("update_waits_for_window", address=record.address,
                         version=release.version)
                continue
            outcome = await self.apply(Plan(record, release.version, record.board,
                                            release.channel, release.artifact, False))
            log.info("policy_update_done", address=record.address, version=release.version,
                     status=outcome.status, reason=outcome.reason)
            if outcome.status == "skipped" and self.events is not None and record.serial:
                self.events.record_event(record.serial, DerivedEvent(
                    "firmware_update_skipped", {"version": release.version,
                                                "reason": outcome.reason, **outcome.detail}))

    async def install_offer(self, address: str,
                            progress: Callable[[int, str], None] | None = None) -> Outcome:
        """Install the release last offered for ``address`` because a person asked (Home
        Assistant's update entity): the policy and window do not apply, but an image older
        than what runs is still refused unless ``allow_downgrade`` (anyone on the broker may
        press the button; a job from the cloud names its version, a button does not)."""
        release = self._offers.get(address)
        if release is None:
            return Outcome("failed", "no_release_offered", {})
        record = self.registry.get(address)
        return await self.apply(Plan(record, release.version, record.board, release.channel,
                                     release.artifact, explicit=False), progress)

    def _announce(self, record: ControllerRecord, version: str, mandatory: bool) -> None:
        if (record.address, version) in self._announced:
            return
        self._announced.add((record.address, version))
        log.info("firmware_available", address=record.address, version=version,
                 mandatory=mandatory)
        if self.events is not None and record.serial:
            self.events.record_event(record.serial, DerivedEvent(
                "firmware_available", {"version": version, "mandatory": mandatory}))

    def _in_window(self) -> bool:
        window = self.config.cloud.maintenance_window
        if window is None:
            return True
        hour = time.localtime(self.clock.time()).tm_hour
        start, end = window
        return start <= hour < end if start <= end else (hour >= start or hour < end)

    def _failed(self) -> set[tuple[str, str]]:
        try:
            raw = json.loads(self._failed_path.read_text())
        except (FileNotFoundError, ValueError):
            return set()
        return {(str(a), str(v)) for a, v in raw} if isinstance(raw, list) else set()

    def _remember_failed(self, address: str, version: str) -> None:
        failed = self._failed() | {(address, version)}
        self._failed_path.parent.mkdir(parents=True, exist_ok=True)
        self._failed_path.write_text(json.dumps(sorted(failed)))

    # ---- one update -------------------------------------------------------------------------

    async def apply(self, plan: Plan,
                    progress: Callable[[int, str], None] | None = None) -> Outcome:
        async with self._lock:
            outcome = await self._apply(plan, progress or (lambda _pct, _stage: None))
        if outcome.status == "failed" and plan.record.serial is not None:
            self._remember_failed(plan.record.address, plan.version)
        return outcome

    async def _apply(self, plan: Plan, progress: Callable[[int, str], None]) -> Outcome:
        record = plan.record
        if not valid_version(plan.version):
            return Outcome("failed", "bad_version", {"version": plan.version[:80]})
        if plan.board.lower() != record.board.lower():
            return Outcome("failed", "wrong_board", {"controller_board": record.board,
                                                     "release_board": plan.board})
        try:
            path = await self._download(plan)
        except DownloadRejected as exc:
            return Outcome("failed", "download_rejected", {"problem": exc.problem})
        except CloudResponseError as exc:
            if exc.retryable:
                return Outcome("retry", "cloud_unavailable", {"error": str(exc)})
            return Outcome("failed", "release_unavailable", {"code": exc.code})
        except CloudError as exc:
            return Outcome("retry", "cloud_unavailable", {"error": str(exc)})
        progress(5, "downloaded")
        try:
            data = await asyncio.to_thread(read_image, path)
            image = parse_image(data)
        except GatewayError as exc:  # larger than a slot, or gone
            return Outcome("failed", "bad_image", {"problem": str(exc)})
        except ImageFormatError as exc:
            return Outcome("failed", "bad_image", {"problem": str(exc)})
        problems = image_problems(image, self.config.ota.slot_limit_bytes)
        if problems:
            return Outcome("failed", "bad_image", {"problem": problems[0][1]})
        if self._public_key is not None:
            try:
                verify_signature(data, image, self._public_key)
            except SignatureError as exc:  # never retried: the cloud served a bad image
                return Outcome("failed", "bad_signature", {"problem": str(exc)})
        image_version = str(image.version)
        detail: dict[str, JsonValue] = {"image_version": image_version,
                                        "release_version": plan.version}
        if version_key(image_version) != version_key(plan.version):
            detail["version_mismatch"] = True  # a rollback published under a newer number
        current = record.firmware_version or ""
        if current and version_key(image_version) == version_key(current):
            return Outcome("skipped", "already_current", {**detail, "fw_version": current})
        if current and version_key(image_version) < version_key(current) and not (
                plan.explicit or self.config.cloud.allow_downgrade):
            return Outcome("skipped", "downgrade_not_allowed", {**detail, "fw_version": current})
        if (waited := await self._wait_idle(record.address)) is not None:
            return waited
        progress(10, "uploading")

        def on_progress(p: Progress) -> None:
            progress(10 + int(85 * p.fraction), p.phase.value)

        while True:
            try:
                report = await self.target.ota(Ota(address=record.address, image=data),
                                               on_progress)
                break
            except ControllerBusy:
                # It started watering meanwhile.
                if (waited := await self._wait_idle(record.address)) is not None:
                    return waited
            except GatewayError as exc:
                return Outcome("failed", "gateway_refused", {**detail, "error": str(exc)})
        if self.events is not None and record.serial is not None:
            self.events.record_event(record.serial, ota_event(report))
        detail.update({"result": report.result, "uploaded_bytes": report.uploaded_bytes,
                       "fw_version": report.firmware_revision or report.version})
        if report.result == "succeeded":
            return Outcome("succeeded", None, detail)
        return Outcome("failed", report.reason or report.result, detail)

    async def _wait_idle(self, address: str) -> Outcome | None:
        """None once the controller is idle; a ``retry`` when it cannot be reached (switched
        off for the winter, out of range, its bond lost): the update is postponed, never
        failed or remembered for that."""
        while True:
            try:
                state = await self.target.state(GetState(address=address))
            except ControllerBusy:
                busy: str | None = "it is busy"
            except GatewayError as exc:
                log.info("update_waits_for_controller", address=address, error=str(exc))
                return Outcome("retry", "controller_unreachable", {"error": str(exc)})
            else:
                busy = state.watering()
            if busy is None:
                return None
            log.info("update_waits_for_idle", address=address, why=busy)
            await self.clock.sleep(self.gate_poll_s)

    async def _download(self, plan: Plan) -> Path:
        """The image in the cache, named by its sha256 and hashed again before each use (ota.md
        6.5); a damaged file is fetched again. The version never goes into a file's name."""
        artifact = plan.artifact
        sha = artifact.sha256.lower() if artifact and artifact.sha256 else None
        size = artifact.size_bytes if artifact else None
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        if sha is not None:
            cached = self.cache / f"{sha}.bin"
            if await asyncio.to_thread(_holds, cached, sha):
                return cached
        # Fetched under a name of its own, then named by what it holds.
        incoming = self.cache / f"incoming-{secrets.token_hex(8)}.bin"
        link = await self.client.download_url(plan.version, plan.board, plan.channel)
        try:
            path = await self.client.download(link.url, incoming, size_bytes=size, sha256=sha)
        except DownloadRejected as exc:
            if not exc.problem.startswith(("HTTP 403", "HTTP 404")):
                raise
            # 7, rule 2: the URL expired (or its credentials did): one fresh URL, once.
            fresh = await self.client.download_url(plan.version, plan.board, plan.channel)
            path = await self.client.download(fresh.url, incoming, size_bytes=size, sha256=sha)
        return await asyncio.to_thread(_settle, path, self.cache)


def poll_delay_s(said: float, floor_s: float) -> float:
    """The cloud's poll_after_s, kept between the configured floor and an hour."""
    return min(JOBS_POLL_MAX_S, max(floor_s, said))


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _holds(path: Path, sha: str) -> bool:
    """Whether ``path`` holds the bytes of ``sha``; a file that does not is removed."""
    try:
        if _digest(path) == sha:
            return True
    except FileNotFoundError:
        return False
    log.warning("firmware_cache_damaged", file=path.name)
    path.unlink(missing_ok=True)
    return False


def _settle(path: Path, cache: Path) -> Path:
    """Name a fresh download by its sha256, and keep the cache to the newest few images."""
    named = cache / f"{_digest(path)}.bin"
    path.replace(named)
    named.touch()  # its use makes it the newest
    images = sorted(cache.glob("*.bin"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in images[CACHE_KEEP:]:
        old.unlink(missing_ok=True)
    return named

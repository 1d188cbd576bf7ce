"""Every body the gateway sends to or reads from the cloud (cloud-api.md; 11 is a proposal).

Responses ignore fields they do not know (the backend adds fields over time) but type what they
keep strictly; requests forbid extras. Field names follow the wire, Cognito's included.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    StringConstraints,
)

# cloud-api.md 1: exactly six ASCII digits, sent as a string.
Serial = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
DEFAULT_BOARD = "arduino_nano_33_ble"
DEFAULT_CHANNEL = "stable"


def iso_ms(value: datetime) -> str:
    """cloud-api.md 1: ISO-8601 UTC with milliseconds, as JavaScript's toISOString() writes."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


Timestamp = Annotated[datetime, PlainSerializer(iso_ms, return_type=str)]
JsonObject = dict[str, JsonValue]


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- error bodies (3) ---------------------------------------------------------------------------

class BackendErrorDetail(_Response):
    code: str
    message: str = ""
    current_doc_version: int | None = None


class BackendErrorBody(_Response):
    error: BackendErrorDetail


class GatewayErrorBody(_Response):
    message: str


# ---- Cognito (2.3) ------------------------------------------------------------------------------

class CognitoTokens(_Response):
    IdToken: str
    AccessToken: str = ""
    RefreshToken: str | None = None
    # 2.3: the app assumes an hour when ExpiresIn is missing.
    ExpiresIn: Annotated[int, Field(gt=0)] = 3600
    TokenType: str = "Bearer"


class InitiateAuthResponse(_Response):
    AuthenticationResult: CognitoTokens | None = None
    ChallengeName: str | None = None


class InitiateAuthRequest(_Request):
    AuthFlow: Literal["USER_PASSWORD_AUTH", "REFRESH_TOKEN_AUTH"]
    ClientId: str
    AuthParameters: dict[str, str]


class CognitoErrorBody(_Response):
    type_: str = Field(alias="__type")
    message: str = ""

    @property
    def kind(self) -> str:
        """2.3: the type may carry a namespace prefix ending in '#'."""
        return self.type_.rsplit("#", 1)[-1]


# ---- health (4) ---------------------------------------------------------------------------------

class Health(_Response):
    ok: bool
    status: str
    timestamp: Timestamp | None = None


# ---- OTA (7, ota.md 6) --------------------------------------------------------------------------

class Artifact(_Response):
    name: str | None = None
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    sha256: Sha256Hex | None = None


class DownloadLink(_Response):
    url: str
    expires_at: Timestamp | None = None


class Release(_Response):
    version: str
    channel: str = DEFAULT_CHANNEL
    mandatory: bool = False
    artifact: Artifact | None = None
    notes: str | None = None
    download: DownloadLink | None = None


class OtaLatest(_Response):
    ok: bool
    update_available: bool
    latest: Release | None = None


class DownloadUrl(_Response):
    ok: bool
    version: str
    url: str
    download: DownloadLink | None = None


class CreateRelease(_Request):
    """ota.md 6.6: what the release pipeline sends to create a draft (admin token)."""

    version: str
    channel: str = DEFAULT_CHANNEL
    board: str = DEFAULT_BOARD
    mandatory: bool = False
    notes: str = ""
    artifact_name: str = "zephyr.signed.bin"
    artifact_size_bytes: Annotated[int, Field(ge=0)] | None = None
    artifact_sha256: str = ""


class CreatedRelease(_Response):
    ok: bool
    version: str
    channel: str
    board: str
    storage_key: str
    upload_url: str | None = None
    upload_expires_in: int | None = None


class PublishRelease(_Request):
    channel: str = DEFAULT_CHANNEL
    board: str = DEFAULT_BOARD


class PublishedRelease(_Response):
    ok: bool
    version: str
    channel: str
    board: str
    published: bool
    published_at: Timestamp | None = None


# ---- user state (5) -----------------------------------------------------------------------------

class UserState(_Response):
    uid: str
    state: JsonValue = None
    updatedAt: Timestamp | None = None
    version: str | None = None


class SaveUserState(_Request):
    # 5: always an object (an array would replace the whole stored state).
    state: JsonObject
    version: Annotated[str, StringConstraints(max_length=64)] = "gw-v1"


class SavedUserState(_Response):
    ok: bool
    bytes: int
    version: str
    updatedAt: Timestamp | None = None


# ---- devices (6, 9) -----------------------------------------------------------------------------

class OwnedDevice(_Response):
    serial: str | None = None
    hw_id: str | None = None
    thing_name: str | None = None
    status: str | None = None
    claimed_at: Timestamp | None = None


class MyDevices(_Response):
    ok: bool
    owner_uid: str | None = None
    count: int = 0
    devices: list[OwnedDevice] = []


class ClaimDevice(_Request):
    serial: Serial


class ClaimedDevice(_Response):
    ok: bool
    claimed: bool
    serial: str
    hw_id: str | None = None
    thing_name: str | None = None
    owner_uid: str | None = None
    claimed_at: Timestamp | None = None
    already_owned: bool = False


class UnclaimDevice(_Request):
    serial: Serial
    reason: Annotated[str, StringConstraints(max_length=256)] | None = None


class UnclaimedDevice(_Response):
    ok: bool
    unclaimed: bool
    serial: str
    hw_id: str | None = None


class Provision(_Request):
    """9: the factory line registers a board (factory token; the emulator's and tests' only)."""

    hw_id: Annotated[str, StringConstraints(pattern=r"^[A-Fa-f0-9:_-]{8,64}$")]
    metadata: dict[str, str | int | float | bool] = {}


class Provisioned(_Response):
    ok: bool
    created: bool
    hw_id: str
    serial: str
    status: str


# ---- proposed gateway routes (11) ---------------------------------------------------------------

class RegisterGateway(_Request):
    gateway_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: str
    sw_version: str
    platform: str
    capabilities: list[str]
    serials: list[Serial]
    expected_doc_version: int | None = None


class RejectedSerial(_Response):
    serial: str
    code: str


class RegisteredGateway(_Response):
    ok: bool
    created: bool
    gateway_id: str
    owner_uid: str
    doc_version: int
    registered_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    rejected_serials: list[RejectedSerial] = []


class SnapshotItem(_Request):
    kind: Literal["snapshot"] = "snapshot"
    serial: Serial
    seq: Annotated[int, Field(ge=0)]
    observed_at: Timestamp
    fw_version: str | None = None
    expected_doc_version: int | None = None
    data: JsonObject


class EventItem(_Request):
    kind: Literal["event"] = "event"
    serial: Serial
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    observed_at: Timestamp
    type: str
    data: JsonObject


ReportItem = Annotated[SnapshotItem | EventItem, Field(discriminator="kind")]
# 11 P2 limits.
MAX_ITEMS_PER_BATCH = 100
MAX_BATCH_BYTES = 256 * 1024
MAX_ITEM_DATA_BYTES = 8 * 1024


class ReportDeviceState(_Request):
    gateway_id: str
    batch_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    sent_at: Timestamp
    items: Annotated[list[ReportItem], Field(min_length=1, max_length=MAX_ITEMS_PER_BATCH)]


class ItemResult(_Response):
    index: int
    status: Literal["stored", "duplicate", "stale", "rejected"]
    doc_version: int | None = None
    code: str | None = None
    current_doc_version: int | None = None


class ReportedDeviceState(_Response):
    ok: bool
    batch_id: str
    replayed: bool = False
    accepted: int
    duplicates: int
    results: list[ItemResult]


JobStatus = Literal["queued", "in_progress", "succeeded", "failed", "rejected", "expired"]


class OtaJobSpec(_Response):
    version: str
    board: str = DEFAULT_BOARD
    channel: str = DEFAULT_CHANNEL
    mandatory: bool = False
    artifact: Artifact | None = None


class CommandSpec(_Response):
    name: str
    args: JsonObject = {}


class Job(_Response):
    job_id: str
    serial: str
    type: Literal["ota_update", "command"]
    status: JobStatus
    doc_version: int
    created_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    ota: OtaJobSpec | None = None
    command: CommandSpec | None = None
    progress_pct: int | None = None
    detail: JsonObject = {}


class GatewayJobs(_Response):
    ok: bool
    gateway_id: str
    jobs: list[Job]
    next_cursor: str | None = None
    # 11 P3: one poll per poll_after_s per gateway, else 429.
    poll_after_s: Annotated[float, Field(gt=0)] = 60.0


class UpdateGatewayJob(_Request):
    gateway_id: str
    job_id: str
    status: JobStatus
    expected_doc_version: int | None = None
    progress_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    detail: JsonObject = {}


class UpdatedGatewayJob(_Response):
    ok: bool
    job: Job


class CreateDeviceJob(_Request):
    """11 P3 producer side (the app or an operator): used by tests and the emulator."""

    serial: Serial
    type: Literal["ota_update", "command"]
    ota: OtaJobSpec | None = None
    command: CommandSpec | None = None
    expires_in_s: Annotated[int, Field(gt=0)] = 7 * 24 * 3600


def model_json(model: BaseModel) -> dict[str, Any]:
    """A request model as the JSON object it goes on the wire as (aliases, no unset Nones)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)

"""The one vocabulary every caller speaks: typed requests, their results, and the controller
state they read.

The CLI, the control socket, and later MQTT commands and cloud jobs all parse into ``Request``
(a union discriminated on ``op``) and get back the result model ``RESULTS`` names for that op.
Validation lives here, so a valve duration or a channel is refused the same way whoever asks.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from firmware_bridge.gatt.limits import CHANNELS, MAX_TASK_MINUTES, NO_CHANNEL
from firmware_bridge.ota.outcome import ConfirmPolicy
from gateway.config import LinkPolicy, OtaPolicy
from gateway.ops.health import CloudStatus, HubStatus

# The longest valve-open the gateway sends, in minutes: the firmware accepts up to 1440 but
# keeps a task's minutes in one byte, so anything longer would run short (device-ble.md Δ21).
MAX_VALVE_MINUTES = MAX_TASK_MINUTES
# Requests name a file on the hub for OTA; a path longer than this is not a path.
MAX_PATH = 4096
# The controller's upload slot (ota.md 2.6: slot 1 is 1 MiB); no image is larger.
MAX_IMAGE_BYTES = 1024 * 1024


class LinkState(StrEnum):
    """Where a controller's link is: the supervisor's state machine (gateway/link/supervisor.py)
    and what `awgw state` shows."""

    IDLE = "idle"
    WAITING_SLOT = "waiting_slot"
    CONNECTING = "connecting"
    SYNCING = "syncing"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    BOND_LOST = "bond_lost"
    FAULTED = "faulted"
    UPDATING = "updating"
    STOPPED = "stopped"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _zone_or_master(channel: int) -> int:
    if not (0 <= channel < CHANNELS or channel == NO_CHANNEL):
        raise ValueError(f"channel {channel} is out of range (0..{CHANNELS - 1}, or "
                         f"{NO_CHANNEL} for the master valve)")
    return channel


Address = Annotated[str, Field(min_length=1, max_length=64)]
Zone = Annotated[int, Field(ge=0, lt=CHANNELS)]
def _runnable_minutes(minutes: int) -> int:
    if not 1 <= minutes <= MAX_VALVE_MINUTES:
        raise ValueError(f"minutes must be 1..{MAX_VALVE_MINUTES}: the controller's firmware "
                         f"keeps a task's minutes in one byte (device-ble.md Δ21), so {minutes} "
                         "would not run as asked; water longer in separate runs")
    return minutes


Minutes = Annotated[int, AfterValidator(_runnable_minutes)]


# ---- requests ------------------------------------------------------------------------------

class Ping(_Model):
    op: Literal["ping"] = "ping"


class Scan(_Model):
    op: Literal["scan"] = "scan"


class Pair(_Model):
    op: Literal["pair"] = "pair"
    address: Address
    passkey: Annotated[int, Field(ge=0, le=999_999)] | None = None
    # The controller's board, as releases name it (cloud-api.md 1); default arduino_nano_33_ble.
    board: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")] | None = None
    ota_policy: OtaPolicy | None = None
    # Pin it to this radio (an adapter or an ESPHome proxy named in the config); kept across
    # restarts. None: the gateway chooses per connect.
    radio: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")] | None = None


class Unpair(_Model):
    op: Literal["unpair"] = "unpair"
    address: Address


class Devices(_Model):
    op: Literal["devices"] = "devices"


class GetState(_Model):
    op: Literal["state"] = "state"
    address: Address


class Refresh(_Model):
    """Read the controller now, whatever its schedule, and answer with the fresh state."""

    op: Literal["refresh"] = "refresh"
    address: Address


class ValveOpen(_Model):
    op: Literal["valve_open"] = "valve_open"
    address: Address
    channel: Zone  # the master valve opens with the zones, never alone
    minutes: Minutes

    @property
    def name(self) -> str:
        return f"valve {self.channel} open {self.minutes} min"


class ValveClose(_Model):
    op: Literal["valve_close"] = "valve_close"
    address: Address
    channel: Annotated[int, AfterValidator(_zone_or_master)]

    @property
    def name(self) -> str:
        return f"valve {self.channel} close"


class Ota(_Model):
    """A firmware update over BLE of a paired controller, with the image itself: the daemon
    never opens a path a client names (hostile-edges M1: a FIFO blocked its loop, and it read
    files the client could not), and a file in the user's home or /tmp is out of the unit's
    sight anyway (ProtectHome, PrivateTmp). On the socket the image travels as base64."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True,
                              ser_json_bytes="base64", val_json_bytes="base64")

    op: Literal["ota"] = "ota"
    address: Address
    image: Annotated[bytes, Field(min_length=1, max_length=MAX_IMAGE_BYTES, repr=False)]
    window: Annotated[int, Field(ge=1, le=64)] | None = None
    confirm: ConfirmPolicy = ConfirmPolicy.SELF_THEN_EXPLICIT
    pre_erase: bool = False
    slot_limit: Annotated[int, Field(gt=0)] | None = None


# cloud-api.md 1: a controller's cloud serial is exactly six digits, as a string.
Serial = Annotated[str, Field(pattern=r"^[0-9]{6}$")]


class CloudStatusQuery(_Model):
    op: Literal["cloud_status"] = "cloud_status"


class HubStatusQuery(_Model):
    """`awgw status`: the hub's health on one screen."""

    op: Literal["status"] = "status"


class Claim(_Model):
    """Claim a controller for the linked account (cloud-api.md 6), by its serial."""

    op: Literal["claim"] = "claim"
    serial: Serial


class Unclaim(_Model):
    op: Literal["unclaim"] = "unclaim"
    serial: Serial
    reason: Annotated[str, Field(max_length=256)] | None = None


Request = Annotated[Ping | Scan | Pair | Unpair | Devices | GetState | Refresh | ValveOpen
                    | ValveClose | Ota | CloudStatusQuery | Claim | Unclaim | HubStatusQuery,
                    Field(discriminator="op")]
REQUEST: TypeAdapter[Request] = TypeAdapter(Request)


# ---- results -------------------------------------------------------------------------------

class Pong(_Model):
    pong: bool = True


class ScanEntry(_Model):
    address: str
    name: str | None
    rssi: int
    paired: bool


class DeviceEntry(_Model):
    address: str
    name: str
    serial: str | None
    firmware_version: str | None
    bonded: bool
    policy: LinkPolicy
    last_seen: float | None
    link: LinkState | None = None
    board: str = "arduino_nano_33_ble"
    ota_policy: OtaPolicy | None = None


class CommandResult(_Model):
    address: str
    command: str
    ok: bool
    status: str
    detail: str
    att_code: int | None = None
    queue_error: int | None = None


class ValveState(_Model):
    channel: int
    open: bool
    name: str | None
    at: float | None


class StatusView(_Model):
    code: int
    name: str
    ok: bool
    at: float | None


class FlowView(_Model):
    pulses_per_second: int
    litres_per_minute: float
    at: float | None


class AlarmView(_Model):
    """The alarm slot as the firmware means it (``gatt.alarms.read_alarm``): ``active`` from the
    code, its data and System Status together; ``healed`` for a clear frame."""

    code: int
    name: str  # UNKNOWN for a code with no documented meaning
    active: bool
    healed: bool
    data: int  # as sent (u16)
    temperature_c: float | None = None  # FREEZE_LOCKOUT, signed
    sensor_stale: bool = False  # FREEZE_LOCKOUT on stale environmental data
    device_timestamp: int
    at: float | None


class TaskView(_Model):
    channel: int
    mode: str
    status: str
    target: int
    current: int
    total_volume_ml: int
    at: float | None

    @property
    def runs(self) -> bool:
        return self.status in ("running", "paused")


class QueueView(_Model):
    pending: int
    completed: int
    current_channel: int | None
    error: int | None = None  # the frame was a command's error report (device-ble.md 5.5)
    at: float | None


class EnvironmentView(_Model):
    """The controller's environmental sensor (device-ble.md 6.1), when it has a valid one."""

    temperature_c: float
    humidity_pct: float
    pressure_hpa: float
    at: float | None


class RainView(_Model):
    """The tipping-bucket rain gauge (device-ble.md 6.2), when one is fitted and active."""

    today_mm: float
    last_24h_mm: float
    rate_mm_h: float
    at: float | None


class ControllerState(_Model):
    """What the gateway knows of one controller, each value with when it arrived (the
    gateway's clock); ``fresh`` is false once the last full refresh is older than allowed."""

    address: str
    firmware_version: str | None
    link: LinkState
    policy: LinkPolicy | None = None
    fresh: bool
    updated_at: float | None
    age_s: float | None
    last_failure: str | None
    decode_problems: int
    valves: list[ValveState]
    system_status: StatusView | None
    flow: FlowView | None
    alarm: AlarmView | None
    current_task: TaskView | None
    task_queue: QueueView | None
    environment: EnvironmentView | None = None
    rain: RainView | None = None
    # The radio that serves it (its link's, or its last connect's), and the RSSI each radio
    # heard in the last minute, by radio name.
    radio: str | None = None
    rssi_by_radio: dict[str, int] = {}

    def watering(self) -> str | None:
        """Why this controller must not be disturbed by an update, or None when it is idle."""
        task = self.current_task
        if task is not None and task.runs:
            return f"it is watering channel {task.channel} ({task.status})"
        opened = [v.channel for v in self.valves if v.open]
        if opened:
            return f"valve {opened[0]} is open"
        if self.task_queue is not None and self.task_queue.pending:
            return f"{self.task_queue.pending} task(s) are queued"
        return None


# How an update ended: firmware_bridge's OtaResult, as the report carries it.
UpdateResult = Literal["succeeded", "reverted", "failed"]


class OtaReport(_Model):
    """How an update ended (firmware_bridge's OtaOutcome) and what the controller said after."""

    result: UpdateResult
    reason: str | None
    detail: str
    rc: int | None
    hash: str
    version: str
    uploaded_bytes: int
    seconds: float
    skipped_upload: bool
    # What the link cost (firmware_bridge's OtaOutcome): frames never answered, windows sent
    # again, connections made again, the window the upload settled on.
    frames_lost: int = 0
    windows_resent: int = 0
    reconnects: int = 0
    window: int = 0
    # Device Information's firmware revision read after the reboot (ota.md 5.2 V), and whether
    # it names the image's version (a mismatch is a warning: not every build injects it).
    firmware_revision: str | None = None
    revision_matches: bool | None = None
    gatt_cache_refreshed: bool = False


class ClaimResult(_Model):
    serial: str
    claimed: bool
    owner_uid: str | None = None
    detail: str = ""


Result = (Pong | list[ScanEntry] | DeviceEntry | list[DeviceEntry] | ControllerState
          | CommandResult | OtaReport | CloudStatus | ClaimResult | HubStatus)

# What each op answers with: the daemon's client parses the socket's answer into this.
PONG: TypeAdapter[Pong] = TypeAdapter(Pong)
SCAN_ENTRIES: TypeAdapter[list[ScanEntry]] = TypeAdapter(list[ScanEntry])
DEVICE: TypeAdapter[DeviceEntry] = TypeAdapter(DeviceEntry)
DEVICES: TypeAdapter[list[DeviceEntry]] = TypeAdapter(list[DeviceEntry])
STATE: TypeAdapter[ControllerState] = TypeAdapter(ControllerState)
COMMAND: TypeAdapter[CommandResult] = TypeAdapter(CommandResult)
OTA_REPORT: TypeAdapter[OtaReport] = TypeAdapter(OtaReport)
CLOUD_STATUS: TypeAdapter[CloudStatus] = TypeAdapter(CloudStatus)
CLAIM: TypeAdapter[ClaimResult] = TypeAdapter(ClaimResult)
HUB_STATUS: TypeAdapter[HubStatus] = TypeAdapter(HubStatus)
RESULTS: dict[str, TypeAdapter[Any]] = {
    "ping": PONG, "scan": SCAN_ENTRIES, "pair": DEVICE, "unpair": DEVICE, "devices": DEVICES,
    "state": STATE, "refresh": STATE, "valve_open": COMMAND, "valve_close": COMMAND,
    "ota": OTA_REPORT, "cloud_status": CLOUD_STATUS, "claim": CLAIM, "unclaim": CLAIM,
    "status": HUB_STATUS,
}

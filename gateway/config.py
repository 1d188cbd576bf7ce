"""The daemon's configuration: one TOML file, validated by pydantic at the boundary."""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/awgw/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/awgw")
# systemd's RuntimeDirectory=awgw: where the service puts its control socket.
DEFAULT_RUNTIME_DIR = Path("/run/awgw")

LogLevel = Literal["debug", "info", "warning", "error"]


class LinkPolicy(StrEnum):
    """KEEP holds the link (instant commands, the phone app is locked out: the controller takes
    one connection); SHARE connects, syncs and releases so the phone app can reach it."""

    KEEP = "keep"
    SHARE = "share"


# BlueZ names its adapters hci0, hci1, ...
AdapterName = Annotated[str, Field(pattern=r"^hci[0-9]{1,2}$")]
# A radio's name as `awgw pair --radio` and `awgw status` show it.
RadioName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
# A Pi's onboard controller manages ~4-7 LE links in practice; 3 leaves room for the phone
# and for a connect in progress. An ESP32 proxy offers 3 by default (ESPHome's
# bluetooth_proxy), at most 9 with a larger build.
DEFAULT_SLOTS = 3
Slots = Annotated[int, Field(ge=1, le=10)]


class AdapterSettings(BaseModel):
    """One of the hub's own Bluetooth adapters and how many links the gateway may hold on it."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: AdapterName
    slots: Slots = DEFAULT_SLOTS


class LinkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    # The first adapter: pairing, bonds and the one-adapter shorthand (`adapter`, `max_links`).
    adapter: AdapterName = "hci0"
    max_links: Slots = DEFAULT_SLOTS
    # Every adapter the gateway uses; when empty, the shorthand's one adapter.
    adapters: tuple[AdapterSettings, ...] = ()
    default_policy: LinkPolicy = LinkPolicy.SHARE
    # How old a controller's state may get: share visits are spaced by it, keep-links poll
    # the Bulk Snapshot at least this often.
    refresh_period_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # BlueZ's LE connect gives up after its own ~20 s; 15 s ends our wait a little earlier
    # so the scheduler can move on to the next controller.
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 15.0
    # No advertisement from any controller for this long while some are not connected:
    # the scanner is presumed stuck and the recovery ladder starts.
    scan_watchdog_s: Annotated[float, Field(gt=0)] = 120.0
    time_zone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_way_to_name_adapters(cls, data: object) -> object:
        if not isinstance(data, dict) or not data.get("adapters"):
            return data
        if "adapter" in data or "max_links" in data:
            raise ValueError("give either adapters = [...] or adapter/max_links, not both")
        first = data["adapters"][0]
        if isinstance(first, dict) and "name" in first:
            # The shorthand's fields follow the list's first adapter (pairing happens there).
            data = {**data, "adapter": first["name"],
                    "max_links": first.get("slots", DEFAULT_SLOTS)}
        return data

    @model_validator(mode="after")
    def _adapters_named_once(self) -> Self:
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"an adapter is listed twice in adapters: {names}")
        return self

    @property
    def local_adapters(self) -> tuple[AdapterSettings, ...]:
        return self.adapters or (AdapterSettings(name=self.adapter, slots=self.max_links),)


class OtaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    # ota.md 5.2 W: MCUboot swaps ~180 sectors through scratch after the reset, tens of seconds
    # on an nRF52840; the controller is retried with back-off for this long before the update
    # is reported unreachable.
    reboot_window_s: Annotated[float, Field(gt=0, le=1800)] = 180.0
    # ota.md 5.3: the firmware confirms itself after a good boot; poll for it this long before
    # the confirm policy decides.
    self_confirm_wait_s: Annotated[float, Field(ge=0, le=600)] = 60.0
    # The project's MCUboot public key (PEM; `imgtool getpub -e pem`): when set, every image
    # (from the cloud, the staged directory or the CLI) must carry a signature it verifies
    # before a byte is sent. `awgw doctor` warns while none is set.
    public_key: AbsolutePath | None = None
    # ota.md 1.6: the largest file that fits slot 0 with the swap trailer and one sector to
    # spare on the Feb-2026 layout (0xB5000); a request may ask for less, never more.
    slot_limit_bytes: Annotated[int, Field(ge=0x1000, le=0x100000)] = 0xB5000


class CloudMode(StrEnum):
    """cloud-api.md 11 vs 5: the proposed gateway routes, or the user state document of the
    backend as deployed today; AUTO probes registerGateway once at start-up."""

    AUTO = "auto"
    GATEWAY_ROUTES = "gateway_routes"
    USER_STATE = "user_state"


class OtaPolicy(StrEnum):
    """What the gateway does with a release found by its own ota/latest check: MANUAL only
    reports it, MANDATORY applies releases marked mandatory, AUTO applies any newer one."""

    MANUAL = "manual"
    MANDATORY = "mandatory"
    AUTO = "auto"


def _https_or_loopback(url: str) -> str:
    from urllib.parse import urlsplit  # only for a config that names a URL: the CLI stays light

    host = urlsplit(url).hostname or ""
    if url.startswith("https://") or host == "localhost" or _is_loopback(host):
        return url
    raise ValueError("must be https:// (plain http only to this machine: it would carry the "
                     "password and tokens in clear)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path ({path} depends on where the daemon starts)")
    return path


HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2048),
                    AfterValidator(_https_or_loopback)]
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class CloudConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    enabled: bool = False
    base_url: HttpUrl | None = None
    mode: CloudMode = CloudMode.AUTO
    # cloud-api.md 2.3: https://cognito-idp.{region}.amazonaws.com/ and the app's client id.
    cognito_endpoint: HttpUrl | None = None
    client_id: str = ""
    gateway_name: Annotated[str, Field(min_length=1, max_length=64)] = "AutoWatering gateway"
    # At most one snapshot per controller per this period (and only when something changed).
    snapshot_period_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # device-ble.md 6.10: history a few times a day (and right after each watering).
    history_period_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    # ota.md 6.9: ota/latest per (board, channel) every 6 h; jitter is added.
    ota_check_period_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    # cloud-api.md 5: one saveUserState per user at a time, and not more often than this.
    user_state_period_s: Annotated[float, Field(gt=0)] = 60.0
    # The least time between two polls of gatewayJobs, whatever the cloud's poll_after_s says
    # (a hostile or broken cloud must not make the gateway poll in a loop).
    jobs_poll_min_s: Annotated[float, Field(ge=1, le=3600)] = 10.0
    ota_policy: OtaPolicy = OtaPolicy.MANUAL
    ota_channel: str = "stable"
    allow_downgrade: bool = False
    # Local hours [start, end) in which policy-driven updates may run; None: any time.
    maintenance_window: tuple[Annotated[int, Field(ge=0, le=23)],
                              Annotated[int, Field(ge=0, le=24)]] | None = None

    @model_validator(mode="after")
    def _reachable(self) -> Self:
        if self.enabled and self.base_url is None:
            raise ValueError("cloud.base_url is required when the cloud is enabled")
        return self


class DiscoveryStyle(StrEnum):
    """Home Assistant MQTT discovery: one payload per device (HA 2024.11+), one per entity
    (older Home Assistant), or none."""

    DEVICE = "device"
    ENTITY = "entity"
    OFF = "off"


MqttTopic = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", max_length=128)]
# What MQTT commands may ask, by op (gateway.ops.models), plus "update_install" (Home
# Assistant's update entity installing the offered firmware). Reading and watering by default:
# anyone who may publish on the broker (often anyone on the LAN) can do what is allowed here, so
# installing firmware ("update_install", still never a downgrade) or any image file on the hub
# ("ota") is allowed only when added.
MqttOp = Literal["valve_open", "valve_close", "refresh", "state", "ota", "update_install"]
DEFAULT_MQTT_OPS: tuple[MqttOp, ...] = ("valve_open", "valve_close", "refresh", "state")


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    enabled: bool = False
    host: Annotated[str, Field(min_length=1, max_length=255)] = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: bool = False
    ca_file: AbsolutePath | None = None
    username: str | None = None
    # The password is read from this file (or the systemd credential awgw-mqtt-password),
    # never written in the config.
    password_file: AbsolutePath | None = None
    topic_prefix: MqttTopic = "autowatering"
    discovery_prefix: MqttTopic = "homeassistant"
    discovery: DiscoveryStyle = DiscoveryStyle.DEVICE
    # The broker drops a client silent for 1.5x this; the last will then says offline.
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    allowed_ops: tuple[MqttOp, ...] = DEFAULT_MQTT_OPS
    # What a Home Assistant valve OPEN runs for until the zone's minutes are set.
    default_valve_minutes: Annotated[int, Field(ge=1, le=255)] = 10


class EsphomeProxySettings(BaseModel):
    """An ESPHome Bluetooth proxy on the LAN. Its Noise key (the `api: encryption: key:` of
    its YAML) is read from the systemd credential awgw-esphome_<name>, else from ``key_file``;
    never from this file. With neither, the API is spoken in plaintext (`awgw doctor` warns)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: RadioName
    host: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:_-]+$")]
    port: Annotated[int, Field(ge=1, le=65535)] = 6053
    key_file: AbsolutePath | None = None
    # At most this many of the proxy's slots for the gateway (it may serve others too);
    # None: whatever the proxy reports free.
    slots: Slots | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_key_here(cls, data: object) -> object:
        if isinstance(data, dict) and (keys := {"key", "noise_key", "noise_psk",
                                                "encryption_key"} & data.keys()):
            name = data.get("name", "<name>")
            raise ValueError(f"{sorted(keys)[0]}: the proxy's key never goes in the config; "
                             f"put it in the systemd credential awgw-esphome_{name} or in a "
                             f"file named by key_file")
        return data


class RadiosConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    esphome: tuple[EsphomeProxySettings, ...] = ()


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    state_dir: AbsolutePath = DEFAULT_STATE_DIR
    control_socket: AbsolutePath | None = None
    # How long `awgw pair` keeps the pairing agent accepting requests.
    pairing_window_s: Annotated[float, Field(gt=0, le=600)] = 120.0
    log_level: LogLevel = "info"
    # Prometheus metrics on 127.0.0.1 (gateway/daemon/metrics.py); 0 turns them off.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9877
    link: LinkSettings = Field(default_factory=LinkSettings)
    ota: OtaConfig = Field(default_factory=OtaConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    radios: RadiosConfig = Field(default_factory=RadiosConfig)

    @model_validator(mode="after")
    def _radios_named_once(self) -> Self:
        names = [a.name for a in self.link.local_adapters] + [p.name for p in self.radios.esphome]
        if len(set(names)) != len(names):
            raise ValueError(f"two radios share a name: {sorted(names)}")
        return self

    @property
    def cloud_dir(self) -> Path:
        return self.state_dir / "cloud"

    @property
    def socket_path(self) -> Path:
        if self.control_socket is not None:
            return self.control_socket
        runtime = os.environ.get("RUNTIME_DIRECTORY")  # set for the service itself
        if runtime:
            return Path(runtime) / "control.sock"
        if self.state_dir == DEFAULT_STATE_DIR and DEFAULT_RUNTIME_DIR.is_dir():
            return DEFAULT_RUNTIME_DIR / "control.sock"  # the CLI finding the service
        return self.state_dir / "control.sock"

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.sqlite3"

    # Every file the daemon keeps in its state directory is named here, once.
    @property
    def cloud_outbox_path(self) -> Path:
        return self.state_dir / "outbox.sqlite3"

    @property
    def mqtt_outbox_path(self) -> Path:
        return self.state_dir / "mqtt-outbox.sqlite3"

    @property
    def cloud_status_path(self) -> Path:
        """What the cloud relay last did, for `awgw cloud status` while the daemon is down."""
        return self.cloud_dir / "status.json"

    @property
    def failed_updates_path(self) -> Path:
        """Cloud releases that failed or reverted on a controller: never retried blindly."""
        return self.cloud_dir / "ota_failed.json"

    @property
    def firmware_cache_dir(self) -> Path:
        """Cloud releases downloaded, named by their sha256."""
        return self.state_dir / "firmware"

    @property
    def staged_firmware_dir(self) -> Path:
        """Images a person staged for Home Assistant's update entity (<node>.bin)."""
        return self.firmware_cache_dir / "staged"

    @property
    def ota_sessions_dir(self) -> Path:
        """An update's session on disk, so it resumes after a restart."""
        return self.state_dir / "ota"


def load_config(path: Path | None = None) -> GatewayConfig:
    """Read ``path`` (or $AWGW_CONFIG, or /etc/awgw/config.toml if present); $AWGW_STATE_DIR
    overrides the state directory so tests and unprivileged users need no file."""
    chosen = path or (Path(os.environ["AWGW_CONFIG"]) if "AWGW_CONFIG" in os.environ else None)
    raw: dict[str, object] = {}
    if chosen is not None or DEFAULT_CONFIG_PATH.exists():
        file = chosen or DEFAULT_CONFIG_PATH
        try:
            raw = tomllib.loads(file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {file} is not valid TOML: {exc}") from exc
    if "AWGW_STATE_DIR" in os.environ:
        raw["state_dir"] = os.environ["AWGW_STATE_DIR"]
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc

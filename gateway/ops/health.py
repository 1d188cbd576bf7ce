"""The hub's health as every reader sees it: `awgw status`, systemd's STATUS= line, the metrics,
`awgw doctor` and the demo all read these models, so they never disagree on what "up" means."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class RelayState(StrEnum):
    """One way out of the house. Only UP counts as up, for every reader."""

    DISABLED = "disabled"
    # Delivering: the broker connected, or the cloud's last call succeeded after its last failure.
    UP = "up"
    # Configured and trying, nothing delivered yet (linked but not yet called, first connect).
    STARTING = "starting"
    # The last attempt failed; the relay retries with backoff.
    DOWN = "down"
    # The cloud relay has no link yet (`awgw cloud link`) or must be linked again.
    UNLINKED = "unlinked"
    RELINK_NEEDED = "relink_needed"


class PartState(StrEnum):
    """A guarded part of the daemon (gateway/supervise.py)."""

    UP = "up"
    # Crashed; waiting out its backoff before it is started again.
    RESTARTING = "restarting"
    # Crashed too often in a row: stays down, the rest of the hub runs on.
    FAILED = "failed"
    # Finished by design (e.g. cloud jobs on a backend without gateway routes).
    STOPPED = "stopped"


class PartHealth(_Model):
    name: str
    state: PartState
    restarts: int = 0
    reason: str | None = None  # the last crash: "RuntimeError: ..."
    child_crashes: int = 0  # one-shot children (commands, jobs) that crashed

    @property
    def up(self) -> bool:
        return self.state in (PartState.UP, PartState.STOPPED)


class OutboxView(_Model):
    depth: int
    bytes: int
    oldest_age_s: float | None
    by_kind: dict[str, int]
    dropped: dict[str, int]


class CloudStatus(_Model):
    """`awgw cloud status`: how the relay to the cloud stands (cloud-api.md 2.4, 11)."""

    enabled: bool
    mode: str  # configured: auto | gateway_routes | user_state
    active_mode: str | None  # what auto decided; None until the probe answered
    gateway_id: str | None
    link: str  # unlinked | linked | relink_needed
    user: str | None
    token_expires_in_s: float | None
    outbox: OutboxView | None
    delivered: int = 0
    rejected: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    note: str | None = None


class RadioHealth(_Model):
    """The radio side as the watchdog judges it (gateway/daemon/health.py)."""

    adapter: str
    ok: bool
    scanning: bool
    reason: str | None  # why it is not ok: "adapter hci0 is missing", "supervisor stuck", ...


class RadioKind(StrEnum):
    ADAPTER = "adapter"  # one of the hub's own adapters
    PROXY = "proxy"  # an ESPHome Bluetooth proxy


class RadioStatus(_Model):
    """One radio of the gateway (an adapter or a proxy) as `awgw status` and the metrics
    show it."""

    name: str
    kind: RadioKind
    up: bool
    reason: str | None = None  # why it is down, with the remedy
    slots_used: int
    slots_limit: int
    heard: int  # paired controllers it heard in the last minute
    served: int  # paired controllers whose last connect went through it
    # A proxy's host, ESPHome version, API version and encryption.
    detail: dict[str, str] = {}


class UpdateInProgress(_Model):
    address: str
    phase: str
    offset: int
    total: int
    rate_bytes_per_s: float


class RelayHealth(_Model):
    """One way out of the house (the cloud or the MQTT broker) as `awgw status` shows it."""

    enabled: bool
    state: RelayState
    outbox_depth: int | None = None
    outbox_dropped: int = 0
    delivered: int = 0
    lag_s: float | None = None  # age of the oldest item still waiting to go out
    last_error: str | None = None
    # A damaged outbox file moved aside since the start (its items were not relayed).
    outbox_quarantined: str | None = None
    # Why the outbox keeps items in memory only (its file would not open at all).
    outbox_in_memory: str | None = None
    # Another live process heard using this gateway's id on the broker (a copied state
    # directory): the two take the broker session from each other.
    identity_clash: str | None = None

    @property
    def up(self) -> bool:
        return self.state is RelayState.UP


class HubStatus(_Model):
    """`awgw status`, STATUS= for systemd and the metrics all read this one model."""

    version: str
    uptime_s: float
    ready: bool
    radio: RadioHealth
    # Every radio: the hub's adapters, then the ESPHome proxies.
    radios: list[RadioStatus] = []
    links: int
    max_links: int
    controllers: int
    fresh: int
    stale: int
    link_states: dict[str, int]
    updates: list[UpdateInProgress]
    cloud: RelayHealth
    mqtt: RelayHealth
    loop_lag_ms: float
    metrics_url: str | None = None
    # Every guarded part of the daemon (gateway/supervise.py), in the order they started.
    parts: list[PartHealth] = []
    # The daemon's own asyncio tasks and threads: steady in a healthy hub (bench/soak.py).
    tasks: int = 0
    threads: int = 0

    def summary(self) -> str:
        """One line for systemd's STATUS= (`systemctl status awgw` shows it)."""
        bits = [f"{self.links}/{self.max_links} links",
                 f"{self.fresh} fresh, {self.stale} stale of {self.controllers}"]
        if not self.radio.ok:
            bits.append(f"radio: {self.radio.reason}")
        for radio in self.radios[1:]:  # the first is the adapter of `radio` above
            if not radio.up:
                bits.append(f"radio {radio.name} down")
        bits.append(f"cloud {self.cloud.state}" + (
            f" (outbox {self.cloud.outbox_depth})" if self.cloud.outbox_depth else ""))
        bits.append(f"mqtt {self.mqtt.state}" + (
            f" (outbox {self.mqtt.outbox_depth})" if self.mqtt.outbox_depth else ""))
        if self.mqtt.identity_clash:
            bits.append(self.mqtt.identity_clash)
        for part in self.parts:
            if not part.up:
                bits.append(f"{part.name} {part.state.value}: {part.reason}")
        for update in self.updates:
            pct = 100 * update.offset // update.total if update.total else 0
            bits.append(f"updating {update.address} {update.phase} {pct}%")
        return "; ".join(bits)

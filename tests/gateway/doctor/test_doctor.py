"""`awgw doctor`: each finding driven through a fake of the host (and real outbox and config
files), each wrong one with its remedy; a healthy hub finds nothing wrong; the command's exit
code and --json document on this machine."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import exits
from gateway.cli.doctor_report import diagnose, load
from gateway.config import (
    CloudConfig,
    EsphomeProxySettings,
    GatewayConfig,
    LinkSettings,
    MqttConfig,
    OtaConfig,
    RadiosConfig,
)
from gateway.doctor.checks import Finding, Status
from gateway.doctor.host import Adapter, Disk, Rfkill
from gateway.link.radios.base import RadioRefused
from gateway.link.radios.esphome import ProxyReport
from gateway.ops.health import (
    CloudStatus,
    HubStatus,
    PartHealth,
    PartState,
    RadioHealth,
    RelayHealth,
    RelayState,
)
from gateway.relay.mqtt.identity import Instance, machine_digest
from gateway.relay.mqtt.topics import Topics
from gateway.store.outbox import NewItem, Outbox, OutboxLimits

MIB = 1024 * 1024
ADAPTER = Adapter("hci0", "B8:27:EB:00:00:01", powered=True, discovering=True,
                  passive_scan=True)
RELAY = RelayHealth(enabled=True, state=RelayState.UP, outbox_depth=0)
HEALTHY_STATUS = HubStatus(
    version="0.1.0", uptime_s=60, ready=True,
    radio=RadioHealth(adapter="hci0", ok=True, scanning=True, reason=None), links=1,
    max_links=3, controllers=1, fresh=1, stale=0, link_states={"connected": 1}, updates=[],
    cloud=RELAY, mqtt=RELAY, loop_lag_ms=0.4)
LINKED = CloudStatus(enabled=True, mode="auto", active_mode="gateway_routes", gateway_id="g",
                     link="linked", user="ana@example.com", token_expires_in_s=3000.0,
                     outbox=None)


@dataclass
class FakeHost:
    version: str | None = "5.66"
    adapter_list: list[Adapter] | str = field(default_factory=lambda: [ADAPTER])
    bus: str | None = "uart"
    rfkills: list[Rfkill] = field(default_factory=lambda: [Rfkill("hci0", "bluetooth", False,
                                                                  False)])
    policy: set[str] | None = field(default_factory=lambda: {"bluetooth"})
    groups: dict[str, set[str]] = field(default_factory=lambda: {
        "awgw": {"awgw", "bluetooth"}, "pi": {"pi", "awgw"}})
    me: str = "pi"
    model: str | None = "Raspberry Pi 4 Model B Rev 1.5"
    mhz: int | None = 5180
    synced: bool | None = True
    disks: Disk = field(default_factory=lambda: Disk(exists=True, writable=True,
                                                     free_bytes=2000 * MIB))
    daemon_answer: HubStatus | str = HEALTHY_STATUS
    health: int | str = 200
    broker: str | None = None
    retained: dict[str, bytes] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    proxies: dict[str, ProxyReport | RadioRefused] = field(default_factory=dict)

    async def bluez_version(self) -> str | None:
        return self.version

    async def adapters(self) -> list[Adapter] | str:
        return self.adapter_list

    def adapter_bus(self, name: str) -> str | None:
        return self.bus

    def rfkill(self) -> list[Rfkill]:
        return self.rfkills

    def dbus_policy_groups(self) -> set[str] | None:
        return self.policy

    def user_groups(self, user: str) -> set[str] | None:
        return self.groups.get(user)

    def current_user(self) -> str:
        return self.me

    def board_model(self) -> str | None:
        return self.model

    async def wifi_mhz(self) -> int | None:
        return self.mhz

    async def clock_synced(self) -> bool | None:
        return self.synced

    def disk(self, path: Path) -> Disk:
        return self.disks

    async def daemon(self, socket: Path) -> HubStatus | str:
        return self.daemon_answer

    async def http_get(self, url: str) -> int | str:
        self.asked.append(url)
        return self.health

    async def mqtt_connect(self, config: MqttConfig, password: str | None) -> str | None:
        return self.broker

    async def mqtt_retained(self, config: MqttConfig, password: str | None,
                            topics: list[str]) -> dict[str, bytes] | str:
        return {t: v for t, v in self.retained.items() if t in topics}

    async def esphome_proxy(self, proxy: EsphomeProxySettings, key: str | None
                            ) -> ProxyReport | RadioRefused:
        return self.proxies[proxy.name]


def public_key(tmp_path: Path) -> Path:
    """A PEM public key, as `imgtool getpub -e pem` writes the project's."""
    path = tmp_path / "mcuboot.pub.pem"
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(state_dir=tmp_path / "state", control_socket=tmp_path / "c.sock",
                         cloud=CloudConfig(enabled=True, base_url="https://api.example.com"),
                         mqtt=MqttConfig(enabled=True, username="awgw", tls=True),
                         ota=OtaConfig(public_key=public_key(tmp_path)))


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.check, []).append(f)
    return out


@pytest.fixture(autouse=True)
def _linked(monkeypatch: pytest.MonkeyPatch) -> None:
    async def linked(self: object) -> CloudStatus:
        return LINKED

    monkeypatch.setattr("gateway.cli.direct.DirectOperations.cloud_status", linked)


async def test_a_healthy_hub_has_nothing_wrong(tmp_path: Path) -> None:
    host = FakeHost()
    findings = await diagnose(host, config(tmp_path), None, tmp_path / "config.toml")
    assert [f for f in findings if f.wrong] == []
    checks = {f.check for f in findings}
    assert {"config", "bluez_version", "bluez_daemon", "adapter", "rfkill", "powered",
            "passive_scan", "coexistence", "dbus_policy", "service_user", "clock",
            "state_dir", "daemon", "broker", "cloud", "cloud_link"} <= checks
    # The cloud is asked at /health, never /health/deep (spec 4).
    assert host.asked == ["https://api.example.com/health"]
    adapter = by_check(findings)["adapter"][0]
    assert "built-in (UART)" in adapter.summary and "B8:27:EB:00:00:01" in adapter.summary


Change = Callable[[FakeHost], None]
CASES: list[tuple[str, Change, str, Status, str]] = [
    ("no bluez", lambda h: setattr(h, "version", None), "bluez_version", Status.ERROR,
     "apt install bluez"),
    ("old bluez", lambda h: setattr(h, "version", "5.50"), "bluez_version", Status.ERROR,
     "upgrade"),
    ("bluetoothd down", lambda h: setattr(h, "adapter_list", "bluetoothd is not running"),
     "bluez_daemon", Status.ERROR, "systemctl enable --now bluetooth"),
    ("no adapter", lambda h: setattr(h, "adapter_list", []), "adapter", Status.ERROR,
     "[link] adapter"),
    ("powered off", lambda h: setattr(h, "adapter_list", [dataclasses.replace(
        ADAPTER, powered=False)]), "powered", Status.ERROR, "bluetoothctl power on"),
    ("soft blocked", lambda h: setattr(h, "rfkills", [Rfkill("hci0", "bluetooth", True,
                                                            False)]),
     "rfkill", Status.ERROR, "rfkill unblock bluetooth"),
    ("hard blocked", lambda h: setattr(h, "rfkills", [Rfkill("hci0", "bluetooth", False,
                                                            True)]),
     "rfkill", Status.ERROR, "switch"),
    ("no passive scan", lambda h: setattr(h, "adapter_list", [dataclasses.replace(
        ADAPTER, passive_scan=False)]), "passive_scan", Status.INFO, "--experimental"),
    ("policy without the group", lambda h: setattr(h, "policy", {"root"}), "dbus_policy",
     Status.ERROR, "bluetooth.conf"),
    ("no policy file", lambda h: setattr(h, "policy", None), "dbus_policy", Status.WARNING,
     "reinstall bluez"),
    ("no service user", lambda h: h.groups.clear(), "service_user", Status.WARNING,
     "install.sh install"),
    ("service user outside bluetooth", lambda h: h.groups.__setitem__("awgw", {"awgw"}),
     "service_user", Status.ERROR, "usermod -aG bluetooth awgw"),
    ("cli user outside awgw", lambda h: h.groups.__setitem__("pi", {"pi", "bluetooth"}),
     "cli_user", Status.WARNING, "usermod -aG awgw pi"),
    ("2.4 GHz wifi on the pi's chip", lambda h: setattr(h, "mhz", 2437), "coexistence",
     Status.WARNING, "5 GHz"),
    ("clock not synced", lambda h: setattr(h, "synced", False), "clock", Status.WARNING,
     "set-ntp true"),
    ("clock unknown", lambda h: setattr(h, "synced", None), "clock", Status.WARNING, "NTP"),
    ("state dir unwritable", lambda h: setattr(h, "disks", Disk(True, False, 2000 * MIB)),
     "state_dir", Status.ERROR, "install -d -o awgw"),
    ("disk nearly full", lambda h: setattr(h, "disks", Disk(True, True, 10 * MIB)),
     "disk_space", Status.ERROR, "vacuum"),
    ("disk low", lambda h: setattr(h, "disks", Disk(True, True, 100 * MIB)), "disk_space",
     Status.WARNING, "vacuum"),
    ("daemon down", lambda h: setattr(h, "daemon_answer", "no control socket at /run/x"),
     "daemon", Status.WARNING, "systemctl start awgw"),
    ("socket refuses the user", lambda h: setattr(
        h, "daemon_answer", "cannot reach the daemon at /run/awgw/control.sock: Permission "
        "denied"), "daemon", Status.ERROR, "usermod -aG awgw pi"),
    ("daemon's radio wedged", lambda h: setattr(h, "daemon_answer", HEALTHY_STATUS.model_copy(
        update={"radio": RadioHealth(adapter="hci0", ok=False, scanning=False,
                                     reason="adapter hci0 is missing")})),
     "radio", Status.ERROR, "restart bluetooth"),
    ("a part restarting", lambda h: setattr(h, "daemon_answer", HEALTHY_STATUS.model_copy(
        update={"parts": [PartHealth(name="mqtt relay", state=PartState.RESTARTING, restarts=2,
                                     reason="ValueError: x")]})),
     "daemon_part", Status.WARNING, "part_crashed"),
    ("a part down for good", lambda h: setattr(h, "daemon_answer", HEALTHY_STATUS.model_copy(
        update={"parts": [PartHealth(name="cloud relay", state=PartState.FAILED, restarts=4,
                                     reason="KeyError: 'x'")]})),
     "daemon_part", Status.ERROR, "systemctl restart awgw"),
    ("broker refuses", lambda h: setattr(h, "broker", "Connection refused"), "broker",
     Status.ERROR, "[mqtt] host"),
    ("cloud unreachable", lambda h: setattr(h, "health", "ConnectError: no route"), "cloud",
     Status.ERROR, "internet"),
]


@pytest.mark.parametrize(("change", "check", "status", "remedy"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_each_finding_names_its_remedy(tmp_path: Path, change: Change, check: str,
                                              status: Status, remedy: str) -> None:
    host = FakeHost()
    change(host)
    findings = by_check(await diagnose(host, config(tmp_path), None, tmp_path / "x.toml"))
    assert check in findings, findings
    (finding,) = [f for f in findings[check] if f.status is status]
    assert finding.remedy is not None and remedy in finding.remedy, finding
    wrong = [f for fs in findings.values() for f in fs if f.wrong]
    assert finding.wrong == (status in (Status.WARNING, Status.ERROR))
    assert len(wrong) <= 2, wrong  # one change, one problem (two where a cause shows twice)


async def test_an_unlinked_gateway_and_an_invalid_config(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async def unlinked(self: object) -> CloudStatus:
        return LINKED.model_copy(update={"link": "relink_needed", "user": None})

    monkeypatch.setattr("gateway.cli.direct.DirectOperations.cloud_status", unlinked)
    bad = tmp_path / "config.toml"
    bad.write_text('[link]\nmax_links = "three"\n')
    cfg, problem = load(bad)
    assert problem is not None and "link.max_links" in problem
    findings = by_check(await diagnose(FakeHost(), cfg, problem, bad))
    assert findings["config"][0].status is Status.ERROR
    assert "link.max_links" in findings["config"][0].summary
    # With the defaults the cloud is off; a config that enables it shows the link.
    findings = by_check(await diagnose(FakeHost(), config(tmp_path), None, bad))
    (link,) = findings["cloud_link"]
    assert link.status is Status.ERROR and "cloud link" in (link.remedy or "")


async def test_a_broker_open_to_anyone_with_valves_allowed_is_a_warning(tmp_path: Path) -> None:
    # hostile-edges M5: valves opened by any broker client, and nothing said so.
    anonymous = config(tmp_path).model_copy(update={"mqtt": MqttConfig(enabled=True)})
    (access,) = by_check(await diagnose(FakeHost(), anonymous, None,
                                        tmp_path / "x.toml"))["broker_access"]
    assert access.status is Status.WARNING and "valve_open" in access.summary
    reading = anonymous.model_copy(update={"mqtt": MqttConfig(
        enabled=True, allowed_ops=("refresh", "state"))})
    assert "broker_access" not in by_check(await diagnose(FakeHost(), reading, None,
                                                          tmp_path / "x.toml"))
    # L7: a username without TLS sends its password in clear.
    clear = anonymous.model_copy(update={"mqtt": MqttConfig(enabled=True, username="awgw")})
    (plain,) = by_check(await diagnose(FakeHost(), clear, None,
                                       tmp_path / "x.toml"))["broker_access"]
    assert plain.status is Status.WARNING and "in clear" in plain.summary


async def test_outbox_drops_and_old_items_are_found(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.state_dir.mkdir()
    running = [0.0]  # the outbox's own clock: its running time, not the wall's
    outbox = Outbox(cfg.cloud_outbox_path, "gw", OutboxLimits(max_items=3),
                    monotonic=lambda: running[0])
    outbox.put_many([NewItem("A", "event", float(n), json.dumps({"n": n}))
                     for n in range(5)])
    running[0] += 7200
    outbox.put_many([NewItem("A", "event", 5.0, "{}")])
    outbox.close()
    findings = by_check(await diagnose(FakeHost(), cfg, None, tmp_path / "x.toml"))
    summaries = " / ".join(f.summary for f in findings["cloud_outbox"])
    assert "3 items were dropped" in summaries and "the oldest 2.0 h" in summaries
    assert all(f.status is Status.WARNING for f in findings["cloud_outbox"])


async def test_a_damaged_outbox_moved_aside_is_reported(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.state_dir.mkdir()
    path = cfg.cloud_outbox_path
    path.write_bytes(b"\0" * 8192)  # a torn write: the daemon moves it aside at its start
    Outbox(path, "gw").close()
    findings = by_check(await diagnose(FakeHost(), cfg, None, tmp_path / "x.toml"))
    (aside,) = findings["cloud_outbox"]
    assert aside.status is Status.WARNING and ".corrupt-" in aside.summary


def test_the_command_exits_with_its_verdict(tmp_path: Path) -> None:
    """On this machine (no BlueZ on the system bus): problems found, exit 13, one JSON line."""
    empty = tmp_path / "config.toml"
    empty.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "doctor", "--json"], capture_output=True,
        text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "AWGW_STATE_DIR": str(tmp_path),
             "AWGW_CONFIG": str(empty),
             "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"})
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == exits.DOCTOR_PROBLEMS, result.stderr
    assert document["ok"] is False
    statuses = {f["check"]: f["status"] for f in document["findings"]}
    assert statuses["bluez_daemon"] == "error"
    assert all(f["remedy"] for f in document["findings"] if f["status"] in ("warning",
                                                                           "error"))


@pytest.mark.parametrize(("key", "status"), [(None, Status.WARNING), ("garbage", Status.ERROR)])
async def test_images_without_a_signature_check_are_a_finding(tmp_path: Path, key: str | None,
                                                             status: Status) -> None:
    path = None
    if key is not None:
        path = tmp_path / "key.pem"
        path.write_text(key)
    unkeyed = config(tmp_path).model_copy(update={"ota": OtaConfig(public_key=path)})
    (finding,) = by_check(await diagnose(FakeHost(), unkeyed, None,
                                         tmp_path / "x.toml"))["firmware_key"]
    assert finding.status is status and "public_key" in finding.summary + (finding.remedy or "")


async def test_a_hub_sharing_this_gateway_id_is_an_error(tmp_path: Path) -> None:
    # hostile-edges M4: a state directory copied from another hub (a restored backup, a cloned
    # card) shares its gateway id, and the two take the broker session from each other.
    other = Instance(token="ab" * 16, host="shed-pi", machine="0123456789abcdef", pid=812)
    host = FakeHost(daemon_answer=HEALTHY_STATUS.model_copy(update={"mqtt": RELAY.model_copy(
        update={"identity_clash": f"another gateway process uses this gateway id on the "
                                  f"broker: {other.describe()}"})}))
    cfg = config(tmp_path).model_copy(update={"mqtt": MqttConfig(enabled=True)})
    (found,) = by_check(await diagnose(host, cfg, None, tmp_path / "x.toml"))["gateway_identity"]
    assert found.status is Status.ERROR and "shed-pi" in found.summary
    assert found.remedy is not None and "gateway_id" in found.remedy
    # With the daemon stopped (a copy about to start): the broker's retained announcement of a
    # hub on another machine that is online says the same, before the two fight.
    cfg.cloud_dir.mkdir(parents=True)
    (cfg.cloud_dir / "gateway_id").write_text("7d2c1c9e-5a43-4a4e-9b53-0d1b1b6f0c11")
    topics = Topics(cfg.mqtt.topic_prefix, "7d2c1c9e-5a43-4a4e-9b53-0d1b1b6f0c11")
    host = FakeHost(daemon_answer="connection refused", retained={
        topics.gateway_instance: other.model_dump_json().encode(),
        topics.gateway_availability: b"online"})
    (found,) = by_check(await diagnose(host, cfg, None, tmp_path / "x.toml"))["gateway_identity"]
    assert found.status is Status.ERROR and "shed-pi" in found.summary
    # The same hub's own announcement (this machine), or an offline one, is no finding.
    mine = other.model_copy(update={"machine": machine_digest()})
    host.retained[topics.gateway_instance] = mine.model_dump_json().encode()
    assert "gateway_identity" not in by_check(await diagnose(host, cfg, None, tmp_path / "x"))
    host.retained[topics.gateway_instance] = other.model_dump_json().encode()
    host.retained[topics.gateway_availability] = b"offline"
    assert "gateway_identity" not in by_check(await diagnose(host, cfg, None, tmp_path / "x"))


GOOD_PROXY = ProxyReport("garden-proxy", "2026.11.0", "1.12", True, 3, 3)


@pytest.mark.parametrize(("answer", "status", "says"), [
    (GOOD_PROXY, Status.OK, "slots 3 free of 3"),
    (RadioRefused("proxy garden at h:6053 refused the key", "put the key in X"), Status.ERROR,
     "refused the key"),
    (RadioRefused("proxy garden at h:6053 is unreachable: refused", "check power"),
     Status.ERROR, "unreachable"),
    (ProxyReport("p", "2026.11.0", "1.12", False, None, None), Status.ERROR, "only listens"),
    (ProxyReport("p", "2026.11.0", "1.12", True, 5, 3), Status.ERROR, "impossible slot"),
    (ProxyReport("p", "2026.11.0", "1.12", True, None, None), Status.WARNING, "no slot report"),
])
async def test_each_proxy_is_checked(tmp_path: Path, answer: ProxyReport | RadioRefused,
                                     status: Status, says: str) -> None:
    host = FakeHost(proxies={"garden": answer})
    base = config(tmp_path)
    cfg = base.model_copy(update={"radios": RadiosConfig(esphome=(
        EsphomeProxySettings(name="garden", host="h"),))})
    findings = by_check(await diagnose(host, cfg, None, tmp_path / "config.toml"))
    found = findings["radio garden"][0]
    assert found.status is status and says in found.summary, found
    assert found.status is Status.OK or found.remedy
    # No key: the API is open to the LAN, whatever else is true.
    assert findings["radio garden key"][0].status is Status.WARNING


async def test_an_extra_adapter_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    cfg = config(tmp_path).model_copy(update={"link": LinkSettings.model_validate(
        {"adapters": [{"name": "hci0"}, {"name": "hci1"}]})})
    findings = by_check(await diagnose(FakeHost(), cfg, None, tmp_path / "config.toml"))
    assert findings["radio hci1"][0].status is Status.ERROR
    assert "remove it from [link] adapters" in (findings["radio hci1"][0].remedy or "")

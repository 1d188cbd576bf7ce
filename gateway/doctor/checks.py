"""Each check of `awgw doctor`: what it looked at, what it found, and what to do about it.

The checks read the machine only through ``Host`` (gateway/doctor/host.py), so the tests drive
every finding with a fake host; the outboxes and the config are read for real."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from gateway.config import EsphomeProxySettings, GatewayConfig
from gateway.doctor.host import Host
from gateway.errors import GatewayError
from gateway.link.radios.base import MAX_PROXY_SLOTS, RadioRefused
from gateway.link.radios.keys import credential_name, read_key
from gateway.ops.health import CloudStatus, PartState
from gateway.ota.service import read_public_key
from gateway.relay.mqtt import identity
from gateway.relay.mqtt.identity import CLASH_REMEDY
from gateway.relay.mqtt.password import read_password
from gateway.relay.mqtt.tls import open_broker
from gateway.relay.mqtt.topics import ONLINE, Topics
from gateway.store.outbox import Outbox

SERVICE_USER = "awgw"
BLUETOOTH_GROUP = "bluetooth"  # BlueZ's D-Bus policy admits it: the service user's
SOCKET_GROUP = "awgw"  # the control socket's: who may run awgw against the daemon
# bleak's BlueZ backend needs 5.55 for what we use (ATT MTU exchange over D-Bus, reliable
# notifications); Raspberry Pi OS bookworm ships 5.66.
BLUEZ_MIN = (5, 55)
# The outboxes hold up to 64 MiB each and SQLite's WAL grows beside them; below this the next
# compaction or an update's download may fail.
FREE_ERROR_BYTES = 64 * 1024 * 1024
FREE_WARN_BYTES = 256 * 1024 * 1024
# Items waiting longer than this mean the way out is not taking them.
OUTBOX_OLD_S = 3600.0
WIFI_24_GHZ_MAX_MHZ = 2500


class Status(StrEnum):
    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    check: str
    status: Status
    summary: str
    remedy: str | None = None

    @property
    def wrong(self) -> bool:
        return self.status in (Status.WARNING, Status.ERROR)


def ok(check: str, summary: str) -> Finding:
    return Finding(check=check, status=Status.OK, summary=summary)


def info(check: str, summary: str, remedy: str | None = None) -> Finding:
    return Finding(check=check, status=Status.INFO, summary=summary, remedy=remedy)


def warn(check: str, summary: str, remedy: str) -> Finding:
    return Finding(check=check, status=Status.WARNING, summary=summary, remedy=remedy)


def error(check: str, summary: str, remedy: str) -> Finding:
    return Finding(check=check, status=Status.ERROR, summary=summary, remedy=remedy)


@dataclass
class Context:
    host: Host
    config: GatewayConfig
    config_problem: str | None
    config_path: Path
    cloud_status: Callable[[], Awaitable[CloudStatus]]


def check_config(ctx: Context) -> list[Finding]:
    if ctx.config_problem is not None:
        return [error("config", ctx.config_problem,
                      f"fix the key it names in {ctx.config_path} (systemd/config.example.toml "
                      "lists every key); the rest of this report uses the defaults")]
    if not ctx.config_path.exists():
        return [ok("config", f"no {ctx.config_path}: every key has its default")]
    return [ok("config", f"{ctx.config_path} is valid")]


async def check_bluez(ctx: Context) -> list[Finding]:
    host, adapter_name = ctx.host, ctx.config.link.adapter
    found: list[Finding] = []
    version = await host.bluez_version()
    if version is None:
        found.append(error("bluez_version", "BlueZ is not installed",
                           "sudo apt install bluez"))
    else:
        number = tuple(int(p) for p in version.split(".")[:2])
        if number < BLUEZ_MIN:
            found.append(error("bluez_version", f"BlueZ {version} is older than "
                               f"{BLUEZ_MIN[0]}.{BLUEZ_MIN[1]}",
                               "upgrade the OS (Raspberry Pi OS bookworm ships 5.66)"))
        else:
            found.append(ok("bluez_version", f"BlueZ {version}"))
    adapters = await host.adapters()
    if isinstance(adapters, str):
        found.append(error("bluez_daemon", f"BlueZ does not answer: {adapters}",
                           "sudo systemctl enable --now bluetooth; journalctl -u bluetooth"))
        return found
    found.append(ok("bluez_daemon", f"bluetoothd answers ({len(adapters)} adapters)"))
    adapter = next((a for a in adapters if a.name == adapter_name), None)
    if adapter is None:
        names = ", ".join(a.name for a in adapters) or "none"
        found.append(error("adapter", f"adapter {adapter_name} not found (BlueZ has: {names})",
                           "set [link] adapter in the config, or check the hardware: "
                           "dmesg | grep -i bluetooth"))
        return found
    bus = host.adapter_bus(adapter.name) or "unknown bus"
    kind = {"uart": "built-in (UART)", "usb": "USB dongle", "sdio": "built-in (SDIO)"}.get(
        bus, bus)
    found.append(ok("adapter", f"{adapter.name} {adapter.address}, {kind}"))
    blocked = [r for r in host.rfkill() if r.type == "bluetooth" and (r.soft or r.hard)]
    if any(r.hard for r in blocked):
        found.append(error("rfkill", "Bluetooth is hard-blocked (a switch or the firmware)",
                           "check the hub's radio switch or firmware settings; "
                           "`rfkill list` shows it"))
    elif blocked:
        found.append(error("rfkill", "Bluetooth is soft-blocked by rfkill",
                           "sudo rfkill unblock bluetooth"))
    else:
        found.append(ok("rfkill", "Bluetooth is not blocked"))
    if not adapter.powered:
        found.append(error("powered", f"{adapter.name} is powered off",
                           "bluetoothctl power on (after `rfkill unblock bluetooth` if "
                           "blocked); the daemon also powers it on its recovery ladder"))
    else:
        found.append(ok("powered", f"{adapter.name} is powered"))
    if adapter.passive_scan:
        found.append(ok("passive_scan", "BlueZ offers passive scanning (advertisement "
                                        "monitors) on this adapter"))
    else:
        found.append(info("passive_scan", "no passive scanning (BlueZ's advertisement monitor "
                          "is experimental): the gateway scans actively, which works",
                          "optional: start bluetoothd with --experimental"))
    found += await _coexistence(ctx, bus)
    return found


async def _coexistence(ctx: Context, bus: str) -> list[Finding]:
    model = ctx.host.board_model() or ""
    if "Raspberry Pi" not in model or bus not in ("uart", "sdio"):
        return []
    mhz = await ctx.host.wifi_mhz()
    if mhz is not None and mhz < WIFI_24_GHZ_MAX_MHZ:
        return [warn("coexistence", f"{model}: Wi-Fi on 2.4 GHz ({mhz} MHz) shares the "
                     "combined chip's antenna with Bluetooth, so BLE links drop more",
                     "use 5 GHz Wi-Fi or Ethernet, or a USB Bluetooth dongle "
                     "([link] adapter = \"hci1\")")]
    return [ok("coexistence", f"{model}: Wi-Fi is not on 2.4 GHz")]


def check_permissions(ctx: Context) -> list[Finding]:
    host = ctx.host
    found: list[Finding] = []
    policy = host.dbus_policy_groups()
    if policy is None:
        found.append(warn("dbus_policy", "no BlueZ D-Bus policy file found",
                          "reinstall bluez (sudo apt install --reinstall bluez)"))
    elif BLUETOOTH_GROUP not in policy:
        found.append(error("dbus_policy", "BlueZ's D-Bus policy does not admit the "
                           f"{BLUETOOTH_GROUP} group",
                           f'add <policy group="{BLUETOOTH_GROUP}"> allowing org.bluez to '
                           "/etc/dbus-1/system.d/bluetooth.conf"))
    else:
        found.append(ok("dbus_policy", f"BlueZ's D-Bus policy admits the {BLUETOOTH_GROUP} "
                                       "group"))
    groups = host.user_groups(SERVICE_USER)
    if groups is None:
        found.append(warn("service_user", f"the service user {SERVICE_USER} does not exist",
                          "sudo systemd/install.sh install"))
    elif BLUETOOTH_GROUP not in groups:
        found.append(error("service_user", f"{SERVICE_USER} is not in the {BLUETOOTH_GROUP} "
                           "group: BlueZ refuses it", f"sudo usermod -aG {BLUETOOTH_GROUP} "
                           f"{SERVICE_USER} && sudo systemctl restart awgw"))
    else:
        found.append(ok("service_user", f"{SERVICE_USER} is in the {BLUETOOTH_GROUP} group"))
    me = host.current_user()
    mine = host.user_groups(me) or set()
    if me not in ("root", SERVICE_USER) and SOCKET_GROUP not in mine:
        found.append(warn("cli_user", f"{me} is not in the {SOCKET_GROUP} group: awgw "
                          "commands cannot reach the daemon's socket",
                          f"sudo usermod -aG {SOCKET_GROUP} {me}, then log in again"))
    return found


async def check_clock(ctx: Context) -> list[Finding]:
    synced = await ctx.host.clock_synced()
    if synced is None:
        return [warn("clock", "cannot tell whether the clock is synchronised (timedatectl "
                     "did not answer)",
                     "make sure NTP runs: the controllers' clocks and the cloud's records "
                     "follow this one")]
    if not synced:
        return [warn("clock", "the clock is not synchronised",
                     "sudo timedatectl set-ntp true, and check the network: the controllers' "
                     "clocks and the cloud's records follow this one")]
    return [ok("clock", "the clock is synchronised (NTP)")]


def check_storage(ctx: Context) -> list[Finding]:
    state_dir = ctx.config.state_dir
    disk = ctx.host.disk(state_dir)
    found: list[Finding] = []
    remedy = (f"sudo install -d -o {SERVICE_USER} -g {SOCKET_GROUP} -m 0700 {state_dir} "
              "(systemd's StateDirectory= makes it for the service)")
    if not disk.exists:
        found.append((warn if disk.writable else error)(
            "state_dir", f"{state_dir} does not exist yet", remedy))
        return found
    if not disk.writable:
        found.append(error("state_dir", f"{state_dir} is not writable by {ctx.host.current_user()}",
                           remedy))
    mib = disk.free_bytes // (1024 * 1024)
    if disk.free_bytes < FREE_ERROR_BYTES:
        found.append(error("disk_space", f"{mib} MiB free under {state_dir}",
                           "free space on the SD card (journalctl --vacuum-size=50M, apt clean)"))
    elif disk.free_bytes < FREE_WARN_BYTES:
        found.append(warn("disk_space", f"only {mib} MiB free under {state_dir}",
                          "free space on the SD card (journalctl --vacuum-size=50M, apt clean)"))
    elif disk.writable:
        found.append(ok("state_dir", f"{state_dir} is writable, {mib} MiB free"))
    for name, path in (("cloud_outbox", ctx.config.cloud_outbox_path),
                       ("mqtt_outbox", ctx.config.mqtt_outbox_path)):
        found += _outbox(name, path)
    return found


def _outbox(check: str, path: Path) -> list[Finding]:
    found = [warn(check, f"a damaged outbox was moved aside to {aside} (what it held was not "
                  "relayed)", f"keep it for a bug report or delete it: rm {aside}*")
             for aside in sorted(path.parent.glob(f"{path.name}.corrupt-*"))
             if not aside.name.endswith(("-wal", "-shm"))]
    if not path.exists():
        return found
    try:
        outbox = Outbox(path, "doctor", reader=True)
        try:
            stats = outbox.stats()
        finally:
            outbox.close()
    except GatewayError as exc:
        return [*found, error(check, f"{path} cannot be read: {exc}",
                              "restart the service: a damaged outbox is moved aside at the "
                              "start and a new one made (what the old one held is not relayed)")]
    dropped = sum(stats.dropped.values())
    if dropped:
        found.append(warn(check, f"{dropped} items were dropped at the outbox's bounds",
                          "the way out was down for long: check the cloud/broker findings"))
    if stats.oldest_age_s is not None and stats.oldest_age_s > OUTBOX_OLD_S:
        found.append(warn(check, f"{stats.depth} items waiting, the oldest "
                          f"{stats.oldest_age_s / 3600:.1f} h", "check the cloud/broker "
                          "findings and `awgw cloud status`"))
    if not found:
        found.append(ok(check, f"{stats.depth} items waiting"))
    return found


async def check_daemon(ctx: Context) -> list[Finding]:
    status = await ctx.host.daemon(ctx.config.socket_path)
    if isinstance(status, str):
        if "Permission denied" in status:
            return [error("daemon", f"the daemon's socket refuses {ctx.host.current_user()}",
                          f"sudo usermod -aG {SOCKET_GROUP} {ctx.host.current_user()}, "
                          "then log in again")]
        return [warn("daemon", f"the daemon is not reachable: {status}",
                     "sudo systemctl start awgw; journalctl -u awgw -n 50")]
    found = [ok("daemon", f"running {status.version}, {'ready' if status.ready else 'starting'}"
                f", {status.controllers} controllers ({status.fresh} fresh)")]
    if not status.radio.ok:
        found.append(error("radio", f"the daemon's radio: {status.radio.reason}",
                           "sudo systemctl restart bluetooth; `rfkill list`; if it keeps "
                           "happening on a Pi, see the coexistence finding"))
    if status.mqtt.identity_clash:
        found.append(error("gateway_identity", status.mqtt.identity_clash, CLASH_REMEDY))
    for part in status.parts:
        if part.state is PartState.FAILED:
            found.append(error("daemon_part", f"{part.name} crashed {part.restarts + 1} times "
                               f"and stays down: {part.reason}",
                               "sudo systemctl restart awgw; report the traceback in "
                               "`journalctl -u awgw` (event part_failed)"))
        elif not part.up:
            found.append(warn("daemon_part", f"{part.name} crashed and restarts "
                              f"({part.restarts} restarts so far): {part.reason}",
                              "it restarts by itself; if it keeps crashing, report the traceback "
                              "in `journalctl -u awgw` (event part_crashed)"))
    return found


async def _another_hub(ctx: Context, password: str | None) -> list[Finding]:
    """A hub on another machine online on the broker with this gateway id: this state
    directory was copied from it (the daemon also says so once it runs, see identity.py)."""
    try:
        gid = (ctx.config.cloud_dir / "gateway_id").read_text().strip()
    except OSError:
        return []  # no id yet: made at the first start, so it is no copy
    topics = Topics(ctx.config.mqtt.topic_prefix, gid)
    held = await ctx.host.mqtt_retained(ctx.config.mqtt, password, [
        topics.gateway_instance, topics.gateway_availability])
    if isinstance(held, str):
        return []  # the broker finding says what is wrong with the broker
    other = identity.parse(held.get(topics.gateway_instance, b""))
    online = held.get(topics.gateway_availability) == ONLINE.encode()
    if other is None or not online or other.machine == identity.machine_digest():
        return []
    return [error("gateway_identity", f"another hub, {other.describe()}, is online on the "
                  f"broker with this gateway id ({gid})", CLASH_REMEDY)]


def check_firmware_key(ctx: Context) -> list[Finding]:
    """Whether images are signature-checked before they reach a controller."""
    try:
        key = read_public_key(ctx.config.ota)
    except GatewayError as exc:
        return [error("firmware_key", str(exc), "point [ota] public_key at the project's "
                      "MCUboot public key (imgtool getpub -k KEY -e pem)")]
    if key is None:
        return [warn("firmware_key", "no [ota] public_key: firmware images are not "
                     "signature-checked, so whoever controls the cloud or its bucket can flash "
                     "any image", "set [ota] public_key to the project's MCUboot public key "
                     "(PEM, from imgtool getpub -e pem)")]
    return [ok("firmware_key", f"images must be signed by {ctx.config.ota.public_key}")]


async def check_radios(ctx: Context) -> list[Finding]:
    """The radios beyond the first adapter (which check_bluez looks at): each further adapter
    is there, and each proxy answers, takes the key, can connect and reports its slots."""
    found: list[Finding] = []
    more = ctx.config.link.local_adapters[1:]
    if more:
        adapters = await ctx.host.adapters()
        present = {a.name: a for a in adapters} if not isinstance(adapters, str) else {}
        for adapter in more:
            got = present.get(adapter.name)
            if got is None:
                found.append(error(f"radio {adapter.name}", f"adapter {adapter.name} is not "
                                   f"there (BlueZ has: {', '.join(present) or 'none'})",
                                   "plug it in (dmesg | grep -i bluetooth), or remove it from "
                                   "[link] adapters; the other radios serve meanwhile"))
            elif not got.powered:
                found.append(error(f"radio {adapter.name}", f"{adapter.name} is powered off",
                                   f"bluetoothctl select {got.address} && bluetoothctl power "
                                   "on"))
            else:
                found.append(ok(f"radio {adapter.name}", f"{adapter.name} {got.address}, "
                                f"{adapter.slots} slots"))
    for proxy in ctx.config.radios.esphome:
        found += await _proxy(ctx, proxy)
    return found


async def _proxy(ctx: Context, proxy: EsphomeProxySettings) -> list[Finding]:
    check = f"radio {proxy.name}"
    try:
        key = read_key(proxy)
    except RadioRefused as exc:
        return [error(check, str(exc), exc.remedy)]
    found = [await _proxy_answer(ctx, proxy, key)]
    if key is None:
        found.append(warn(f"{check} key", f"proxy {proxy.name}'s API is not encrypted: anyone "
                          "on the LAN can use its radio", f"add `api: encryption: key:` to its "
                          f"YAML and put the key in {credential_name(proxy)} (or key_file)"))
    return found


async def _proxy_answer(ctx: Context, proxy: EsphomeProxySettings, key: str | None
                        ) -> Finding:
    check = f"radio {proxy.name}"
    answer = await ctx.host.esphome_proxy(proxy, key)
    if isinstance(answer, RadioRefused):
        return error(check, str(answer), answer.remedy)
    what = (f"proxy {proxy.name} at {proxy.host}:{proxy.port}: {answer.name}, ESPHome "
            f"{answer.esphome}, API {answer.api}")
    if not answer.can_connect:
        return error(check, f"{what} only listens (no active connections)",
                     "set `bluetooth_proxy: active: true` in its ESPHome YAML")
    if answer.limit is None or answer.free is None:
        return warn(check, f"{what}: no slot report within a few seconds",
                    "update ESPHome on the proxy")
    if not 0 <= answer.free <= answer.limit <= MAX_PROXY_SLOTS:
        return error(check, f"{what}: impossible slot counts (free {answer.free} of "
                            f"{answer.limit})", "update ESPHome on the proxy, or restart it")
    return ok(check, f"{what}; slots {answer.free} free of {answer.limit}")


async def check_ways_out(ctx: Context) -> list[Finding]:
    found: list[Finding] = []
    mqtt = ctx.config.mqtt
    if mqtt.enabled:
        try:
            password = read_password(mqtt)
        except GatewayError as exc:
            found.append(error("broker", str(exc), "check [mqtt] password_file and its mode"))
        else:
            problem = await ctx.host.mqtt_connect(mqtt, password)
            where = f"{mqtt.host}:{mqtt.port}"
            if problem is None:
                found.append(ok("broker", f"the MQTT broker at {where} accepts the gateway"))
            else:
                found.append(error("broker", f"the MQTT broker at {where}: {problem}",
                                   "check [mqtt] host, port and username, the password "
                                   "credential, and that the broker runs"))
            if problem is None:
                found.extend(await _another_hub(ctx, password))
        if (exposure := open_broker(mqtt)) is not None:
            found.append(warn("broker_access", exposure.problem, exposure.remedy))
    cloud = ctx.config.cloud
    if not cloud.enabled:
        return found
    if not cloud.base_url:
        found.append(error("cloud", "[cloud] is enabled without a base_url",
                           "set [cloud] base_url (cloud-api.md names the API's address)"))
        return found
    # /health, never /health/deep: the deep check costs the backend a database query (spec 4).
    url = cloud.base_url.rstrip("/") + "/health"
    answer = await ctx.host.http_get(url)
    if answer == 200:
        found.append(ok("cloud", f"{url} answers"))
    else:
        found.append(error("cloud", f"{url}: {answer}",
                           "check the hub's internet connection and [cloud] base_url"))
    try:
        status = await ctx.cloud_status()
    except GatewayError as exc:
        found.append(error("cloud_link", f"cannot read the cloud link: {exc}",
                           "awgw cloud status"))
        return found
    if status.link == "linked":
        expires = status.token_expires_in_s
        found.append(ok("cloud_link", f"linked as {status.user or '?'}" + (
            "" if expires is None else f"; the session token renews in {expires / 60:.0f} min")))
    else:
        found.append(error("cloud_link", f"the cloud link is {status.link}",
                           "sudo -u awgw awgw cloud link --username YOU (or put a refresh "
                           "token in /etc/awgw/credentials/refresh-token)"))
    return found

"""What `awgw doctor` asks of the machine, behind one Protocol so every finding can be driven
by a fake host in the tests; ``SystemHost`` asks the real one (BlueZ over D-Bus, sysfs, the
command-line tools Raspberry Pi OS ships, the daemon's socket, the network)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiomqtt
import httpx

from gateway.bluez import bus
from gateway.config import EsphomeProxySettings, GatewayConfig, MqttConfig
from gateway.control import client as control
from gateway.errors import GatewayError
from gateway.ops.health import HubStatus
from gateway.ops.models import HUB_STATUS, HubStatusQuery

if TYPE_CHECKING:
    from gateway.link.radios.base import RadioRefused
    from gateway.link.radios.esphome import ProxyReport

# Each question to the host is a local round trip (D-Bus, a tool, a loopback socket) or one
# HTTP request; a host that takes longer than this to answer has answered.
ASK_TIMEOUT_S = 10.0
# A broker sends a retained message within a round trip of the subscription; over a home LAN
# to a Pi-hosted broker that is milliseconds, and a topic without one sends nothing at all.
RETAINED_WAIT_S = 1.0
DBUS_POLICY_FILES = (Path("/etc/dbus-1/system.d/bluetooth.conf"),
                     Path("/usr/share/dbus-1/system.d/bluetooth.conf"))


@dataclass(frozen=True)
class Adapter:
    name: str
    address: str
    powered: bool
    discovering: bool
    passive_scan: bool  # BlueZ offers AdvertisementMonitorManager1 on it


@dataclass(frozen=True)
class Rfkill:
    name: str
    type: str
    soft: bool
    hard: bool


@dataclass(frozen=True)
class Disk:
    exists: bool
    writable: bool
    free_bytes: int


class Host(Protocol):
    async def bluez_version(self) -> str | None: ...
    async def adapters(self) -> list[Adapter] | str: ...  # or why BlueZ did not answer
    def adapter_bus(self, name: str) -> str | None: ...  # "uart", "usb", "sdio", ...
    def rfkill(self) -> list[Rfkill]: ...
    def dbus_policy_groups(self) -> set[str] | None: ...  # None: no policy file found
    def user_groups(self, user: str) -> set[str] | None: ...  # None: no such user
    def current_user(self) -> str: ...
    def board_model(self) -> str | None: ...
    async def wifi_mhz(self) -> int | None: ...
    async def clock_synced(self) -> bool | None: ...
    def disk(self, path: Path) -> Disk: ...
    async def daemon(self, socket: Path) -> HubStatus | str: ...  # or why it is unreachable
    async def http_get(self, url: str) -> int | str: ...  # status code, or the failure
    async def mqtt_connect(self, config: MqttConfig, password: str | None) -> str | None: ...
    async def esphome_proxy(self, proxy: EsphomeProxySettings, key: str | None
                            ) -> ProxyReport | RadioRefused: ...
    async def mqtt_retained(self, config: MqttConfig, password: str | None,
                            topics: list[str]) -> dict[str, bytes] | str: ...


async def _run(*args: str) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(ASK_TIMEOUT_S):
            out, _ = await proc.communicate()
    except (OSError, TimeoutError):
        return None
    return out.decode(errors="replace") if proc.returncode == 0 else None


class SystemHost:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config

    async def bluez_version(self) -> str | None:
        for tool in (("bluetoothctl", "--version"), ("bluetoothd", "--version")):
            out = await _run(*tool)
            if out and (match := re.search(r"(\d+\.\d+)", out)):
                return match.group(1)
        return None

    async def adapters(self) -> list[Adapter] | str:
        try:
            async with bus.system_bus() as system:
                tree = await bus.managed_objects(system)
        except bus.BluezNotRunning:
            return "bluetoothd is not running"
        except bus.BluezRefused as exc:
            return f"BlueZ answered with {exc.name}"
        except bus.BluezUnreachable as exc:
            return f"the system D-Bus did not answer ({exc})"
        found = []
        for path, interfaces in tree.items():
            props = interfaces.get("org.bluez.Adapter1")
            if props is None:
                continue
            found.append(Adapter(
                name=path.rsplit("/", 1)[-1], address=str(props["Address"]),
                powered=bool(props["Powered"]), discovering=bool(props["Discovering"]),
                passive_scan="org.bluez.AdvertisementMonitorManager1" in interfaces))
        return sorted(found, key=lambda a: a.name)

    def adapter_bus(self, name: str) -> str | None:
        subsystem = Path(f"/sys/class/bluetooth/{name}/device/subsystem")
        try:
            bus = subsystem.resolve().name
        except OSError:
            return None
        # The Pi's built-in chip sits on a UART behind a serdev; USB dongles on usb.
        return {"serial": "uart", "serial-base": "uart"}.get(bus, bus)

    def rfkill(self) -> list[Rfkill]:
        entries = []
        for node in sorted(Path("/sys/class/rfkill").glob("rfkill*")):
            try:
                entries.append(Rfkill(
                    name=(node / "name").read_text().strip(),
                    type=(node / "type").read_text().strip(),
                    soft=(node / "soft").read_text().strip() == "1",
                    hard=(node / "hard").read_text().strip() == "1"))
            except OSError:
                continue
        return entries

    def dbus_policy_groups(self) -> set[str] | None:
        for path in DBUS_POLICY_FILES:
            try:
                text = path.read_text()
            except OSError:
                continue
            return set(re.findall(r'<policy\s+group="([^"]+)"', text))
        return None

    def user_groups(self, user: str) -> set[str] | None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None
        groups = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
        with contextlib.suppress(KeyError):  # a primary gid without a group entry
            groups.add(grp.getgrgid(entry.pw_gid).gr_name)
        return groups

    def current_user(self) -> str:
        return pwd.getpwuid(os.getuid()).pw_name

    def board_model(self) -> str | None:
        try:
            return Path("/proc/device-tree/model").read_text().strip("\0\n ")
        except OSError:
            return None

    async def wifi_mhz(self) -> int | None:
        out = await _run("iw", "dev")
        for interface in re.findall(r"Interface (\S+)", out or ""):
            link = await _run("iw", "dev", interface, "link")
            if link and (match := re.search(r"freq:\s*(\d+)", link)):
                return int(match.group(1))
        return None

    async def clock_synced(self) -> bool | None:
        out = await _run("timedatectl", "show", "-p", "NTPSynchronized", "--value")
        return None if out is None else out.strip() == "yes"

    def disk(self, path: Path) -> Disk:
        if not path.exists():
            return Disk(False, os.access(path.parent, os.W_OK), 0)
        return Disk(True, os.access(path, os.W_OK | os.X_OK),
                    shutil.disk_usage(path).free)

    async def daemon(self, socket: Path) -> HubStatus | str:
        if not control.daemon_running(socket):
            return f"no control socket at {socket}"
        try:
            return await control.call(socket, HubStatusQuery(), HUB_STATUS)
        except GatewayError as exc:
            return str(exc)

    async def http_get(self, url: str) -> int | str:
        try:
            async with httpx.AsyncClient(timeout=ASK_TIMEOUT_S) as http:
                return (await http.get(url)).status_code
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"

    async def esphome_proxy(self, proxy: EsphomeProxySettings, key: str | None
                            ) -> ProxyReport | RadioRefused:
        # The proxy stack only when a proxy is configured.
        from gateway.link.radios.base import RadioRefused
        from gateway.link.radios.esphome import probe

        try:
            return await probe(proxy, key)
        except RadioRefused as exc:
            return exc

    async def mqtt_connect(self, config: MqttConfig, password: str | None) -> str | None:
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S), _broker(config, password, "awgw-doctor"):
                return None
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            return str(exc) or type(exc).__name__

    async def mqtt_retained(self, config: MqttConfig, password: str | None,
                            topics: list[str]) -> dict[str, bytes] | str:
        """The retained messages of ``topics`` (those that have one), or why not."""
        found: dict[str, bytes] = {}
        try:
            async with _broker(config, password,
                               f"awgw-doctor-{secrets.token_hex(4)}") as client:
                for topic in topics:
                    await client.subscribe(topic)
                # Retained messages come right after the subscription; a topic without one
                # sends nothing, so the wait is bounded.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETAINED_WAIT_S):
                        async for message in client.messages:
                            if message.retain and isinstance(message.payload, bytes):
                                found[message.topic.value] = message.payload
                            if len(found) == len(topics):
                                break
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            return str(exc) or type(exc).__name__
        return found


def _broker(config: MqttConfig, password: str | None, identifier: str) -> aiomqtt.Client:
    """The doctor's own client of the configured broker, with the daemon's credentials."""
    tls = aiomqtt.TLSParameters(ca_certs=str(config.ca_file) if config.ca_file else None) \
        if config.tls else None
    return aiomqtt.Client(config.host, config.port, username=config.username,
                          password=password, identifier=identifier, tls_params=tls,
                          timeout=ASK_TIMEOUT_S)

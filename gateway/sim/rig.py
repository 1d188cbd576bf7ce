"""The virtual rig: a private D-Bus, patched BlueZoo and N virtual controllers, one per adapter.

hci0 is the gateway's adapter (the only one with the central role); controller ``i`` lives on
``hci{i+1}``. Any bleak program that uses ``DBUS_SYSTEM_BUS_ADDRESS`` sees the controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gateway.sim.controller.config import ControllerConfig
from gateway.sim.controller.control import CONTROL_IFACE, CONTROL_PATH
from gateway.sim.dbus_daemon import PrivateBus
from gateway.sim.errors import SimConfigError, SimError
from gateway.sim.processes import terminate, tied

log = structlog.get_logger(__name__)

GATEWAY_ADDRESS = "00:AA:00:00:00:01"
# A controller process registers its GATT application and advertisement in ~0.2 s; 20 s
# covers a loaded 2-core CI machine starting ten of them at once.
PROCESS_READY_TIMEOUT_S = 20.0
# A control call to BlueZoo or a controller process: each answers in milliseconds (AddAdapter
# powers the adapter on as well); 30 s covers a loaded machine, and a peer that never answers
# becomes a SimError that a test or a bench reports, not a hang (a fleet bench run once sat
# in a trial for minutes with no way to tell where).
RIG_CALL_TIMEOUT_S = 30.0
FAULT_KINDS = ("drop_link", "power_loss", "power_restore", "reboot", "busy", "slow", "mute",
               "drop_smp_reply", "corrupt_notification", "lose_bonds",
               # the irrigation side, as the firmware handles it (device-ble.md Δ22)
               "line_flow", "stray_flow", "freeze", "thaw")


def controller_address(index: int) -> str:
    return f"C0:FF:EE:00:{index >> 8 & 0xFF:02X}:{index & 0xFF:02X}"


def radio_address(index: int) -> str:
    return f"00:AA:00:00:01:{index & 0xFF:02X}"


MCUMGR_UDP_PORT = 1337


def udp_endpoint(options: RigOptions, index: int) -> tuple[str, int | None]:
    """Where controller ``index`` serves SMP over UDP, if it does."""
    if options.udp_own_address:
        return f"127.0.1.{index + 1}", MCUMGR_UDP_PORT
    if options.udp_base_port is not None:
        return "127.0.0.1", options.udp_base_port + index
    return "127.0.0.1", None


@dataclass(frozen=True)
class RigOptions:
    controllers: int = 3
    udp_base_port: int | None = None
    # Each controller on mcumgr's own port 1337 at an address of its own (127.0.1.<index+1>),
    # for tools that cannot choose a port.
    udp_own_address: bool = False
    template: ControllerConfig = field(default_factory=lambda: ControllerConfig(0, 0, ""))
    scan_interval_s: int = 1
    connect_fail_delay_s: float = 2.0
    # Controller index -> the passkey its (non-shipping) firmware demands when pairing.
    passkeys: dict[int, int] = field(default_factory=dict)
    # More central radios beside the gateway's hci0: extra hub adapters, or the radios of
    # simulated ESPHome proxies (gateway.sim.esphome). They come after the controllers'
    # adapters: ``Rig.radio_adapters`` names them.
    radios: int = 0
    # The garden, in metres: where the gateway's adapter ("gateway"), each controller
    # ("controller<i>") and each extra radio ("radio<j>") stands. With positions, each radio
    # hears only what is within its range (bluezoo_patched); without, every radio hears all.
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)

    def validate(self) -> None:
        if not 1 <= self.controllers <= 64:
            raise SimConfigError(f"--controllers must be 1..64, got {self.controllers}")
        t = self.template
        if not 7.5 <= t.interval_ms <= 4000:
            raise SimConfigError(f"connection interval {t.interval_ms} ms is outside 7.5..4000")
        if not 1 <= t.packets_per_event <= 64:
            raise SimConfigError("packets per event must be 1..64")
        if not 23 <= t.mtu <= 517:
            raise SimConfigError(f"MTU {t.mtu} is outside 23..517")
        if t.buf_size < 64 or t.buf_count < 1:
            raise SimConfigError("SMP buffer size must be >= 64 and count >= 1")
        if self.udp_base_port is not None and not 1 <= self.udp_base_port <= 65535 - 64:
            raise SimConfigError(f"UDP port {self.udp_base_port} is out of range")
        if self.udp_base_port is not None and self.udp_own_address:
            raise SimConfigError("choose a UDP base port or an address per controller, not both")
        if not 0 <= self.radios <= 16:
            raise SimConfigError(f"radios must be 0..16, got {self.radios}")
        known = {"gateway"} | {f"controller{i}" for i in range(self.controllers)} | {
            f"radio{j}" for j in range(self.radios)}
        if unknown := set(self.positions) - known:
            raise SimConfigError(f"positions for what the rig does not have: {sorted(unknown)}")


@dataclass
class ControllerHandle:
    config: ControllerConfig
    process: asyncio.subprocess.Process | None = None

    @property
    def index(self) -> int:
        return self.config.index

    @property
    def address(self) -> str:
        return self.config.address

    @property
    def adapter_id(self) -> int:
        return self.config.adapter_id


class Rig:
    def __init__(self, options: RigOptions, workdir: Path | None = None) -> None:
        options.validate()
        self.options = options
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="awgw-rig-"))
        self._bus = PrivateBus(self.workdir / "dbus")
        self._bluezoo: asyncio.subprocess.Process | None = None
        self.controllers: list[ControllerHandle] = []
        self._control_bus: MessageBus | None = None

    @property
    def bus_address(self) -> str:
        return self._bus.address

    @property
    def radio_adapters(self) -> list[str]:
        """The extra central radios (RigOptions.radios), by BlueZ adapter name."""
        first = self.options.controllers + 1
        return [f"hci{first + j}" for j in range(self.options.radios)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}

    async def __aenter__(self) -> Rig:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self._bus.start()
        n, radios = self.options.controllers, self.options.radios
        adapters = [GATEWAY_ADDRESS] + [controller_address(i) for i in range(n)] + [
            radio_address(j) for j in range(radios)]
        args = [sys.executable, "-m", "gateway.sim.bluezoo_patched", "--central", "0",
                "--scan-interval", str(self.options.scan_interval_s),
                "--connect-fail-delay", str(self.options.connect_fail_delay_s)]
        for j in range(radios):
            args += ["--central", str(n + 1 + j)]
        for address in adapters:
            args += ["-a", address]
        where = {"gateway": GATEWAY_ADDRESS, **{f"controller{i}": controller_address(i)
                                                for i in range(n)},
                 **{f"radio{j}": radio_address(j) for j in range(radios)}}
        for name, (x, y) in self.options.positions.items():
            args += ["--position", f"{where[name]}={x},{y}"]
        for index, passkey in self.options.passkeys.items():
            args += ["--passkey", f"{controller_address(index)}={passkey:06d}"]
        self._bluezoo = await self._spawn_ready(args, "bluezoo")
        for i in range(n):
            host, udp = udp_endpoint(self.options, i)
            state_dir = self.workdir / f"controller{i}"
            config = replace(self.options.template, index=i, adapter_id=i + 1,
                             address=controller_address(i), udp_port=udp, udp_host=host,
                             serial_number=f"{100001 + i:06d}", state_dir=str(state_dir))
            self.controllers.append(ControllerHandle(config))
        await asyncio.gather(*(self._start_controller(h) for h in self.controllers))
        self._control_bus = await MessageBus(bus_type=BusType.SYSTEM,
                                             bus_address=self.bus_address).connect()

    async def _spawn_ready(self, args: list[str], what: str) -> asyncio.subprocess.Process:
        # Own process group: a Ctrl-C in the terminal reaches only awgw, which then stops the
        # rig in order (controllers, BlueZoo, bus) instead of everything dying at once.
        proc = await asyncio.create_subprocess_exec(
            *tied(args), env=self.env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=None, start_new_session=True)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(PROCESS_READY_TIMEOUT_S):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise SimError(f"{what} exited before it was ready")
                    if line.strip() == b"READY":
                        return proc
        except TimeoutError as exc:
            proc.kill()
            raise SimError(f"{what} was not ready within {PROCESS_READY_TIMEOUT_S}s") from exc

    async def _start_controller(self, handle: ControllerHandle) -> None:
        handle.process = await self._spawn_ready(
            [sys.executable, "-m", "gateway.sim.controller", handle.config.to_json()],
            f"controller {handle.index}")

    async def _kill_controller(self, handle: ControllerHandle) -> None:
        proc = handle.process
        handle.process = None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def _manager(self, member: str, signature: str, body: list[Any]) -> None:
        await self._call("org.bluez", "/org/bluezoo", "org.bluezoo.Manager1", member, signature,
                         body)

    async def _call(self, dest: str, path: str, iface: str, member: str, signature: str,
                    body: list[Any]) -> Message:
        if self._control_bus is None:
            raise SimError("rig is not running")
        try:
            async with asyncio.timeout(RIG_CALL_TIMEOUT_S):
                reply = await self._control_bus.call(Message(
                    destination=dest, path=path, interface=iface, member=member,
                    signature=signature, body=body))
        except TimeoutError as exc:
            raise SimError(f"{member} on {dest} did not answer within "
                           f"{RIG_CALL_TIMEOUT_S:.0f} s") from exc
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise SimError(f"{member} failed: {reply.error_name}: {reply.body}")
        return reply

    def handle(self, index: int) -> ControllerHandle:
        try:
            return self.controllers[index]
        except IndexError:
            raise SimConfigError(f"no controller {index}") from None

    async def fault(self, index: int, kind: str, **params: Any) -> None:
        """Inject a fault into controller ``index``. See FAULT_KINDS."""
        handle = self.handle(index)
        if kind == "power_loss":
            await self._manager("RemoveAdapter", "y", [handle.adapter_id])
            await self._kill_controller(handle)
        elif kind == "power_restore":
            if handle.process is not None:
                raise SimError(f"controller {index} is powered")
            await self._manager("AddAdapter", "ys", [handle.adapter_id, handle.address])
            await self._start_controller(handle)
        elif kind in FAULT_KINDS:
            if handle.process is None:
                raise SimError(f"controller {index} is powered off")
            variants = {k: _variant(v) for k, v in params.items()}
            await self._call(f"org.autowatering.sim.controller{index}", CONTROL_PATH,
                             CONTROL_IFACE, "InjectFault", "sa{sv}", [kind, variants])
        else:
            raise SimConfigError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")

    async def hub_fault(self, kind: str) -> None:
        """The hub's own radio: ``adapter_lost`` takes hci0 away, as a crashed controller
        firmware on the Pi's combined Wi-Fi/BT chip does; ``adapter_restore`` brings it back."""
        if kind == "adapter_lost":
            await self._manager("RemoveAdapter", "y", [0])
        elif kind == "adapter_restore":
            await self._manager("AddAdapter", "ys", [0, GATEWAY_ADDRESS])
        else:
            raise SimConfigError(f"unknown hub fault {kind!r}; known: adapter_lost, "
                                 "adapter_restore")

    async def raise_alarm(self, index: int, code: int, data: int = 0) -> None:
        await self._call(f"org.autowatering.sim.controller{index}", CONTROL_PATH, CONTROL_IFACE,
                         "RaiseAlarm", "qq", [code, data])

    async def water(self, index: int, channel: int, minutes: int) -> None:
        """Controller ``index`` starts watering by itself (no central involved)."""
        await self._call(f"org.autowatering.sim.controller{index}", CONTROL_PATH, CONTROL_IFACE,
                         "Water", "yq", [channel, minutes])

    async def status(self, index: int) -> dict[str, Any]:
        reply = await self._call(f"org.autowatering.sim.controller{index}", CONTROL_PATH,
                                 CONTROL_IFACE, "Status", "", [])
        result: dict[str, Any] = json.loads(reply.body[0])
        return result

    async def stop(self) -> None:
        if self._control_bus is not None:
            self._control_bus.disconnect()
            self._control_bus = None
        for handle in self.controllers:
            proc = handle.process
            if proc is not None and proc.returncode is None:
                proc.terminate()
        for handle in self.controllers:
            proc = handle.process
            if proc is not None:
                try:
                    async with asyncio.timeout(5):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        if self._bluezoo is not None and self._bluezoo.returncode is None:
            await terminate(self._bluezoo, 5)
        await self._bus.stop()
        if self._own_workdir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.workdir)


def _variant(value: Any) -> Variant:
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        return Variant("x", value)
    if isinstance(value, float):
        return Variant("d", value)
    return Variant("s", str(value))

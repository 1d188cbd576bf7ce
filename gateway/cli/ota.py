"""`awgw image inspect` and `awgw ota`: check an MCUboot image, and update a controller over
BLE (through the daemon when it runs), serial (``socket://`` or a tty) or UDP."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from firmware_bridge.mcuboot import (
    ImageFormatError,
    SignatureError,
    image_problems,
    parse_image,
    verify_signature,
)
from firmware_bridge.ota.outcome import OtaOutcome, OtaResult
from firmware_bridge.ota.outcome import Progress as OtaProgress
from firmware_bridge.ota.session_store import FileSessionStore
from firmware_bridge.ota.update import ConfirmPolicy, FirmwareUpdate, OtaSettings
from firmware_bridge.smp.ble import BleSmpTransport
from firmware_bridge.smp.tcp_serial import TcpSerialTransport
from firmware_bridge.smp.transport import FrameTransport
from firmware_bridge.smp.udp import DEFAULT_PORT as DEFAULT_UDP_PORT
from firmware_bridge.smp.udp import UdpSmpTransport
from gateway import control
from gateway.config import GatewayConfig, load_config
from gateway.errors import CommandFailed, ConfigError
from gateway.ops.radio import read_image

# Exit codes of `awgw ota` beyond the common ones (README "CLI").
EXIT_REVERTED = 8
EXIT_OTA_FAILED = 9
EXIT_BAD_IMAGE = 10
# Connecting a transport: BLE connect + service discovery; serial/UDP are instant when up.
CONNECT_TIMEOUT_S = 15.0


def add_ota_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    image = sub.add_parser("image", help="MCUboot image tools")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    inspect = image_sub.add_parser("inspect", parents=[common], help="parse and check an image")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--key", type=Path, default=None, help="public key PEM to verify with")
    inspect.add_argument("--slot-size", type=int, default=None,
                         help="usable bytes of the target slot")
    inspect.add_argument("--json", action="store_true")

    ota = sub.add_parser("ota", parents=[common], help="update a controller's firmware")
    ota.add_argument("target", nargs="+", metavar="ADDRESS FILE | FILE")
    how = ota.add_mutually_exclusive_group()
    how.add_argument("--serial", metavar="URL", help="SMP over serial, e.g. socket://host:port")
    how.add_argument("--udp", metavar="HOST[:PORT]", help="SMP over UDP")
    ota.add_argument("--window", type=int, default=None,
                     help="requests in flight (default: the device's buf_count)")
    ota.add_argument("--confirm", choices=[p.value for p in ConfirmPolicy],
                     default=ConfirmPolicy.SELF_THEN_EXPLICIT.value)
    ota.add_argument("--pre-erase", action="store_true",
                     help="erase slot 1 before the transfer (new uploads only)")
    ota.add_argument("--slot-limit", type=int, default=None, help="refuse larger images")
    ota.add_argument("--json", action="store_true")


def check_ota_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command != "ota":
        return
    wants = 1 if (args.serial or args.udp) else 2
    if len(args.target) != wants:
        parser.error("ota takes ADDRESS FILE over BLE, or FILE with --serial/--udp")
    if args.window is not None and not 1 <= args.window <= 64:
        parser.error("--window must be 1..64")


def inspect_image(path: Path, key: Path | None, slot_size: int | None) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror}") from exc
    document: dict[str, Any] = {"file": str(path), "size": len(data),
                                "file_sha256": hashlib.sha256(data).hexdigest()}
    try:
        image = parse_image(data)
    except ImageFormatError as exc:
        return {**document, "valid": False, "problems": [str(exc)]}
    problems = [message for _kind, message in image_problems(image, slot_size)]
    signature = None
    if key is not None:
        try:
            signature = verify_signature(data, image, key.read_bytes())
        except (SignatureError, OSError) as exc:
            problems.append(f"signature: {exc}")
    document.update({
        "valid": not problems, "problems": problems, "version": str(image.version),
        "hash": image.image_hash.hex(), "computed_hash": image.computed_hash.hex(),
        "header_size": image.header_size, "image_size": image.image_size,
        "flags": image.flags, "signatures": list(image.signature_types),
        "signature_verified": signature})
    return document


async def run_image_inspect(args: argparse.Namespace) -> int:
    document = inspect_image(args.file, args.key, args.slot_size)
    if args.json:
        print(json.dumps(document, sort_keys=True))
    else:
        console = Console()
        for key, value in document.items():
            console.print(f"[bold]{key}[/bold]: {value}")
    return 0 if document["valid"] else EXIT_BAD_IMAGE


def _settings(args: argparse.Namespace) -> OtaSettings:
    return OtaSettings(window=args.window, pre_erase=args.pre_erase,
                       confirm=ConfirmPolicy(args.confirm), slot_limit=args.slot_limit)


def _connector(args: argparse.Namespace, config: GatewayConfig
               ) -> tuple[str, Callable[[], Awaitable[FrameTransport]]]:
    if args.serial:
        async def serial() -> FrameTransport:
            transport = TcpSerialTransport()
            await transport.connect(args.serial, CONNECT_TIMEOUT_S)
            return transport
        if not args.serial.startswith("socket://"):
            raise ConfigError("only socket://HOST:PORT serial URLs are supported here; for a "
                              "tty use ser2net or socat to expose it on a TCP port")
        return args.serial, serial
    if args.udp:
        host, _, port = args.udp.partition(":")
        async def udp() -> FrameTransport:
            transport = UdpSmpTransport()
            await transport.connect(host, CONNECT_TIMEOUT_S, port=int(port or DEFAULT_UDP_PORT))
            return transport
        return args.udp, udp
    address = args.target[0].upper()

    async def ble() -> FrameTransport:
        transport = BleSmpTransport(address, adapter=config.link.adapter)
        await transport.connect(CONNECT_TIMEOUT_S)
        return transport
    return address, ble


async def run_ota(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path, data = read_image(Path(args.target[-1]))
    ble = not (args.serial or args.udp)
    if ble and control.daemon_running(config.socket_path):
        result = await control.call(config.socket_path, "ota", address=args.target[0],
                                    file=path, window=args.window,
                                    confirm=args.confirm, pre_erase=args.pre_erase,
                                    slot_limit=args.slot_limit)
        return _report(args, result)
    device, connect = _connector(args, config)
    store = FileSessionStore(config.state_dir / "ota")
    if args.json:
        outcome = await FirmwareUpdate(connect, data, device=device, settings=_settings(args),
                                       store=store).run()
    else:
        outcome = await _with_progress(connect, data, device, _settings(args), store)
    return _report(args, outcome.as_json())


async def _with_progress(connect: Callable[[], Awaitable[FrameTransport]], data: bytes,
                         device: str, settings: OtaSettings,
                         store: FileSessionStore) -> OtaOutcome:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("preflight", total=len(data))

        def show(progress: OtaProgress) -> None:
            bar.update(task, description=progress.phase.value,
                       completed=progress.offset or bar.tasks[0].completed)

        return await FirmwareUpdate(connect, data, device=device, settings=settings,
                                    store=store, on_progress=show).run()


def _report(args: argparse.Namespace, outcome: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(outcome, sort_keys=True))
    else:
        style = {"succeeded": "green", "reverted": "yellow"}.get(outcome["result"], "red")
        Console().print(f"[{style}]{outcome['result']}[/{style}] {outcome['detail']} "
                        f"(version {outcome['version']}, {outcome['seconds']} s)")
    return {OtaResult.SUCCEEDED.value: 0, OtaResult.REVERTED.value: EXIT_REVERTED}.get(
        outcome["result"], EXIT_OTA_FAILED)

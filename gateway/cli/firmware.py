"""What `awgw image inspect` and `awgw ota` do (their arguments are in ``cli/ota.py``): check
an MCUboot image, and update a controller over BLE (through the daemon when it runs), serial
over TCP (``socket://``) or UDP, all through the OTA service (gateway/ota/service.py)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
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
from firmware_bridge.ota.outcome import ConfirmPolicy, OtaResult
from firmware_bridge.ota.outcome import Progress as OtaProgress
from firmware_bridge.ota.update import OtaSettings
from firmware_bridge.smp.tcp_serial import TcpSerialTransport
from firmware_bridge.smp.transport import FrameTransport
from firmware_bridge.smp.udp import DEFAULT_PORT as DEFAULT_UDP_PORT
from firmware_bridge.smp.udp import UdpSmpTransport
from gateway.cli import exits, output
from gateway.cli.link import operations
from gateway.cli.screen import Screen, Style, Styled
from gateway.config import GatewayConfig, load_config
from gateway.errors import CommandFailed, ConfigError
from gateway.ops.models import Ota, OtaReport
from gateway.ops.protocol import ProgressFn
from gateway.ota.service import OtaService
from gateway.store.images import read_image
from gateway.store.registry import Registry


class ImageInspection(BaseModel):
    """What `awgw image inspect` finds; the image fields are there once the header parsed."""

    model_config = ConfigDict(frozen=True)

    file: str
    size: int
    file_sha256: str
    valid: bool
    problems: list[str]
    version: str | None = None
    hash: str | None = None
    computed_hash: str | None = None
    header_size: int | None = None
    image_size: int | None = None
    flags: int | None = None
    signatures: list[str] | None = None
    signature_verified: str | None = None  # the scheme that verified, with --key


def inspect_image(path: Path, key: Path | None, slot_size: int | None) -> ImageInspection:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror}") from exc
    name, size, digest = str(path), len(data), hashlib.sha256(data).hexdigest()
    try:
        image = parse_image(data)
    except ImageFormatError as exc:
        return ImageInspection(file=name, size=size, file_sha256=digest, valid=False,
                               problems=[str(exc)])
    problems = [message for _kind, message in image_problems(image, slot_size)]
    signature = None
    if key is not None:
        try:
            signature = verify_signature(data, image, key.read_bytes())
        except (SignatureError, OSError) as exc:
            problems.append(f"signature: {exc}")
    return ImageInspection(
        file=name, size=size, file_sha256=digest, valid=not problems, problems=problems,
        version=str(image.version), hash=image.image_hash.hex(),
        computed_hash=image.computed_hash.hex(), header_size=image.header_size,
        image_size=image.image_size, flags=image.flags,
        signatures=list(image.signature_types), signature_verified=signature)


async def run_image_inspect(args: argparse.Namespace) -> int:
    inspection = inspect_image(args.file, args.key, args.slot_size)
    document = inspection.model_dump(mode="json", exclude_unset=True)
    if args.json:
        print(json.dumps(document, sort_keys=True))
    else:
        screen = Screen()
        for key, value in document.items():
            screen.line(Styled(str(key), "bold"), f": {value}")
    return 0 if inspection.valid else exits.BAD_IMAGE


def _settings(args: argparse.Namespace, service: OtaService) -> OtaSettings:
    return service.settings(window=args.window, confirm=ConfirmPolicy(args.confirm),
                            pre_erase=args.pre_erase, slot_limit=args.slot_limit)


def _endpoint(args: argparse.Namespace, config: GatewayConfig
              ) -> tuple[str, Callable[[], Awaitable[FrameTransport]]]:
    """A serial console or UDP endpoint; the connect timeout is the configured one."""
    timeout_s = config.link.connect_timeout_s
    if args.serial:
        if not args.serial.startswith("socket://"):
            raise ConfigError("only socket://HOST:PORT serial URLs are supported here; for a "
                              "tty use ser2net or socat to expose it on a TCP port")

        async def serial() -> FrameTransport:
            transport = TcpSerialTransport()
            await transport.connect(args.serial, timeout_s)
            return transport
        return args.serial, serial
    host, _, port = args.udp.partition(":")
    if port and not port.isdigit():
        raise ConfigError(f"--udp {args.udp!r} is not HOST[:PORT]")

    async def udp() -> FrameTransport:
        transport = UdpSmpTransport()
        await transport.connect(host, timeout_s, port=int(port or DEFAULT_UDP_PORT))
        return transport
    return args.udp, udp


async def run_ota(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    file = Path(args.target[-1])
    with _progress(args) as show:
        if args.serial or args.udp:
            service = OtaService(config, Registry(config.registry_path))
            device, connect = _endpoint(args, config)
            data = read_image(file)
            report = await service.update_endpoint(device, data, _settings(args, service),
                                                   connect, show)
        else:
            # Read here, with the user's own rights: the daemon gets the bytes, never a path.
            request = Ota(address=args.target[0], image=read_image(file), window=args.window,
                          confirm=ConfirmPolicy(args.confirm), pre_erase=args.pre_erase,
                          slot_limit=args.slot_limit)
            report = await operations(config).ota(request, show)
    return _report(args, report)


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[ProgressFn | None]:
    """A progress bar for people; JSON lines for --json (its last line is the report)."""
    if args.json:
        def line(progress: OtaProgress) -> None:
            print(json.dumps({"progress": {
                "phase": progress.phase.value, "offset": progress.offset,
                "total": progress.total, "rate_bytes_per_s": round(progress.rate_bytes_per_s, 1),
                "eta_s": None if progress.eta_s is None else round(progress.eta_s, 1)}}),
                flush=True)
        yield line
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task: TaskID | None = None

        def show(progress: OtaProgress) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(progress.phase.value, total=progress.total or None)
            bar.update(task, description=progress.phase.value,
                       total=progress.total or None,
                       completed=progress.offset or bar.tasks[0].completed)
        yield show


def _report(args: argparse.Namespace, report: OtaReport) -> int:
    if args.json:
        output.print_json(report)
    else:
        outcome: dict[str, Style] = {"succeeded": "green", "reverted": "yellow"}
        style = outcome.get(report.result, "red")
        revision = "" if report.firmware_revision is None else (
            f", the controller reports {report.firmware_revision}")
        Screen().line(Styled(report.result, style),
                      f" {report.detail} (version {report.version}, {report.seconds} s{revision}; "
                      f"{report.frames_lost} frames lost, {report.reconnects} reconnects, "
                      f"window {report.window})")
    return {OtaResult.SUCCEEDED.value: 0, OtaResult.REVERTED.value: exits.OTA_REVERTED}.get(
        report.result, exits.OTA_FAILED)

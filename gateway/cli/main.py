"""``awgw``: the gateway's command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.logging import configure_logging

EXIT_FAILURE = 1


@dataclass(frozen=True)
class FaultSpec:
    """``INDEX:KIND[:key=value,...]`` from the command line, e.g. ``0:drop_link:delay_s=5``."""

    index: int
    kind: str
    params: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        parts = text.split(":", 2)
        if len(parts) < 2 or not parts[0].isdigit() or not parts[1]:
            raise argparse.ArgumentTypeError(
                f"fault {text!r} is not INDEX:KIND[:key=value,...]")
        params: dict[str, Any] = {}
        if len(parts) == 3 and parts[2]:
            for item in parts[2].split(","):
                key, sep, raw = item.partition("=")
                if not sep or not key:
                    raise argparse.ArgumentTypeError(f"fault parameter {item!r} is not key=value")
                params[key] = _number(raw)
        return cls(int(parts[0]), parts[1], params)


def _number(raw: str) -> int | float | str:
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            continue
    return raw


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    noun = "whole number" if kind is int else "number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be positive")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_positive_int = _positive(int)
_positive_float = _positive(float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awgw", description="AutoWatering home gateway")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run the virtual rig of AutoWatering controllers")
    sim.add_argument("--controllers", type=_positive_int, default=3)
    sim.add_argument("--udp-base-port", type=_positive_int, default=None,
                     help="also serve SMP over UDP on this port + controller index")
    sim.add_argument("--interval-ms", type=_positive_float, default=30.0,
                     help="BLE connection interval of the link model")
    sim.add_argument("--packets-per-event", type=_positive_int, default=4)
    sim.add_argument("--mtu", type=_positive_int, default=247)
    sim.add_argument("--buf-size", type=_positive_int, default=384, help="SMP netbuf size")
    sim.add_argument("--buf-count", type=_positive_int, default=4, help="SMP netbuf count")
    sim.add_argument("--no-mcumgr-params", action="store_true",
                     help="answer MCUmgr params with rc 8, like the spec'd firmware")
    sim.add_argument("--no-smp", action="store_true", help="firmware without MCUboot/SMP")
    sim.add_argument("--firmware-version", default="3.1.0")
    sim.add_argument("--schedule-every", type=_positive_float, default=None, metavar="S",
                     help="each controller waters one zone every S seconds")
    sim.add_argument("--time-scale", type=_positive_float, default=1.0,
                     help="simulated watering time per real second")
    sim.add_argument("--self-confirm-after", type=_positive_float, default=None, metavar="S",
                     help="firmware confirms a new image itself S seconds after booting it, "
                          "as AutoWatering firmware does")
    sim.add_argument("--fault", type=FaultSpec.parse, action="append", default=[],
                     metavar="INDEX:KIND[:k=v,...]",
                     help="inject a fault after start (add delay_s=S to wait first)")

    demo = sub.add_parser("demo", help="run the virtual rig and watch it live")
    demo.add_argument("--controllers", type=_positive_int, default=3)
    demo.add_argument("--duration", type=_positive_float, default=None, metavar="S")
    demo.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    sim.add_argument("--passkey", action="append", default=[], metavar="INDEX=NNNNNN",
                     help="that controller's firmware demands this pairing passkey")

    from gateway.cli.link import add_link_commands, common_options
    from gateway.cli.ota import add_ota_commands

    common = common_options()
    add_link_commands(sub, common)
    add_ota_commands(sub, common)
    return parser


def _check_sim_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-option checks argparse cannot express; failures exit 2 with argparse's message."""
    from gateway.sim.errors import SimConfigError
    from gateway.sim.rig import FAULT_KINDS, RigOptions

    for item in args.passkey:
        index, sep, key = item.partition("=")
        if not sep or not index.isdigit() or len(key) != 6 or not key.isdigit():
            parser.error(f"--passkey {item!r} is not INDEX=NNNNNN")
        if int(index) >= args.controllers:
            parser.error(f"--passkey names controller {index}, but there are {args.controllers}")
    for spec in args.fault:
        if spec.kind not in FAULT_KINDS:
            parser.error(f"unknown fault {spec.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if spec.index >= args.controllers:
            parser.error(f"fault names controller {spec.index}, "
                         f"but there are {args.controllers}")
    try:
        RigOptions(controllers=args.controllers, template=_controller_template(args)).validate()
    except SimConfigError as exc:
        parser.error(str(exc))


def _controller_template(args: argparse.Namespace) -> Any:
    from gateway.sim.controller.device import ControllerConfig

    return ControllerConfig(
        0, 0, "", firmware_version=args.firmware_version, smp=not args.no_smp,
        mcumgr_params=not args.no_mcumgr_params, buf_size=args.buf_size,
        buf_count=args.buf_count, interval_ms=args.interval_ms,
        packets_per_event=args.packets_per_event, mtu=args.mtu,
        schedule_every_s=args.schedule_every, time_scale=args.time_scale,
        self_confirm_after_s=args.self_confirm_after)


async def _run_sim(args: argparse.Namespace) -> int:
    from gateway.sim.rig import Rig, RigOptions

    template = _controller_template(args)
    passkeys = {int(i): int(k) for i, _, k in (p.partition("=") for p in args.passkey)}
    options = RigOptions(controllers=args.controllers, udp_base_port=args.udp_base_port,
                         template=template, passkeys=passkeys)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Rig(options) as rig:
        print(f"DBUS_SYSTEM_BUS_ADDRESS={rig.bus_address}", flush=True)
        for handle in rig.controllers:
            print(f"# controller {handle.index}: {handle.address} on hci{handle.adapter_id}",
                  file=sys.stderr, flush=True)
        async with asyncio.TaskGroup() as group:
            faults = [group.create_task(_delayed_fault(rig, spec), name=f"fault-{spec.kind}")
                      for spec in args.fault]
            await stop.wait()
            for task in faults:
                task.cancel()
    return 0


async def _delayed_fault(rig: Any, spec: FaultSpec) -> None:
    params = dict(spec.params)
    await asyncio.sleep(float(params.pop("delay_s", 0.0)))
    await rig.fault(spec.index, spec.kind, **params)


async def _run_demo(args: argparse.Namespace) -> int:
    from gateway.demo import print_report, run_demo

    report = await run_demo(args.controllers, args.duration, args.json)
    if args.json:
        print_report(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from gateway.cli.link import (
        LINK_COMMANDS,
        check_link_args,
        exit_code,
        run_link_command,
    )
    from gateway.cli.ota import check_ota_args, run_image_inspect, run_ota

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sim":
        _check_sim_args(parser, args)
    if args.command in LINK_COMMANDS:
        check_link_args(parser, args)
    check_ota_args(parser, args)
    level = "info" if args.command == "daemon" and args.log_level == "warning" else args.log_level
    configure_logging(json_logs=True, level=level)
    runners = {"sim": _run_sim, "demo": _run_demo, "image": run_image_inspect,
               "ota": run_ota}
    runner = runners.get(args.command, run_link_command)
    try:
        code: int = asyncio.run(runner(args))
    except GatewayError as exc:
        print(f"awgw {args.command}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

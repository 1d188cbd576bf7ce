"""`awgw sim` and `awgw demo`: the virtual rig, and the gateway's main job shown on it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from gateway.cli import exits
from gateway.cli.args import positive_float, positive_int

COMMANDS = ("sim", "demo")


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


def add_commands(sub: Any) -> None:
    sim = sub.add_parser("sim", help="run the virtual rig of AutoWatering controllers")
    sim.add_argument("--controllers", type=positive_int, default=3)
    sim.add_argument("--udp-base-port", type=positive_int, default=None,
                     help="also serve SMP over UDP on this port + controller index")
    sim.add_argument("--udp-addresses", action="store_true",
                     help="also serve SMP over UDP on port 1337 at 127.0.1.<index + 1>")
    sim.add_argument("--interval-ms", type=positive_float, default=30.0,
                     help="BLE connection interval of the link model")
    sim.add_argument("--packets-per-event", type=positive_int, default=4)
    sim.add_argument("--mtu", type=positive_int, default=247)
    sim.add_argument("--buf-size", type=positive_int, default=384, help="SMP netbuf size")
    sim.add_argument("--buf-count", type=positive_int, default=4, help="SMP netbuf count")
    sim.add_argument("--no-mcumgr-params", action="store_true",
                     help="answer MCUmgr params with rc 8, like the spec'd firmware")
    sim.add_argument("--no-smp", action="store_true", help="firmware without MCUboot/SMP")
    sim.add_argument("--firmware-version", default="3.1.0")
    sim.add_argument("--schedule-every", type=positive_float, default=None, metavar="S",
                     help="each controller waters one zone every S seconds")
    sim.add_argument("--time-scale", type=positive_float, default=1.0,
                     help="simulated watering time per real second")
    sim.add_argument("--self-confirm-after", type=positive_float, default=None, metavar="S",
                     help="firmware confirms a new image itself S seconds after booting it, "
                          "as AutoWatering firmware does")
    sim.add_argument("--fault", type=FaultSpec.parse, action="append", default=[],
                     metavar="INDEX:KIND[:k=v,...]",
                     help="inject a fault after start (add delay_s=S to wait first)")

    demo = sub.add_parser("demo", help="run the virtual rig and watch it live")
    demo.add_argument("--controllers", type=positive_int, default=3)
    demo.add_argument("--duration", type=positive_float, default=None, metavar="S")
    demo.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    demo.add_argument("--until-updated", action="store_true",
                      help="end once the cloud update is done (--duration still bounds it)")
    demo.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                      help="the MQTT broker: mosquitto where installed (auto), or amqtt")
    sim.add_argument("--passkey", action="append", default=[], metavar="INDEX=NNNNNN",
                     help="that controller's firmware demands this pairing passkey")
    sim.add_argument("--radios", type=int, default=0, metavar="N",
                     help="extra hub adapters beside hci0 (listed under org.bluez)")
    sim.add_argument("--proxies", type=int, default=0, metavar="N",
                     help="ESPHome Bluetooth proxies, each with a radio of its own, serving "
                          "the native API on 127.0.0.1 from --proxy-port up")
    sim.add_argument("--proxy-port", type=positive_int, default=6053)
    sim.add_argument("--proxy-encryption", action="store_true",
                     help="the proxies speak Noise; their keys are printed at start")
    sim.add_argument("--place", action="append", default=[], metavar="NAME=X,Y",
                     help="put gateway, controller<i>, radio<j> or proxy<k> at X,Y metres in "
                          "the garden; placed radios hear only what is in their range")



def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-option checks argparse cannot express; failures exit 2 with argparse's message."""
    if args.command != "sim":
        return
    from gateway.sim.errors import SimConfigError
    from gateway.sim.rig import FAULT_KINDS

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
    if not 0 <= args.proxies <= 8:
        parser.error(f"--proxies must be 0..8, got {args.proxies}")
    if args.radios < 0:
        parser.error(f"--radios must be 0 or more, got {args.radios}")
    try:
        _rig_options(args).validate()
    except SimConfigError as exc:
        parser.error(str(exc))


def _positions(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """``--place`` as RigOptions.positions; a proxy's radio comes after the extra adapters."""
    from gateway.sim.errors import SimConfigError

    placed: dict[str, tuple[float, float]] = {}
    for item in args.place:
        name, sep, where = item.partition("=")
        x, comma, y = where.partition(",")
        try:
            point = (float(x), float(y))
        except ValueError:
            point = None
        if not sep or not comma or point is None:
            raise SimConfigError(f"--place {item!r} is not NAME=X,Y")
        if name.startswith("proxy") and name[5:].isdigit():
            if int(name[5:]) >= args.proxies:
                raise SimConfigError(f"--place names {name}, but there are {args.proxies} "
                                     "proxies")
            name = f"radio{args.radios + int(name[5:])}"
        placed[name] = point
    return placed


def _rig_options(args: argparse.Namespace) -> Any:
    from gateway.sim.rig import RigOptions

    passkeys = {int(i): int(k) for i, _, k in (p.partition("=") for p in args.passkey)}
    return RigOptions(controllers=args.controllers, udp_base_port=args.udp_base_port,
                      udp_own_address=args.udp_addresses, template=_controller_template(args),
                      passkeys=passkeys, radios=args.radios + args.proxies,
                      positions=_positions(args))


def _controller_template(args: argparse.Namespace) -> Any:
    from gateway.sim.controller.config import ControllerConfig

    return ControllerConfig(
        0, 0, "", firmware_version=args.firmware_version, smp=not args.no_smp,
        mcumgr_params=not args.no_mcumgr_params, buf_size=args.buf_size,
        buf_count=args.buf_count, interval_ms=args.interval_ms,
        packets_per_event=args.packets_per_event, mtu=args.mtu,
        schedule_every_s=args.schedule_every, time_scale=args.time_scale,
        self_confirm_after_s=args.self_confirm_after)


async def run_sim(args: argparse.Namespace) -> int:
    from gateway.sim.rig import Rig

    options = _rig_options(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Rig(options) as rig:
        print(f"DBUS_SYSTEM_BUS_ADDRESS={rig.bus_address}", flush=True)
        for handle in rig.controllers:
            udp = "" if handle.config.udp_port is None else (
                f", SMP over UDP at {handle.config.udp_host}:{handle.config.udp_port}")
            print(f"# controller {handle.index}: {handle.address} on hci{handle.adapter_id}{udp}",
                  file=sys.stderr, flush=True)
        radios = rig.radio_adapters
        for name in radios[:args.radios]:
            print(f"# hub adapter {name}", file=sys.stderr, flush=True)
        # The proxies' radios are bleak in this process, on the rig's bus.
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = rig.bus_address
        async with contextlib.AsyncExitStack() as stack:
            await _start_proxies(args, radios[args.radios:], stack)
            await _serve(rig, args, stop)
    return 0


async def _start_proxies(args: argparse.Namespace, adapters: list[str],
                         stack: contextlib.AsyncExitStack) -> None:
    import base64
    import secrets

    from gateway.sim.errors import SimError
    from gateway.sim.esphome.radio import BleakRadio
    from gateway.sim.esphome.server import ProxyServer, ProxySettings

    for k, adapter in enumerate(adapters):
        key = base64.b64encode(secrets.token_bytes(32)).decode() \
            if args.proxy_encryption else None
        proxy = ProxyServer(ProxySettings(name=f"garden-proxy-{k}", mac=f"A4:CF:12:00:{k:02X}:01",
                                          bluetooth_mac=f"A4:CF:12:00:{k:02X}:03",
                                          noise_psk=key, port=args.proxy_port + k),
                            BleakRadio(adapter))
        try:
            await proxy.start()
        except OSError as exc:
            raise SimError(f"proxy {k} cannot listen on 127.0.0.1:{args.proxy_port + k}: "
                           f"{exc.strerror or exc} (choose another --proxy-port)") from exc
        stack.push_async_callback(proxy.stop)
        print(f"# proxy {k}: ESPHome API at 127.0.0.1:{proxy.port}, radio {adapter}"
              + (f", Noise key {key}" if key else ", plaintext"), file=sys.stderr, flush=True)


async def _serve(rig: Any, args: argparse.Namespace, stop: asyncio.Event) -> None:
    async with asyncio.TaskGroup() as group:
            faults = [group.create_task(_delayed_fault(rig, spec), name=f"fault-{spec.kind}")
                      for spec in args.fault]
            await stop.wait()
            for task in faults:
                task.cancel()


async def _delayed_fault(rig: Any, spec: FaultSpec) -> None:
    params = dict(spec.params)
    await asyncio.sleep(float(params.pop("delay_s", 0.0)))
    await rig.fault(spec.index, spec.kind, **params)


async def run_demo_command(args: argparse.Namespace) -> int:
    from gateway.demo import print_report, run_demo

    report = await run_demo(args.controllers, args.duration, args.json, args.broker,
                          args.until_updated)
    if args.json:
        print_report(report)
    return 0 if report.error is None else exits.FAILURE

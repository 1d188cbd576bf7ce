"""The controller-link commands of `awgw`: daemon, scan, pair, unpair, devices, state, refresh,
valve.

Each builds its typed request (``ops.models``) and asks the running daemon over its control
socket when there is one, or acts on the radio directly otherwise; both answer with the same
result models.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
from typing import Any

from pydantic import BaseModel

from firmware_bridge.gatt.limits import NO_CHANNEL
from gateway.cli import args as types
from gateway.cli import exits, logs, output
from gateway.config import GatewayConfig, OtaPolicy, load_config
from gateway.control import client as control
from gateway.control.client import SocketOperations
from gateway.errors import CommandFailed
from gateway.ops.models import (
    MAX_VALVE_MINUTES,
    CommandResult,
    ControllerState,
    Devices,
    GetState,
    Pair,
    Refresh,
    Request,
    Scan,
    Unpair,
    ValveClose,
    ValveOpen,
)
from gateway.ops.protocol import Operations, dispatch

COMMANDS = ("daemon", "scan", "pair", "unpair", "devices", "state", "refresh", "valve")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("daemon", parents=[common], help="run the gateway daemon (systemd service)")
    scan = sub.add_parser("scan", parents=[common], help="list AutoWatering controllers in range")
    scan.add_argument("--json", action="store_true")
    pair = sub.add_parser("pair", parents=[common], help="pair a controller (Just Works)")
    pair.add_argument("address")
    pair.add_argument("--passkey", type=types.passkey, default=None,
                      help="6-digit passkey, for firmware that asks for one")
    pair.add_argument("--board", default=None,
                      help="the board releases are built for (default arduino_nano_33_ble)")
    pair.add_argument("--ota-policy", choices=[p.value for p in OtaPolicy], default=None,
                      help="cloud releases: manual, mandatory or auto (default: the config's)")
    pair.add_argument("--radio", default=None, metavar="NAME",
                      help="serve it only through this radio (an adapter such as hci1, or an "
                           "[[radios.esphome]] name); kept across restarts")
    pair.add_argument("--json", action="store_true")
    unpair = sub.add_parser("unpair", parents=[common], help="forget a controller and its bond")
    unpair.add_argument("address")
    unpair.add_argument("--json", action="store_true")
    devices = sub.add_parser("devices", parents=[common], help="paired controllers")
    devices.add_argument("--json", action="store_true")
    for name, text in (("state", "a controller's current state"),
                       ("refresh", "read a controller now and show its state")):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("address")
        command.add_argument("--json", action="store_true")
    valve = sub.add_parser("valve", parents=[common], help="open or close a zone valve")
    valve.add_argument("address")
    valve.add_argument("channel", type=types.channel)
    valve.add_argument("action", choices=["open", "close"])
    valve.add_argument("--minutes", type=int, default=None)
    valve.add_argument("--json", action="store_true")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command != "valve":
        return
    if args.action == "open" and args.minutes is None:
        parser.error("valve ... open needs --minutes M")
    if args.action == "close" and args.minutes is not None:
        parser.error("--minutes only goes with open")
    if args.minutes is not None and not 1 <= args.minutes <= MAX_VALVE_MINUTES:
        parser.error(f"--minutes must be 1..{MAX_VALVE_MINUTES}, got {args.minutes}: the "
                     "controller's firmware keeps a task's minutes in one byte (device-ble.md "
                     "Δ21), so a longer run would not run as asked; water in separate runs")


def request_of(args: argparse.Namespace) -> Request:
    match args.command:
        case "scan":
            return Scan()
        case "pair":
            return Pair(address=args.address, passkey=args.passkey, board=args.board,
                        ota_policy=OtaPolicy(args.ota_policy) if args.ota_policy else None,
                        radio=args.radio)
        case "unpair":
            return Unpair(address=args.address)
        case "devices":
            return Devices()
        case "state":
            return GetState(address=args.address)
        case "refresh":
            return Refresh(address=args.address)
        case "valve" if args.action == "open":
            if args.channel == NO_CHANNEL:
                raise CommandFailed("the master valve opens with the zones; open a zone instead")
            return ValveOpen(address=args.address, channel=args.channel, minutes=args.minutes)
        case "valve":
            return ValveClose(address=args.address, channel=args.channel)
    raise AssertionError(f"no request for {args.command}")


def operations(config: GatewayConfig) -> Operations:
    """The daemon's when it runs (it owns the radio), else this process's own: only then are
    the radio's modules imported and logging started."""
    if control.daemon_running(config.socket_path):
        return SocketOperations(config.socket_path)
    logs.start()
    from gateway.cli.direct import DirectOperations
    from gateway.store.registry import Registry

    return DirectOperations(config, Registry(config.registry_path))


async def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.command == "daemon":
        from gateway.daemon.main import run_daemon

        # A daemon that hangs can be asked where (SIGUSR1: every thread's stack to stderr,
        # the journal) and one that crashes in C says where: a stuck shutdown is otherwise
        # a silent SIGKILL after systemd's stop timeout.
        faulthandler.enable()
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        await run_daemon(config)
        return 0
    result = await dispatch(operations(config), request_of(args))
    show(args, result)
    if isinstance(result, CommandResult) and not result.ok:
        return exits.COMMAND_REFUSED
    return 0


def show(args: argparse.Namespace, result: object) -> None:
    if getattr(args, "json", False):
        output.print_json(result)
    elif isinstance(result, ControllerState):
        output.print_state(result)
    elif args.command == "scan" and isinstance(result, list):
        output.print_table(result, ["address", "name", "rssi", "paired"])
    elif args.command == "devices" and isinstance(result, list):
        output.print_table(result, ["address", "name", "serial", "firmware_version", "bonded",
                                    "policy", "link", "last_seen"])
    elif isinstance(result, BaseModel):
        output.print_record(result)

"""The controller-link commands of `awgw`: daemon, scan, pair, unpair, devices, state, valve.

Each talks to the running daemon over its control socket when there is one, and acts on the
radio directly otherwise. Human output is rich tables; ``--json`` prints one JSON document as
the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway import control
from gateway.config import GatewayConfig, load_config
from gateway.daemon import run_daemon
from gateway.errors import (
    CommandFailed,
    ConfigError,
    ControllerBusy,
    GatewayError,
    PairingError,
    UnknownController,
)
from gateway.ops.radio import DirectOperations
from gateway.store.registry import Registry

# Exit codes a script can act on (README "CLI"): 2 is argparse's usage error.
EXIT_CODES: dict[type[GatewayError], int] = {
    UnknownController: 3,
    ControllerBusy: 4,
    CommandFailed: 5,
    PairingError: 6,
    ConfigError: 7,
}
LINK_COMMANDS = ("daemon", "scan", "pair", "unpair", "devices", "state", "valve")


def exit_code(exc: GatewayError) -> int:
    for cls, code in EXIT_CODES.items():
        if isinstance(exc, cls):
            return code
    return 1


def add_link_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("daemon", parents=[common], help="run the gateway daemon (systemd service)")
    scan = sub.add_parser("scan", parents=[common], help="list AutoWatering controllers in range")
    scan.add_argument("--json", action="store_true")
    pair = sub.add_parser("pair", parents=[common], help="pair a controller (Just Works)")
    pair.add_argument("address")
    pair.add_argument("--passkey", type=_passkey, default=None,
                      help="6-digit passkey, for firmware that asks for one")
    pair.add_argument("--json", action="store_true")
    unpair = sub.add_parser("unpair", parents=[common], help="forget a controller and its bond")
    unpair.add_argument("address")
    unpair.add_argument("--json", action="store_true")
    devices = sub.add_parser("devices", parents=[common], help="paired controllers")
    devices.add_argument("--json", action="store_true")
    state = sub.add_parser("state", parents=[common], help="a controller's current state")
    state.add_argument("address")
    state.add_argument("--json", action="store_true")
    valve = sub.add_parser("valve", parents=[common], help="open or close a zone valve")
    valve.add_argument("address")
    valve.add_argument("channel", type=_channel)
    valve.add_argument("action", choices=["open", "close"])
    valve.add_argument("--minutes", type=int, default=None)
    valve.add_argument("--json", action="store_true")


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help="config file (default: $AWGW_CONFIG or /etc/awgw/config.toml)")
    return common


def check_link_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command == "valve":
        if args.action == "open" and args.minutes is None:
            parser.error("valve ... open needs --minutes M")
        if args.action == "close" and args.minutes is not None:
            parser.error("--minutes only goes with open")
        if args.minutes is not None and not 1 <= args.minutes <= 1440:
            parser.error(f"--minutes must be 1..1440, got {args.minutes}")


def _passkey(text: str) -> int:
    if len(text) != 6 or not text.isdigit():
        raise argparse.ArgumentTypeError(f"passkey {text!r} is not 6 digits")
    return int(text)


def _channel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"channel {text!r} is not a number") from None
    if not (0 <= value <= 7 or value == 255):
        raise argparse.ArgumentTypeError(f"channel {value} is out of range (0..7, 255 master)")
    return value


async def run_link_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.command == "daemon":
        await run_daemon(config)
        return 0
    result = await _dispatch(config, args)
    _print(args, _jsonable(result))
    failed = args.command == "valve" and isinstance(result, dict) and not result.get("ok")
    return EXIT_CODES[CommandFailed] if failed else 0


async def _dispatch(config: GatewayConfig, args: argparse.Namespace) -> Any:
    request: dict[str, Any] = {}
    if hasattr(args, "address"):
        request["address"] = args.address
    if args.command == "pair":
        request["passkey"] = args.passkey
    if args.command == "valve":
        request.update(channel=args.channel, action=args.action, minutes=args.minutes)
    if control.daemon_running(config.socket_path):
        return await control.call(config.socket_path, args.command, **request)
    ops = DirectOperations(config, Registry(config.registry_path))
    method = getattr(ops, args.command)
    return await method(**request)


def _jsonable(result: Any) -> Any:
    if isinstance(result, list):
        return [_jsonable(r) for r in result]
    dump = getattr(result, "model_dump", None)
    return dump(mode="json") if callable(dump) else result


def _print(args: argparse.Namespace, document: Any) -> None:
    if getattr(args, "json", False):
        print(json.dumps(document, sort_keys=True))
        return
    console = Console()
    match args.command:
        case "scan":
            console.print(_table(["address", "name", "rssi", "paired"], document))
        case "devices":
            console.print(_table(["address", "name", "serial", "firmware_version", "bonded",
                                  "policy", "link", "last_seen"], document))
        case "state":
            _print_state(console, document)
        case _:
            console.print(_table(list(document), [document]))


def _table(columns: list[str], rows: list[dict[str, Any]]) -> Table:
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(c, row.get(c)) for c in columns))
    return table


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("last_seen", "at", "updated_at") and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)


def _print_state(console: Console, doc: dict[str, Any]) -> None:
    fresh = "fresh" if doc.get("fresh") else f"STALE ({doc.get('age_s')} s old)"
    console.print(f"[bold]{doc['address']}[/bold] firmware {doc.get('firmware_version')} "
                  f"link {doc.get('link_state', doc.get('link'))} - {fresh}")
    valves = Table("channel", "name", "open")
    for valve in doc["valves"]:
        valves.add_row(str(valve["channel"]), valve.get("name") or "-",
                       "[green]open[/green]" if valve["open"] else "closed")
    console.print(valves)
    summary = Table("item", "value")
    for key in ("system_status", "flow", "alarm", "current_task", "task_queue"):
        item = doc.get(key)
        summary.add_row(key, "-" if item is None else ", ".join(
            f"{k}={v}" for k, v in item.items() if k != "at"))
    console.print(summary)

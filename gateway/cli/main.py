"""``awgw``: the parser, the logging set-up, and errors turned into exit codes. Each command
family lives in its own module (``link``, ``ota``, ``sim``), whose runner is imported only
when its command runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.cli import cloud, exits, hub, link, logs, ota, sim
from gateway.cli.args import common_options
from gateway.config import LogLevel, load_config
from gateway.errors import GatewayError
from gateway.sim.errors import SimError

Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
# Each command's runner as "module:function", imported only for the command that runs: the
# parser alone must stay light, so `awgw --help` and `awgw status` do not import the radio,
# the cloud client, MCUboot or the rig.
RUNNERS: dict[str, str] = {
    "sim": "gateway.cli.sim:run_sim", "demo": "gateway.cli.sim:run_demo_command",
    "image": "gateway.cli.firmware:run_image_inspect", "ota": "gateway.cli.firmware:run_ota",
    **dict.fromkeys(link.COMMANDS, "gateway.cli.link:run"),
    **dict.fromkeys(cloud.COMMANDS, "gateway.cli.cloud:run"),
    **dict.fromkeys(hub.COMMANDS, "gateway.cli.hub:run"),
}
# Commands that may be answered by the daemon over its socket: they start logging only when
# they act themselves (cli/link.py's ``operations``; cli/cloud.py's account).
LOGS_WHEN_NEEDED = frozenset({*link.COMMANDS, "status", "claim", "unclaim", "cloud"}
                             - {"daemon"})


def runner(command: str) -> Runner:
    module, _, function = RUNNERS[command].partition(":")
    found: Runner = getattr(importlib.import_module(module), function)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awgw", description="AutoWatering home gateway")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="default: the config's log_level for the daemon, warning otherwise")
    sub = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    sim.add_commands(sub)
    link.add_commands(sub, common)
    ota.add_commands(sub, common)
    cloud.add_commands(sub, common)
    hub.add_commands(sub, common)
    return parser


def log_level(args: argparse.Namespace) -> LogLevel:
    """The daemon logs at its configured level (journald keeps it); one-shot commands only say
    what went wrong unless asked."""
    if args.log_level is not None:
        level: LogLevel = args.log_level
        return level
    if args.command == "daemon":
        return load_config(args.config).log_level
    return "warning"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sim.check_args(parser, args)
    link.check_args(parser, args)
    ota.check_args(parser, args)
    cloud.check_args(parser, args)
    from pydantic import ValidationError

    try:
        # The daemon's log is its stdout (journald); a command's stdout is its result.
        logs.want(log_level(args), sys.stdout if args.command == "daemon" else sys.stderr)
        if args.command not in LOGS_WHEN_NEEDED:
            logs.start()
        return asyncio.run(runner(args.command)(args))
    except GatewayError as exc:
        print(f"awgw {args.command}: error: {exc}", file=sys.stderr)
        return exits.exit_code(exc)
    except ValidationError as exc:  # a request the models refuse: a usage error
        print(f"awgw {args.command}: error: {exc}", file=sys.stderr)
        return exits.USAGE
    except SimError as exc:
        print(f"awgw {args.command}: error: {exc}", file=sys.stderr)
        return exits.FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

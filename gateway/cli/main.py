"""``awgw``: the parser, the logging set-up, and errors turned into exit codes. Each command
family lives in its own module (``link``, ``ota``, ``sim``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

from gateway.cli import cloud, exits, hub, link, ota, sim
from gateway.cli.args import common_options
from gateway.config import LogLevel, load_config
from gateway.errors import GatewayError
from gateway.logging import configure_logging
from gateway.sim.errors import SimError

Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
RUNNERS: dict[str, Runner] = {
    "sim": sim.run_sim, "demo": sim.run_demo_command, "image": ota.run_image_inspect,
    "ota": ota.run_ota, **dict.fromkeys(link.COMMANDS, link.run),
    **dict.fromkeys(cloud.COMMANDS, cloud.run), **dict.fromkeys(hub.COMMANDS, hub.run),
}


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
    try:
        # The daemon's log is its stdout (journald); a command's stdout is its result.
        configure_logging(json_logs=True, level=log_level(args),
                          stream=sys.stdout if args.command == "daemon" else sys.stderr)
        return asyncio.run(RUNNERS[args.command](args))
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

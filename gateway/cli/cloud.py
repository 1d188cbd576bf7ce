"""The cloud commands of `awgw`: `cloud link|unlink|status`, `claim`, `unclaim`, and
`cloud-emulator` (the emulated cloud, for the demo and for trying things without an account).

A password is read from a prompt or from stdin, never from argv (it would show in `ps`); a
refresh token is read from a file. Status, claim and unclaim go through the typed operations,
so they are answered by the running daemon when there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from gateway.cli import logs, output
from gateway.cli.args import positive_float
from gateway.cli.link import operations
from gateway.config import load_config
from gateway.errors import CloudLinkError
from gateway.ops.health import CloudStatus
from gateway.ops.models import Claim, CloudStatusQuery, Unclaim
from gateway.ops.protocol import dispatch

COMMANDS = ("cloud", "claim", "unclaim", "cloud-emulator")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    cloud = sub.add_parser("cloud", help="link the gateway to an AutoWatering cloud account")
    actions = cloud.add_subparsers(dest="cloud_command", required=True)
    link = actions.add_parser("link", parents=[common], help="link to an account")
    link.add_argument("--username", help="account e-mail (USER_PASSWORD_AUTH)")
    link.add_argument("--password-stdin", action="store_true",
                      help="read the password from stdin instead of a prompt")
    link.add_argument("--refresh-token-file", type=Path, default=None,
                      help="a refresh token handed over by the app (cloud-api.md 2.5)")
    link.add_argument("--json", action="store_true")
    unlink = actions.add_parser("unlink", parents=[common], help="forget the linked account")
    unlink.add_argument("--json", action="store_true")
    status = actions.add_parser("status", parents=[common], help="how the cloud relay stands")
    status.add_argument("--json", action="store_true")
    for name, text in (("claim", "claim a controller for the linked account"),
                       ("unclaim", "release a controller from the linked account")):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("serial", help="the controller's six-digit serial")
        if name == "unclaim":
            command.add_argument("--reason", default=None)
        command.add_argument("--json", action="store_true")
    emulator = sub.add_parser("cloud-emulator", help="serve the emulated cloud on loopback")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8080)
    emulator.add_argument("--mode", choices=["gateway_routes", "user_state"],
                          default="gateway_routes")
    emulator.add_argument("--users-file", type=Path, default=None,
                          help='JSON [{"username": ..., "password": ...}] to create')
    emulator.add_argument("--device", action="append", default=[], metavar="SERIAL",
                          help="a provisioned controller serial (repeatable)")
    emulator.add_argument("--token-ttl", type=positive_float, default=3600.0,
                          help="ID token lifetime in seconds")
    emulator.add_argument("--poll-after", type=positive_float, default=60.0,
                          help="gatewayJobs poll interval the emulator enforces")


def check_owner(state_dir: Path) -> None:
    """`cloud link` and `unlink` write the gateway's identity where the daemon reads it: as
    another user (``sudo awgw cloud link``: root) the files would be theirs, 0600, and the
    daemon, running as the service user, could not read its own token (hostile-edges L6)."""
    try:
        owner = state_dir.stat().st_uid
    except FileNotFoundError:
        return  # a first link makes the directory
    me = os.geteuid()
    if owner == me:
        return
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    raise CloudLinkError(f"{state_dir} belongs to {name}, and this runs as uid {me}: what it "
                         f"wrote would be unreadable to the daemon. Run it as {name}: "
                         f"sudo -u {name} awgw cloud ...")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command != "cloud" or args.cloud_command != "link":
        return
    if (args.username is None) == (args.refresh_token_file is None):
        parser.error("cloud link needs --username or --refresh-token-file (one of them)")
    if args.password_stdin and args.username is None:
        parser.error("--password-stdin goes with --username")


async def run(args: argparse.Namespace) -> int:
    if args.command == "cloud-emulator":
        return await _emulator(args)
    config = load_config(args.config)
    if args.command in ("claim", "unclaim"):
        request = (Claim(serial=args.serial) if args.command == "claim"
                   else Unclaim(serial=args.serial, reason=args.reason))
        result = await dispatch(operations(config), request)
        _show(args, result)
        return 0
    if args.cloud_command == "status":
        status = await dispatch(operations(config), CloudStatusQuery())
        _show(args, status)
        return 0
    logs.start()
    check_owner(config.state_dir)
    from gateway.relay.account import CloudAccount

    async with CloudAccount(config) as account:
        if args.cloud_command == "unlink":
            account.unlink()
            _show(args, {"linked": False})
            return 0
        if args.refresh_token_file is not None:
            user = await account.link_with_refresh_token(_read_token(args.refresh_token_file))
        else:
            user = await account.link_with_password(args.username, _password(args))
    _show(args, {"linked": True, "user": user, "gateway_id": account.gateway_id})
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.username}: ")
    else:
        raise CloudLinkError("no terminal to ask for the password: use --password-stdin")
    if not password:
        raise CloudLinkError("an empty password")
    return password


def _read_token(path: Path) -> str:
    from gateway.store.credentials import MAX_TOKEN_BYTES

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CloudLinkError(f"cannot read {path}: {exc.strerror}") from exc
    token = data[:MAX_TOKEN_BYTES + 1].decode(errors="replace").strip()
    if not token or len(data) > MAX_TOKEN_BYTES:
        raise CloudLinkError(f"{path} does not hold a refresh token")
    return token


def _show(args: argparse.Namespace, result: object) -> None:
    if getattr(args, "json", False):
        output.print_json(result)
    elif isinstance(result, CloudStatus):
        output.print_record(result)
    elif isinstance(result, dict):
        print(", ".join(f"{k}: {v}" for k, v in result.items()))
    else:
        output.print_json(result)


async def _emulator(args: argparse.Namespace) -> int:
    from gateway.sim.cloud import EmulatorServer, World

    world = World(mode=args.mode, id_token_ttl_s=int(args.token_ttl),
                  poll_after_s=args.poll_after)
    if args.users_file is not None:
        for user in json.loads(args.users_file.read_text()):
            world.add_user(str(user["username"]), str(user["password"]))
    for serial in args.device:
        world.add_device(serial)
    server = EmulatorServer(world, args.host, args.port)
    print(json.dumps({"url": server.url, "cognito_endpoint": server.url + "/_cognito/",
                      "client_id": world.client_id, "mode": world.mode}), flush=True)
    await asyncio.shield(server.serve_forever())
    return 0

"""`awgw doctor [--json]`: every check, each finding with its remedy; the exit code says
whether anything is wrong (0: nothing, exits.DOCTOR_PROBLEMS: a warning or an error)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gateway.cli import exits
from gateway.cli.screen import Cell, Screen, Style, Styled
from gateway.config import DEFAULT_CONFIG_PATH, GatewayConfig, load_config
from gateway.doctor import checks
from gateway.doctor.checks import Context, Finding, Status
from gateway.doctor.host import Host, SystemHost
from gateway.errors import ConfigError
from gateway.ops.health import CloudStatus

STYLE: dict[Status, Style | None] = {Status.OK: "green", Status.INFO: None,
                                     Status.WARNING: "yellow", Status.ERROR: "red"}


def config_path(given: Path | None) -> Path:
    if given is not None:
        return given
    return Path(os.environ.get("AWGW_CONFIG", str(DEFAULT_CONFIG_PATH)))


def load(path: Path) -> tuple[GatewayConfig, str | None]:
    """The config, or the defaults and why the file was refused (the doctor goes on)."""
    try:
        return load_config(path if path.exists() or path != DEFAULT_CONFIG_PATH else None), None
    except ConfigError as exc:
        return GatewayConfig(), str(exc)


async def diagnose(host: Host, config: GatewayConfig, problem: str | None, path: Path
                   ) -> list[Finding]:
    async def cloud_status() -> CloudStatus:
        from gateway.cli.link import operations

        return await operations(config).cloud_status()

    ctx = Context(host=host, config=config, config_problem=problem, config_path=path,
                  cloud_status=cloud_status)
    return [*checks.check_config(ctx), *await checks.check_bluez(ctx),
            *await checks.check_radios(ctx),
            *checks.check_permissions(ctx), *await checks.check_clock(ctx),
            *checks.check_storage(ctx), *checks.check_firmware_key(ctx),
            *await checks.check_daemon(ctx), *await checks.check_ways_out(ctx)]


def show(findings: list[Finding], screen: Screen) -> None:
    rows: list[list[Cell]] = []
    for finding in findings:
        rows.append([Styled(finding.status.value, STYLE[finding.status]), finding.check,
                     finding.summary])
        if finding.remedy and finding.wrong:
            rows.append(["", "", Styled(f"-> {finding.remedy}", "dim")])
    screen.table(["", "check", "finding"], rows)
    wrong = [f for f in findings if f.wrong]
    screen.line(f"{len(wrong)} problem(s)" if wrong else Styled("nothing wrong", "green"))


async def run_doctor(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    config, problem = load(path)
    findings = await diagnose(SystemHost(config), config, problem, path)
    if args.json:
        print(json.dumps({"ok": not any(f.wrong for f in findings),
                          "findings": [f.model_dump(mode="json") for f in findings]}))
    else:
        show(findings, Screen())
    return exits.DOCTOR_PROBLEMS if any(f.wrong for f in findings) else 0

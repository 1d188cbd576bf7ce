"""The house rules, checked on the source: imports flow gateway -> firmware_bridge and
cloud_client, never back; the rig (gateway.sim) stands beside the gateway; inside the gateway
every room imports only from floors below its own (so no circle between rooms); and only
firmware_bridge.bleak_compat touches bleak's private API."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "firmware_bridge", "cloud_client")
# Which of our packages each package may import (besides itself); the first match wins.
ALLOWED: tuple[tuple[str, frozenset[str]], ...] = (
    ("gateway.sim", frozenset({"gateway.sim", "firmware_bridge", "cloud_client"})),
    ("gateway", frozenset({"gateway", "firmware_bridge", "cloud_client"})),
    ("firmware_bridge", frozenset({"firmware_bridge"})),
    ("cloud_client", frozenset({"cloud_client"})),
)
BLEAK_COMPAT = "firmware_bridge.bleak_compat"
# The gateway's floors, ground first: a room imports only from floors below its own. The
# ground is what every room needs; then the configuration, the contract every caller speaks
# (ops/), the stores; the daemon wing and the CLI at the top. The rig (gateway.sim) stands
# beside the house: only the demo and the CLI (`awgw sim`) use it.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"gateway", "gateway.errors", "gateway.clock", "gateway.backoff",
               "gateway.logging"}),
    frozenset({"gateway.config"}),
    frozenset({"gateway.ops"}),
    frozenset({"gateway.supervise", "gateway.store", "gateway.bluez"}),
    frozenset({"gateway.link", "gateway.relay"}),
    frozenset({"gateway.ota"}),
    frozenset({"gateway.control"}),
    frozenset({"gateway.daemon", "gateway.doctor"}),
    frozenset({"gateway.demo"}),
    frozenset({"gateway.cli"}),
)
RIG = "gateway.sim"
RIG_USERS = 8  # the demo's floor and above


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every module named by an import statement, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from gateway import bluez`` names a module too
                yield node.lineno, f"{target}.{alias.name}"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The forbidden imports in ``source``, as ``module:line -> target``."""
    allowed = next(rule for prefix, rule in ALLOWED if _within(module, prefix))
    found = []
    for line, target in imported(ast.parse(source), module, is_package):
        ours = next((p for p in PACKAGES if _within(target, p)), None)
        if ours is None:
            continue  # stdlib or third party
        if not any(_within(target, a) for a in allowed):
            found.append(f"{module}:{line} -> {target}")
    return found


def room(module: str) -> str:
    """``gateway.link.manager`` -> ``gateway.link``; a root module is its own room; a dunder of
    the package (``gateway.__version__``) is the package's."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1].startswith("__"):
        return parts[0]
    return ".".join(parts[:2])


def floor(module: str) -> int | None:
    """None outside the gateway's floors (the rig, the other packages)."""
    return next((i for i, rooms in enumerate(FLOORS) if room(module) in rooms), None)


def upward(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports of ``module`` that reach its own floor's other rooms or a floor above."""
    own = floor(module)
    if own is None:
        return []
    found = []
    for line, target in imported(ast.parse(source), module, is_package):
        if not _within(target, "gateway") or room(target) == room(module):
            continue
        if room(target) == RIG and own >= RIG_USERS:
            continue
        theirs = floor(target)
        if theirs is None or theirs >= own:
            found.append(f"{module}:{line} -> {target}")
    return found


def private_bleak_access(source: str) -> list[int]:
    """Lines that reach into another object's private attributes in a module that uses bleak.
    ``self._x`` and ``cls._x`` are a class's own business; dunders are public."""
    tree = ast.parse(source)
    uses_bleak = any(name == "bleak" or name.startswith("bleak.")
                     for _line, name in imported(tree, "", False))
    if not uses_bleak:
        return []
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            lines.append(node.lineno)
    for node in ast.walk(tree):  # getattr(x, "_private") is the same reach, spelled as text
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "getattr" and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_")):
            lines.append(node.lineno)
    return sorted(lines)


def sources() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield module_name(path), path


def test_imports_flow_one_way() -> None:
    problems = []
    for module, path in sources():
        problems += violations(path.read_text(), module, path.name == "__init__.py")
    assert problems == [], "\n".join(problems)


def test_every_gateway_room_stands_on_a_floor() -> None:
    rooms = {room(m) for m, _ in sources() if _within(m, "gateway")} - {"gateway.sim"}
    assert {r for r in rooms if floor(r) is None} == set()


def test_no_import_runs_back_up_a_floor() -> None:
    problems = []
    for module, path in sources():
        problems += upward(path.read_text(), module, path.name == "__init__.py")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(("module", "source"), [
    ("gateway.ops.models", "from gateway.daemon.operations import DaemonOperations\n"),
    ("gateway.store.registry", "from gateway.link import manager\n"),
    ("gateway.link.manager", "from gateway.relay.feed import StateFeed\n"),  # same floor
    ("gateway.doctor.checks", "def f():\n    from gateway.cli import exits\n"),
    ("gateway.config", "from gateway.ops.models import Ping\n"),
    ("gateway.daemon.main", "from gateway.sim.rig import Rig\n"),
])
def test_an_import_up_a_floor_is_caught(module: str, source: str) -> None:
    assert upward(source, module), source


@pytest.mark.parametrize(("module", "source"), [
    ("gateway.cli.main", "from gateway.daemon.main import run_daemon\n"),
    ("gateway.ops.models", "from gateway.config import LinkPolicy\nfrom gateway.ops import x\n"),
    ("gateway.daemon.hub", "from gateway.link.manager import ConnectionManager\n"),
])
def test_an_import_down_the_floors_passes(module: str, source: str) -> None:
    assert upward(source, module) == []


def test_only_bleak_compat_touches_bleak_private_api() -> None:
    problems = [f"{module}:{line}" for module, path in sources() if module != BLEAK_COMPAT
                for line in private_bleak_access(path.read_text())]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(("module", "source"), [
    ("firmware_bridge.ota.update", "from gateway.config import GatewayConfig\n"),
    ("firmware_bridge.smp.ble", "import gateway.daemon\n"),
    ("cloud_client.client", "from gateway import errors\n"),
    ("gateway.sim.rig", "from gateway.errors import GatewayError\n"),
    ("gateway.sim.controller.device", "from ...link import supervisor\n"),
    ("gateway.sim.rig", "def f():\n    from gateway.store.registry import Registry\n"),
])
def test_a_forbidden_import_is_caught(module: str, source: str) -> None:
    assert violations(source, module), source


@pytest.mark.parametrize(("module", "source"), [
    ("gateway.daemon", "from firmware_bridge.smp import channel\nfrom cloud_client import x\n"),
    ("gateway.sim.rig", "from gateway.sim.errors import SimError\nimport firmware_bridge.gatt\n"),
    ("gateway.sim.controller.device", "from ..errors import SimError\n"),
    ("firmware_bridge.ota.update", "from firmware_bridge.smp import commands\nimport asyncio\n"),
])
def test_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_a_private_bleak_reach_is_caught() -> None:
    assert private_bleak_access("import bleak\nclient._backend._acquire_mtu()\n") == [2, 2]
    assert private_bleak_access("from bleak import BleakClient\ngetattr(c, '_backend')\n") == [2]
    assert private_bleak_access("from bleak import BleakClient\nself._client.connect()\n") == []

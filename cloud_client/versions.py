"""Firmware version order as the backend and the app compare (cloud-api.md 1, ota.md 6.7).

A leading ``v`` is dropped, every run of digits is a part, missing parts are 0: ``1.0`` equals
``1.0.0`` and ``1.2.3-rc1`` orders as ``1.2.3.1``, above ``1.2.3``.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")
# What a release version may be before the gateway uses it (in a file's name, a log, a topic):
# ASCII letters, digits and . + _ -, at most 64 characters. "4.0.0/rc1", a NUL or a digit of
# another script is refused, not interpreted.
_RELEASE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
# A part longer than this is cut: int() refuses strings of more than 4300 digits, and no
# version needs more than 18 (a u64).
_PART_DIGITS = 18


def valid_version(version: str) -> bool:
    return _RELEASE.fullmatch(version) is not None


def version_key(version: str) -> tuple[int, ...]:
    parts = [int(p[:_PART_DIGITS])
             for p in _DIGITS.findall(version.strip().removeprefix("v"))]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def newer(candidate: str, current: str) -> bool:
    return version_key(candidate) > version_key(current)


def normalise(version: str) -> str:
    """The registry's form of a version (ota.md 6.6: trimmed, leading v removed)."""
    return version.strip().removeprefix("v")

"""Firmware version order as the backend and the app compare (cloud-api.md 1, ota.md 6.7).

A leading ``v`` is dropped, every run of digits is a part, missing parts are 0: ``1.0`` equals
``1.0.0`` and ``1.2.3-rc1`` orders as ``1.2.3.1``, above ``1.2.3``.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")


def version_key(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in _DIGITS.findall(version.strip().removeprefix("v"))]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def newer(candidate: str, current: str) -> bool:
    return version_key(candidate) > version_key(current)


def normalise(version: str) -> str:
    """The registry's form of a version (ota.md 6.6: trimmed, leading v removed)."""
    return version.strip().removeprefix("v")

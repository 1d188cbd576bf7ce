"""MQTT commands, parsed without I/O: what a command topic and payload ask for, as the typed
request every caller speaks, or a ValueError/TypeError/ValidationError saying why not; and the
reply each command gets on ``<node>/result``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.ops.models import REQUEST, Refresh, Request, ValveClose, ValveOpen

# A command is a small JSON object; anything larger is refused unread.
MAX_COMMAND_BYTES = 4096
# A command's id (echoed in its reply) is at most this long.
MAX_ID = 64
# A command not started within this of its arrival (or within the MQTT 5 message expiry its
# publisher set, when shorter) is answered expired, never run late: a valve asked open behind
# a queue of others must not open minutes later. Longer than a share-policy controller's
# slot + connect under load; far shorter than a person's patience with a switch. Home
# Assistant's command entities are asked for the same expiry (discovery.py).
COMMAND_TTL_S = 30


class CommandStatus(StrEnum):
    DONE = "done"
    REFUSED = "refused"
    BUSY = "busy"
    INVALID = "invalid"
    NOT_ALLOWED = "not_allowed"
    UNKNOWN_CONTROLLER = "unknown_controller"
    # Its time ran out before it could run (its MQTT 5 message expiry, else COMMAND_TTL_S):
    # nothing was done, so no valve opens long after it was asked.
    EXPIRED = "expired"
    # The gateway failed handling it (a bug, logged with its traceback): nothing was done.
    ERROR = "error"


class CommandReply(BaseModel):
    """What ``<node>/result`` carries for every command."""

    id: str | None = None
    op: str | None = None
    ok: bool
    status: CommandStatus
    detail: str
    result: Any = None


def parse_command(kind: str, channel: int | None, raw: bytes, *, address: str, node: str,
                  minutes: Mapping[int, int], default_minutes: int
                  ) -> tuple[str | None, Request]:
    """(the command's id, its request) for a command topic's kind and channel and its payload:
    valve OPEN/CLOSE (an OPEN runs the zone's set minutes), the resync button's PRESS, or a
    JSON command object naming its op (the topic names the controller)."""
    text = raw.decode("utf-8").strip()
    if kind == "valve":
        if channel is None:
            raise ValueError("a valve command names its channel in the topic")
        if text == "OPEN":
            return None, ValveOpen(address=address, channel=channel,
                                   minutes=minutes.get(channel, default_minutes))
        if text == "CLOSE":
            return None, ValveClose(address=address, channel=channel)
        raise ValueError(f"valve payload must be OPEN or CLOSE, got {text[:20]!r}")
    if kind == "resync":
        if text != "PRESS":
            raise ValueError(f"button payload must be PRESS, got {text[:20]!r}")
        return None, Refresh(address=address)
    body = json.loads(text)
    if not isinstance(body, dict):
        raise TypeError("a command is a JSON object with an op")
    if "address" in body:
        raise ValueError(f"the topic names the controller ({node}); send no address")
    command_id = body.pop("id", None)
    if command_id is not None and not (isinstance(command_id, str) and len(command_id) <= MAX_ID):
        raise ValueError(f"id must be a string of at most {MAX_ID} characters")
    return command_id, REQUEST.validate_python({**body, "address": address})


def parse_minutes(raw: bytes) -> int:
    """A zone's run time from Home Assistant's number entity: 1..255 minutes (device-ble.md
    Δ21); ValueError otherwise."""
    try:
        minutes = int(float(raw.decode("utf-8").strip()))
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise ValueError("minutes must be a number") from None
    if not 1 <= minutes <= 255:
        raise ValueError("minutes must be 1..255 (device-ble.md Δ21)")
    return minutes


def brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in exc.errors()[:3])
    return str(exc)

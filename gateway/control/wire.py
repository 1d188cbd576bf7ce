"""What both halves of the control socket agree on: one JSON object per line, the limits and
timeouts of a conversation, and how an error and a validation problem are written.

A request is one of ``ops.models.Request`` (discriminated on ``op``). The answer is
``{"ok": true, "result": ...}`` with the op's result model, or ``{"ok": false, "error":
{"type": ..., "message": ...}}`` naming a GatewayError class, which the client raises again. A
long operation (a firmware update) may send ``{"progress": {...}}`` lines before its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from firmware_bridge.ota.outcome import Progress

SOCKET_MODE = 0o660
# Longest request line we accept: an update's image in base64 (4/3 of MAX_IMAGE_BYTES) and a
# little more; every other request is under 200 bytes. MAX_CLIENTS lines at most in memory.
MAX_REQUEST = 1536 * 1024
# A client that connects and sends nothing is dropped after this.
REQUEST_READ_TIMEOUT_S = 5.0
# The slowest operation is a command to a share-policy controller: slot + connect + confirm
# (supervisor.COMMAND_DEADLINE_S = 60 s) or a pairing window (up to 600 s, configured). The
# client waits this long for each line: an update's progress lines restart the wait.
CLIENT_TIMEOUT_S = 660.0
# A cancelled request winds down (an update's engine closes its transport) within this; less
# than the unit's TimeoutStopSec= so the daemon exits by itself.
CLOSE_CLIENTS_S = 10.0
# Progress lines at most this often (a person's bar, not a trace); phase changes always go.
PROGRESS_EVERY_S = 0.2

ProgressSink = Callable[[Progress], None]


def error_document(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "message": message}}


def problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                     for e in exc.errors())

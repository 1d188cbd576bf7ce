"""Which process speaks for a gateway id on the broker (pure but for reading this host's names).

A copied state directory (a restored backup on a second Pi, an SD card cloned to set up a
second garden) carries the gateway id with it, and so the MQTT client id ``awgw-<id>``: two
hubs that share it take the broker session from each other at every reconnect, and Home
Assistant sees the gateway flap without a word why (hostile-edges M4). Brokers do not say why
they ended a session (mosquitto 2.0 answers a takeover with "unspecified error").

So every relay process announces itself, retained, on ``gateway/<id>/instance`` at each
connect: a random token drawn at start, the host name and a digest of the machine id. Two
processes sharing a client id are never connected at once, so neither hears the other live;
but each, subscribed before it announces, is handed the retained announcement of whoever
connected last. At the first connect that may be this hub's own earlier run; at any later
connect it was this process, unless another process with the same id connected in between.
That is reported (log, ``awgw status``, ``awgw doctor``), never acted on: anyone on the broker can
publish there, and a forged announcement must cost no more than a false line in a report.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# An announcement is a few dozen bytes; anything much larger is not one.
MAX_ANNOUNCEMENT_BYTES = 512
MACHINE_ID = Path("/etc/machine-id")


class Instance(BaseModel):
    """One relay process, as it announces itself."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    token: str = Field(pattern=r"\A[0-9a-f]{32}\z")
    host: str = Field(pattern=r"\A[\x21-\x7e]{1,64}\z")  # printable ASCII: it goes in logs
    machine: str = Field(pattern=r"\A[0-9a-f]{16}\z")
    pid: int = Field(ge=1, le=2**31)

    def describe(self) -> str:
        return f"host {self.host} (machine {self.machine}, pid {self.pid})"


def this_process() -> Instance:
    host = socket.gethostname()
    host = "".join(c for c in host if "\x21" <= c <= "\x7e")[:64] or "unknown"
    return Instance(token=secrets.token_hex(16), host=host, machine=machine_digest(),
                    pid=os.getpid())


def machine_digest(path: Path = MACHINE_ID) -> str:
    """A digest, not the id itself: /etc/machine-id is meant to stay on the machine."""
    try:
        raw = path.read_bytes()[:256].strip()
    except OSError:
        raw = b""
    return hashlib.sha256(b"awgw-instance:" + (raw or socket.gethostname().encode())
                          ).hexdigest()[:16]


def parse(payload: bytes) -> Instance | None:
    """The announcement in ``payload``, or None for anything that is not one."""
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        return None
    try:
        return Instance.model_validate_json(payload)
    except ValidationError:
        return None


class IdentityWatch:
    """What this process has heard of others announcing its gateway id."""

    def __init__(self, me: Instance) -> None:
        self.me = me
        self.other: Instance | None = None
        # What the broker held at the first connect, when it was not this process: this
        # hub's run before (or a live other, which the next connect tells).
        self.before: Instance | None = None

    def payload(self) -> str:
        return self.me.model_dump_json()

    def heard(self, payload: bytes, *, first_connect: bool) -> Instance | None:
        """The other live process behind ``payload`` when it is news; None when it is ours,
        not an announcement, the one already known, or what the first connect found held."""
        found = parse(payload)
        if found is None or found.token == self.me.token or found == self.other:
            return None
        if first_connect:
            self.before = found
            return None
        self.other = found
        return found

    def clash(self) -> str | None:
        if self.other is None:
            return None
        return (f"another gateway process uses this gateway id on the broker: "
                f"{self.other.describe()}")


CLASH_REMEDY = ("a state directory copied from another hub: on the copy, stop awgw, remove "
                "gateway_id and refresh_token from its cloud directory, start it again (a new "
                "id is made) and link it with `awgw cloud link`")

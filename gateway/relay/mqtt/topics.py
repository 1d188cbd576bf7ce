"""The MQTT topic tree (pure). Under ``<prefix>`` (default ``autowatering``):

    gateway/<gateway_id>/availability    online | offline   retained; offline is the last will
    gateway/<gateway_id>/radio           online | offline   retained: adapter up, scanner alive
    gateway/<gateway_id>/state           JSON               retained: outbox depth, versions
    gateway/<gateway_id>/instance        JSON               retained: the process speaking for
                                                            the id (host, pid, a token)
    <node>/availability                  online | offline   retained: reachable and fresh
    <node>/state                         JSON               retained: the typed ControllerState
    <node>/event/<type>                  JSON               QoS 1, never retained
    <node>/command                       JSON               a typed operation, for scripts
    <node>/result                        JSON               the answer to every command
    <node>/valve/<ch>/set                OPEN | CLOSE       Home Assistant's valve
    <node>/minutes/<ch>/set, .../minutes/<ch>   1..255      how long an OPEN lasts (retained)
    <node>/resync/press                  PRESS              Home Assistant's button
    <node>/update                        JSON               retained: installed/latest version,
                                                            in progress, percentage
    <node>/update/install                install            Home Assistant's update entity

``<node>`` is the controller's six-digit serial, or its address without colons when it has no
serial: stable for the life of the pairing, and a valid Home Assistant object id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# cloud-api.md 1: a cloud serial is six digits; the controller's DIS serial is what we have.
SERIAL = re.compile(r"\A[0-9]{6}\Z")  # \Z: "$" would let a trailing newline in
ONLINE = "online"
OFFLINE = "offline"


def node_id(address: str, serial: str | None) -> str:
    if serial is not None and SERIAL.match(serial):
        return serial
    return address.replace(":", "").lower()


@dataclass(frozen=True)
class Topics:
    prefix: str
    gateway_id: str

    @property
    def gateway(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}"

    @property
    def gateway_availability(self) -> str:
        return f"{self.gateway}/availability"

    @property
    def radio(self) -> str:
        return f"{self.gateway}/radio"

    @property
    def gateway_state(self) -> str:
        return f"{self.gateway}/state"

    @property
    def gateway_instance(self) -> str:
        return f"{self.gateway}/instance"

    def node(self, node: str) -> str:
        return f"{self.prefix}/{node}"

    def availability(self, node: str) -> str:
        return f"{self.node(node)}/availability"

    def state(self, node: str) -> str:
        return f"{self.node(node)}/state"

    def event(self, node: str, kind: str) -> str:
        return f"{self.node(node)}/event/{kind}"

    def command(self, node: str) -> str:
        return f"{self.node(node)}/command"

    def result(self, node: str) -> str:
        return f"{self.node(node)}/result"

    def valve_set(self, node: str, channel: int) -> str:
        return f"{self.node(node)}/valve/{channel}/set"

    def minutes(self, node: str, channel: int) -> str:
        return f"{self.node(node)}/minutes/{channel}"

    def minutes_set(self, node: str, channel: int) -> str:
        return f"{self.minutes(node, channel)}/set"

    def resync(self, node: str) -> str:
        return f"{self.node(node)}/resync/press"

    def update(self, node: str) -> str:
        return f"{self.node(node)}/update"

    def update_install(self, node: str) -> str:
        return f"{self.update(node)}/install"

    @property
    def subscriptions(self) -> list[str]:
        """What the relay listens to (commands of every controller)."""
        p = self.prefix
        return [f"{p}/+/command", f"{p}/+/valve/+/set", f"{p}/+/minutes/+/set",
                f"{p}/+/resync/press", f"{p}/+/update/install"]

    def parse_command_topic(self, topic: str) -> tuple[str, str, int | None] | None:
        """(node, kind, channel) of a command topic: kind in command | valve | minutes |
        resync | update; None for anything else."""
        parts = topic.split("/")
        base = self.prefix.split("/")
        if parts[:len(base)] != base:
            return None
        rest = parts[len(base):]
        if len(rest) == 2 and rest[1] == "command":
            return rest[0], "command", None
        if len(rest) == 3 and rest[1:] == ["resync", "press"]:
            return rest[0], "resync", None
        if len(rest) == 3 and rest[1:] == ["update", "install"]:
            return rest[0], "update", None
        if len(rest) == 4 and rest[1] in ("valve", "minutes") and rest[3] == "set" \
                and rest[2].isascii() and rest[2].isdigit() and len(rest[2]) <= 3:
            # isascii: "²" is a digit to isdigit() but not to int() (hostile-edges.md H1).
            return rest[0], rest[1], int(rest[2])
        return None

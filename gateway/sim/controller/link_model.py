"""A model of the BLE link and its timing, so throughput and timeouts behave like an nRF52840.

BlueZoo moves bytes as fast as D-Bus can (thousands of operations per second); a real link
moves them in connection events. The model:

* connection events happen every ``interval_s`` (Linux centrals default to 30-50 ms);
* each event is a series of packet exchanges (central sends, peripheral answers); it carries
  at most ``packets_per_event`` link-layer packets in each direction (what the two
  controllers' event length allows), so replies ride on the return half of the exchanges;
* with data length extension a packet carries up to 251 bytes of L2CAP payload, so one ATT
  PDU of ``n`` value bytes needs ``ceil((n + 3 + 4) / 251)`` packets (3 bytes ATT opcode and
  handle, 4 bytes L2CAP header);
* an operation waits for the first event with room for its packets.

Hence the ceiling for one direction of full-size PDUs (the computed figure the benchmark
prints next to the measured one)::

    ceiling_bytes_per_s = packets_per_event * (att_mtu - 3) / interval_s

Defaults (LE 1M, DLE, 30 ms, 4 packets per event, MTU 247): 4 * 244 / 0.030 = 32.5 kB/s,
inside the 24-36 kB/s measured for nRF52840 uploads with the erase in the path.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Direction = Literal["up", "down"]
LL_MAX_PAYLOAD = 251
# A 251-byte packet takes 2.1 ms on LE 1M; with the inter-frame space and the peer's reply a
# packet exchange is ~2.5 ms.
PACKET_PAIR_S = 0.0025
ATT_HEADER = 3
L2CAP_HEADER = 4


@dataclass(frozen=True)
class LinkParams:
    interval_s: float = 0.030
    packets_per_event: int = 4
    att_mtu: int = 247

    @property
    def event_open_s(self) -> float:
        """How long an event keeps exchanging: ~2.5 ms per 251-byte packet pair on LE 1M."""
        return self.packets_per_event * PACKET_PAIR_S

    def packets_for(self, att_value_len: int) -> int:
        return max(1, math.ceil((att_value_len + ATT_HEADER + L2CAP_HEADER) / LL_MAX_PAYLOAD))

    @property
    def ceiling_bytes_per_s(self) -> float:
        return self.packets_per_event * (self.att_mtu - ATT_HEADER) / self.interval_s


class LinkScheduler:
    """Assigns each PDU to a connection event and sleeps until that event."""

    def __init__(self, params: LinkParams, clock: Callable[[], float] = time.monotonic) -> None:
        self.params = params
        self._clock = clock
        self._anchor = clock()
        self._used: dict[Direction, dict[int, int]] = {"up": {}, "down": {}}

    def reset(self) -> None:
        """A new connection: a new anchor point."""
        self._anchor = self._clock()
        for used in self._used.values():
            used.clear()

    def reserve(self, att_value_len: int, direction: Direction) -> float:
        """Book the packets for one PDU; return the delay until its connection event."""
        p = self.params
        used = self._used[direction]
        now = self._clock()
        elapsed = max(0.0, now - self._anchor)
        event = math.floor(elapsed / p.interval_s)
        # A PDU queued while an event is still exchanging packets joins it if there is room
        # (the controller's buffer feeds the event until it closes).
        if elapsed - event * p.interval_s > p.event_open_s:
            event += 1
        needed = min(p.packets_for(att_value_len), p.packets_per_event)
        while used.get(event, 0) + needed > p.packets_per_event:
            event += 1
        used[event] = used.get(event, 0) + needed
        if len(used) > 256:
            for old in [k for k in used if k < event - 64]:
                del used[old]
        return max(0.0, self._anchor + event * p.interval_s - now)

    async def transmit(self, att_value_len: int, direction: Direction) -> None:
        """``up``: central to controller (writes); ``down``: notifications, read replies."""
        delay = self.reserve(att_value_len, direction)
        if delay > 0:
            await asyncio.sleep(delay)

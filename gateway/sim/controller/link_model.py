"""A model of the BLE link and its timing, so throughput and timeouts behave like an nRF52840.

BlueZoo moves bytes as fast as D-Bus can (thousands of operations per second); a real link
moves them in connection events. The model:

* connection events happen every ``interval_s`` (Linux centrals default to 30-50 ms);
* each event carries at most ``packets_per_event`` link-layer packets, both directions
  together (what the two controllers' event length allows);
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

LL_MAX_PAYLOAD = 251
ATT_HEADER = 3
L2CAP_HEADER = 4


@dataclass(frozen=True)
class LinkParams:
    interval_s: float = 0.030
    packets_per_event: int = 4
    att_mtu: int = 247

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
        self._used: dict[int, int] = {}

    def reset(self) -> None:
        """A new connection: a new anchor point."""
        self._anchor = self._clock()
        self._used.clear()

    def reserve(self, att_value_len: int) -> float:
        """Book the packets for one PDU; return the delay until its connection event."""
        p = self.params
        now = self._clock()
        event = max(0, math.ceil((now - self._anchor) / p.interval_s))
        needed = min(p.packets_for(att_value_len), p.packets_per_event)
        while self._used.get(event, 0) + needed > p.packets_per_event:
            event += 1
        self._used[event] = self._used.get(event, 0) + needed
        if len(self._used) > 256:
            for old in [k for k in self._used if k < event - 64]:
                del self._used[old]
        return max(0.0, self._anchor + event * p.interval_s - now)

    async def transmit(self, att_value_len: int) -> None:
        delay = self.reserve(att_value_len)
        if delay > 0:
            await asyncio.sleep(delay)

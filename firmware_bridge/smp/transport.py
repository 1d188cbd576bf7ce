"""What the SMP channel needs of a byte pipe to the device (ota.md section 3.5).

A transport sends and receives whole SMP frames and says how large a frame it can carry to a
device whose SMP netbuf is ``buf_size`` bytes: each framing spends that buffer differently
(serial adds a length and a CRC, BLE is best in whole ATT writes, UDP carries the frame as it
is). The frame budget is part of the protocol, so nothing has to probe a transport for it.
"""

from __future__ import annotations

from typing import Protocol


class FrameTransport(Protocol):
    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    async def disconnect(self) -> None: ...

    def frame_budget(self, buf_size: int) -> int:
        """The largest whole SMP frame, header included, that reaches a device with this
        ``buf_size`` through this transport."""
        ...

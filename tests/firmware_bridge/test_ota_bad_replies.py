"""Device replies that do not fit the protocol end the update as FAILED(protocol), with
nothing marked for test; an in-memory transport plays the device."""

from __future__ import annotations

import asyncio
from typing import Any

from firmware_bridge.ota.outcome import FailureReason, OtaResult
from firmware_bridge.ota.update import FirmwareUpdate, OtaSettings
from firmware_bridge.smp.wire import (
    HEADER_SIZE,
    SmpHeader,
    decode_payload,
    encode_cbor,
    encode_frame,
    parse_header,
)
from gateway.sim.images import firmware_body, make_image

IMAGE = make_image((1, 0, 0, 0), firmware_body("bad-replies", 4000))


class ScriptedDevice:
    """Answers params and image state with whatever ``reply_for`` returns."""

    def __init__(self, reply_for: Any) -> None:
        self.reply_for = reply_for
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.requests: list[tuple[int, int, dict[str, Any]]] = []

    async def send(self, data: bytes) -> None:
        header = parse_header(data)
        payload = decode_payload(data[HEADER_SIZE:])
        self.requests.append((header.group, header.cmd, payload))
        body = self.reply_for(header, payload)
        if isinstance(body, bytes):
            self.replies.put_nowait(body)
            return
        raw = encode_cbor(body)
        self.replies.put_nowait(encode_frame(SmpHeader(header.op + 1, 1, 0, len(raw),
                                                       header.group, header.seq, header.cmd),
                                             raw))

    async def receive(self) -> bytes:
        return await self.replies.get()

    async def disconnect(self) -> None:
        return None

    def frame_budget(self, buf_size: int) -> int:
        return buf_size


async def run(reply_for: Any) -> tuple[Any, ScriptedDevice]:
    device = ScriptedDevice(reply_for)

    async def connect() -> ScriptedDevice:
        return device

    outcome = await FirmwareUpdate(connect, IMAGE, device="scripted",
                                   settings=OtaSettings(timeout_s=0.5)).run()
    return outcome, device


def params_then(state_reply: Any) -> Any:
    def reply(header: SmpHeader, _payload: dict[str, Any]) -> Any:
        if (header.group, header.cmd) == (0, 6):
            return {"buf_size": 384, "buf_count": 4}
        return state_reply
    return reply


async def test_malformed_image_state_is_a_protocol_failure() -> None:
    for bad in ({"images": "nope"}, {"images": [{"slot": "zero", "hash": b"x"}]},
                {"rc": "eight"}, {}):
        outcome, device = await run(params_then(bad))
        assert outcome.result is OtaResult.FAILED, bad
        assert outcome.reason is FailureReason.PROTOCOL, (bad, outcome)
        assert not any(p.get("confirm") is False for _g, _c, p in device.requests)


async def test_undecodable_reply_is_a_protocol_failure() -> None:
    garbage = encode_frame(SmpHeader(1, 1, 0, 3, 0, 0, 6), b"\xff\xfe\xfd")
    outcome, _ = await run(lambda _h, _p: garbage)
    assert outcome.result is OtaResult.FAILED
    assert outcome.reason in (FailureReason.PROTOCOL, FailureReason.TIMEOUT)


async def test_device_error_maps_to_device_rejected_with_rc() -> None:
    outcome, _ = await run(params_then({"err": {"group": 1, "rc": 2}}))
    assert outcome.reason is FailureReason.DEVICE_REJECTED and outcome.rc == 2

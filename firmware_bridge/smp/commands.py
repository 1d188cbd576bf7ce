"""The mcumgr commands an update needs (ota.md 3.4), typed on the way in and out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from firmware_bridge.smp.channel import DeviceRejected, SmpChannel, SmpProtocolError
from firmware_bridge.smp.wire import Group, Op

# Zephyr's "not supported" (MGMT_ERR_ENOTSUP): firmware without MCUmgr params.
RC_NOT_SUPPORTED = 8
IMAGE_STATE, IMAGE_UPLOAD, IMAGE_ERASE = 0, 1, 5
OS_ECHO, OS_RESET, OS_PARAMS = 0, 5, 6
# ota.md 4.10: echo/list/test/confirm 10 s; reset 5 s (its reply is optional).
CONTROL_TIMEOUT_S = 10.0
RESET_TIMEOUT_S = 5.0
# Erasing a whole ~0.7 MB slot on external NOR takes seconds (ota.md 4.8: allow 60 s).
ERASE_TIMEOUT_S = 60.0
DEFAULT_BUF_SIZE = 384  # ota.md 4.7: the fallback when params are not supported
DEFAULT_BUF_COUNT = 1


@dataclass(frozen=True)
class ImageSlot:
    slot: int
    version: str
    hash: bytes
    bootable: bool
    pending: bool
    confirmed: bool
    active: bool
    permanent: bool


@dataclass(frozen=True)
class Params:
    buf_size: int
    buf_count: int
    reported: bool


def _field(entry: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = entry.get(key, default)
    if not isinstance(value, kind):
        raise SmpProtocolError(f"image state field {key!r} is {type(value).__name__}")
    return value


def parse_images(reply: dict[str, Any]) -> tuple[ImageSlot, ...]:
    images = reply.get("images")
    if not isinstance(images, list):
        raise SmpProtocolError("image state reply has no 'images' list")
    slots = []
    for entry in images:
        if not isinstance(entry, dict):
            raise SmpProtocolError("image state entry is not a map")
        slots.append(ImageSlot(
            _field(entry, "slot", int), _field(entry, "version", str, ""),
            _field(entry, "hash", bytes), _field(entry, "bootable", bool, False),
            _field(entry, "pending", bool, False), _field(entry, "confirmed", bool, False),
            _field(entry, "active", bool, False), _field(entry, "permanent", bool, False)))
    return tuple(slots)


async def read_params(channel: SmpChannel) -> Params:
    try:
        reply = await channel.request(Op.READ, Group.OS, OS_PARAMS, {}, CONTROL_TIMEOUT_S,
                                      "mcumgr params")
    except DeviceRejected as exc:
        if exc.rc != RC_NOT_SUPPORTED:
            raise
        return Params(DEFAULT_BUF_SIZE, DEFAULT_BUF_COUNT, reported=False)
    size, count = reply.get("buf_size"), reply.get("buf_count")
    if not isinstance(size, int) or not isinstance(count, int) or size < 64 or count < 1:
        raise SmpProtocolError(f"mcumgr params {reply!r} are not usable")
    return Params(size, count, reported=True)


async def image_state(channel: SmpChannel) -> tuple[ImageSlot, ...]:
    return parse_images(await channel.request(Op.READ, Group.IMAGE, IMAGE_STATE, {},
                                              CONTROL_TIMEOUT_S, "image state"))


async def mark_for_test(channel: SmpChannel, image_hash: bytes) -> tuple[ImageSlot, ...]:
    return parse_images(await channel.request(
        Op.WRITE, Group.IMAGE, IMAGE_STATE, {"hash": image_hash, "confirm": False},
        CONTROL_TIMEOUT_S, "mark for test"))


async def confirm(channel: SmpChannel, image_hash: bytes | None = None) -> None:
    payload: dict[str, Any] = {"confirm": True}
    if image_hash is not None:
        payload["hash"] = image_hash
    await channel.request(Op.WRITE, Group.IMAGE, IMAGE_STATE, payload, CONTROL_TIMEOUT_S,
                          "confirm")


async def erase_slot(channel: SmpChannel) -> None:
    await channel.request(Op.WRITE, Group.IMAGE, IMAGE_ERASE, {}, ERASE_TIMEOUT_S, "erase")


async def reset(channel: SmpChannel) -> None:
    await channel.request(Op.WRITE, Group.OS, OS_RESET, {}, RESET_TIMEOUT_S, "reset")

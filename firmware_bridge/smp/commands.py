"""The mcumgr commands an update needs (ota.md 3.4), typed on the way in and out: replies are
bound to the pinned ``smp`` package's models before anything reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from smp.image_management import ImageStatesReadResponse, ImageUploadWriteResponse
from smp.os_management import MCUMgrParametersReadResponse

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
M = TypeVar("M", bound=BaseModel)


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


def _bound(model: type[M], reply: dict[str, Any], what: str) -> M:
    """A reply bound to the pinned ``smp`` package's model for it: a reply that does not fit
    is the device speaking another protocol, never a value to guess from."""
    try:
        return model.model_validate(reply, strict=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:3])
        raise SmpProtocolError(f"{what} reply does not fit: {problems}") from exc


def parse_images(reply: dict[str, Any]) -> tuple[ImageSlot, ...]:
    bound = _bound(ImageStatesReadResponse, reply, "image state")
    slots = []
    for image in bound.images:
        if image.hash is None:
            raise SmpProtocolError(f"image state of slot {image.slot} has no hash")
        slots.append(ImageSlot(image.slot, image.version, bytes(image.hash),
                               bool(image.bootable), bool(image.pending),
                               bool(image.confirmed), bool(image.active),
                               bool(image.permanent)))
    return tuple(slots)


async def read_params(channel: SmpChannel) -> Params:
    try:
        reply = await channel.request(Op.READ, Group.OS, OS_PARAMS, {}, CONTROL_TIMEOUT_S,
                                      "mcumgr params")
    except DeviceRejected as exc:
        if exc.rc != RC_NOT_SUPPORTED:
            raise
        return Params(DEFAULT_BUF_SIZE, DEFAULT_BUF_COUNT, reported=False)
    params = _bound(MCUMgrParametersReadResponse, reply, "mcumgr params")
    if params.buf_size < 64 or params.buf_count < 1:
        raise SmpProtocolError(f"mcumgr params {params.buf_size} x {params.buf_count} are not "
                               "usable")
    return Params(params.buf_size, params.buf_count, reported=True)


def upload_offset(reply: dict[str, Any], total: int) -> int:
    """Where the device says the upload stands (ota.md 4.5): 0..total."""
    off = _bound(ImageUploadWriteResponse, reply, "upload").off
    if off is None or not 0 <= off <= total:
        raise SmpProtocolError(f"upload reply offset {off!r} is outside 0..{total}")
    return off


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

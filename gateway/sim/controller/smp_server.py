"""A Zephyr MCUmgr SMP server (os + img groups) over ``McubootFlash``; pure, transport-free.

Replies, error codes and their order follow the real Zephyr 4.4.0 server, captured under QEMU
(notes/zephyr-qemu-peer.md). ``handle`` takes one complete request frame and returns the reply
frame plus the simulated flash time the device would spend before answering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.errors import DecodeError
from firmware_bridge.mcuboot import IMAGE_MAGIC
from firmware_bridge.smp.wire import (
    HEADER_SIZE,
    Group,
    Op,
    SmpHeader,
    decode_payload,
    encode_cbor,
    encode_frame,
    parse_header,
)
from gateway.sim.controller.mcuboot_flash import McubootFlash, UploadContext

# MGMT_ERR (generic rc)
EINVAL = 3
ENOTSUP = 8
# IMG_MGMT_ERR (group 1 err.rc)
IMG_FLASH_ERASE_FAILED = 13
IMG_HASH_NOT_FOUND = 8
IMG_NO_FREE_SLOT = 9
IMG_INVALID_OFFSET = 20
IMG_INVALID_LENGTH = 21
IMG_INVALID_IMAGE_HEADER = 22
IMG_INVALID_IMAGE_HEADER_MAGIC = 23
IMG_INVALID_HASH = 24
IMG_ALREADY_PENDING = 28
IMG_TOO_LARGE = 30
IMG_DATA_OVERRUN = 31
IMG_TEST_TO_ACTIVE_DENIED = 33

# What an SMP v1 client sees for each img_mgmt error (Zephyr img_mgmt.c translation).
_V1_TRANSLATION = {3: 5, 4: 5, 9: 6, 27: 6, 28: 6, 15: 2, 14: 3, 19: 3, 20: 3, 21: 3, 22: 3,
                   24: 3, 25: 3}
# OS_MGMT_ERR (group 0 err.rc), and what an SMP v1 client sees for it (os_mgmt.c).
OS_INVALID_FORMAT = 2
_V1_OS_TRANSLATION = {OS_INVALID_FORMAT: EINVAL}
# Zephyr answers an OS reset, then resets 250 ms later (CONFIG_MCUMGR_GRP_OS_RESET_MS).
RESET_DELAY_S = 0.25
MAX_SHA_LEN = 32


@dataclass(frozen=True)
class SmpServerConfig:
    buf_size: int = 384
    buf_count: int = 4
    mcumgr_params: bool = True
    # zcbor without CONFIG_ZCBOR_CANONICAL emits indefinite-length maps (the QEMU build does).
    indefinite_cbor: bool = False
    # What OS application info reports (os_mgmt "uname" fields, as the QEMU build fills them).
    kernel_release: str = "684c9e8f32e4"
    kernel_version: str = "4.4.0"
    build_time: str = "Wed Jun  3 22:21:59 2026"
    processor: str = "cortex-m4"
    platform: str = "arduino_nano_33_ble/nrf52840"


@dataclass(frozen=True)
class TransportLimits:
    """One SMP transport's netbuf: what it reports in MCUmgr params and the largest frame it
    takes (BLE: the config's; Zephyr's UDP transport defaults to 2048 bytes, 2 buffers)."""

    buf_size: int
    buf_count: int


# os_mgmt's application info fields in the order Zephyr prints them; "a" asks for all.
APP_INFO_FIELDS = "snrvbmpio"


@dataclass(frozen=True)
class SmpReply:
    frame: bytes | None
    busy_s: float = 0.0
    reset_after_s: float | None = None


class _GroupError(Exception):
    def __init__(self, rc: int) -> None:
        self.rc = rc


@dataclass
class SmpServer:
    flash: McubootFlash
    config: SmpServerConfig = field(default_factory=SmpServerConfig)
    _busy: float = 0.0
    touched: list[tuple[int, int]] = field(default_factory=list)

    def handle(self, frame: bytes, limits: TransportLimits | None = None) -> SmpReply:
        """Process one request frame that came through a transport with ``limits`` (the
        config's netbuf when None). Malformed headers are dropped, as Zephyr drops them."""
        limits = limits or TransportLimits(self.config.buf_size, self.config.buf_count)
        try:
            header = parse_header(frame)
        except DecodeError:
            return SmpReply(None)
        if header.op not in (Op.READ, Op.WRITE) or len(frame) != HEADER_SIZE + header.length:
            return SmpReply(None)
        if len(frame) > limits.buf_size:
            return SmpReply(None)  # larger than a netbuf: the transport drops it silently
        self._busy = 0.0
        self.touched = []
        reset_after: float | None = None
        try:
            request = decode_payload(frame[HEADER_SIZE:])
        except DecodeError:
            return self._reply(header, {"rc": EINVAL})
        key = (header.op, header.group, header.cmd)
        try:
            if key in ((Op.WRITE, Group.OS, 0), (Op.READ, Group.OS, 0)):
                # Zephyr registers echo for read and write alike.
                text = request.get("d")
                if not isinstance(text, str):
                    return self._reply(header, {"rc": EINVAL})
                body: dict[str, Any] = {"r": text}
            elif key == (Op.WRITE, Group.OS, 5):
                body, reset_after = {}, RESET_DELAY_S
            elif key == (Op.READ, Group.OS, 6) and self.config.mcumgr_params:
                body = {"buf_size": limits.buf_size, "buf_count": limits.buf_count}
            elif key == (Op.READ, Group.OS, 7):
                body = {"output": self._app_info(request.get("format", "s"))}
            elif key == (Op.READ, Group.IMAGE, 6):
                body = self._slot_info()
            elif key == (Op.READ, Group.IMAGE, 0):
                body = self._image_list()
            elif key == (Op.WRITE, Group.IMAGE, 0):
                body = self._state_write(request)
            elif key == (Op.WRITE, Group.IMAGE, 1):
                body = self._upload(request)
            elif key == (Op.WRITE, Group.IMAGE, 5):
                body = self._erase(request)
            else:
                return self._reply(header, {"rc": ENOTSUP})
        except _GroupError as err:
            if header.version == 0:
                table = _V1_OS_TRANSLATION if header.group == Group.OS else _V1_TRANSLATION
                return self._reply(header, {"rc": table.get(err.rc, 1)})
            return self._reply(header, {"err": {"group": header.group, "rc": err.rc}})
        reply = self._reply(header, body)
        return SmpReply(reply.frame, self._busy, reset_after)

    def _reply(self, header: SmpHeader, body: dict[str, Any]) -> SmpReply:
        payload = encode_cbor(body, indefinite=self.config.indefinite_cbor)
        rsp = SmpHeader(header.op + 1, min(header.version, 1), 0, len(payload), header.group,
                        header.seq, header.cmd)
        return SmpReply(encode_frame(rsp, payload), self._busy)

    # ---- os group -------------------------------------------------------------------------

    def _app_info(self, fmt: object) -> str:
        """os_mgmt application info ("uname"): the fields ``fmt`` names, in Zephyr's order;
        a format Zephyr refuses (not a string, or an unknown letter) is its group error."""
        if not isinstance(fmt, str) or any(c not in APP_INFO_FIELDS + "a" for c in fmt):
            raise _GroupError(OS_INVALID_FORMAT)
        wanted = APP_INFO_FIELDS if "a" in fmt else fmt
        cfg = self.config
        values = {"s": "Zephyr", "n": "unknown", "r": cfg.kernel_release,
                  "v": cfg.kernel_version, "b": cfg.build_time, "m": "arm",
                  "p": cfg.processor, "i": cfg.platform, "o": "Zephyr"}
        return " ".join(values[c] for c in APP_INFO_FIELDS if c in wanted)

    # ---- image group ------------------------------------------------------------------------

    def _slot_info(self) -> dict[str, Any]:
        size = self.flash.geometry.slot_size
        return {"images": [{"image": 0, "slots": [
            {"slot": 0, "size": size}, {"slot": 1, "size": size, "upload_image_id": 0}]}]}

    def _image_list(self) -> dict[str, Any]:
        return {"images": self.flash.image_states(), "splitStatus": 0}

    def _state_write(self, request: dict[str, Any]) -> dict[str, Any]:
        confirm = bool(request.get("confirm", False))
        image_hash = request.get("hash")
        flash = self.flash
        if image_hash is None and confirm:
            flash.confirm_running()
            return self._image_list()
        if not isinstance(image_hash, bytes) or len(image_hash) != 32:
            raise _GroupError(IMG_INVALID_HASH)
        slot = flash.find_slot(image_hash)
        if slot is None:
            raise _GroupError(IMG_HASH_NOT_FOUND)
        if slot == 0:
            if not confirm:
                raise _GroupError(IMG_TEST_TO_ACTIVE_DENIED)
            flash.confirm_running()
            return self._image_list()
        if flash.revert_scheduled:
            raise _GroupError(IMG_ALREADY_PENDING)
        if confirm:
            flash.slot1_permanent = True
        else:
            flash.slot1_pending = True
        return self._image_list()

    def _upload(self, request: dict[str, Any]) -> dict[str, Any]:
        flash = self.flash
        off = request.get("off")
        if not isinstance(off, int) or off < 0:
            raise _GroupError(IMG_INVALID_OFFSET)
        data = request.get("data")
        if not isinstance(data, bytes):
            raise _GroupError(IMG_INVALID_IMAGE_HEADER)
        if off == 0:
            return self._first_chunk(request, data)
        ctx = flash.upload
        if ctx is None:
            return {"off": 0}
        if off != ctx.off:
            return {"off": ctx.off}  # wrong offset: not an error, data dropped, resync
        if off + len(data) > ctx.size:
            raise _GroupError(IMG_DATA_OVERRUN)
        self._write(off, data)
        ctx.off += len(data)
        if ctx.off == ctx.size:
            flash.upload = None
        return {"off": off + len(data)}

    def _first_chunk(self, request: dict[str, Any], data: bytes) -> dict[str, Any]:
        flash = self.flash
        if len(data) < 32:
            raise _GroupError(IMG_INVALID_IMAGE_HEADER)
        size = request.get("len")
        if not isinstance(size, int) or size <= 0:
            raise _GroupError(IMG_INVALID_LENGTH)
        if int.from_bytes(data[:4], "little") != IMAGE_MAGIC:
            raise _GroupError(IMG_INVALID_IMAGE_HEADER_MAGIC)
        sha = request.get("sha", b"")
        if not isinstance(sha, bytes) or len(sha) > MAX_SHA_LEN:
            raise _GroupError(IMG_INVALID_HASH)
        ctx = flash.upload
        if sha and ctx is not None and ctx.sha == sha:
            return {"off": ctx.off}  # resume: the only key is the sha
        if flash.revert_scheduled:
            raise _GroupError(IMG_NO_FREE_SLOT)
        geometry = flash.geometry
        if size > geometry.slot_size:
            raise _GroupError(IMG_TOO_LARGE)
        if size > geometry.max_image_size:
            raise _GroupError(IMG_FLASH_ERASE_FAILED)
        if len(data) > size:
            raise _GroupError(IMG_DATA_OVERRUN)
        # Zephyr scans the slot and erases [0, len) rounded up to pages plus the trailer,
        # synchronously, only if it is not blank (a pre-erased slot costs just the scan).
        blank = flash.slot1.count(0xFF) == len(flash.slot1)
        flash.erase_slot1()
        if not blank:
            self._busy += geometry.erase_time(size + geometry.page_size)
        flash.slot1 = bytearray(b"\xff" * size)
        flash.upload = UploadContext(size=size, off=0, sha=sha)
        self._write(0, data)
        flash.upload.off = len(data)
        if flash.upload.off == size:
            flash.upload = None
        return {"off": len(data)}

    def _write(self, off: int, data: bytes) -> None:
        self.flash.slot1[off : off + len(data)] = data
        self.touched.append((off, off + len(data)))
        self._busy += self.flash.geometry.write_time(len(data))

    def _erase(self, request: dict[str, Any]) -> dict[str, Any]:
        slot = request.get("slot", 1)
        if slot != 1 or self.flash.revert_scheduled:
            raise _GroupError(IMG_NO_FREE_SLOT)
        self._busy += self.flash.geometry.erase_time(self.flash.geometry.slot_size)
        self.flash.erase_slot1()
        return {}

"""MCUboot's view of the two image slots, as a Zephyr ``img_mgmt`` server and the bootloader see it.

Semantics were captured from the real Zephyr 4.4.0 + MCUboot build under QEMU
(notes/zephyr-qemu-peer.md) and from ota.md section 5:

* slot 0 runs; an upload goes to slot 1; ``test`` marks slot 1 pending (one-shot);
* a reset with slot 1 pending swaps; the new image runs unconfirmed and slot 1 becomes the
  revert target (listed ``confirmed``); a reset without confirm swaps back;
* ``confirm`` makes the running image permanent; in swap-using-offset mode slot 1 then
  vanishes from the list, in swap-using-scratch mode it keeps the old image with no flags;
* MCUboot erases a slot-1 image whose hash does not verify instead of booting it.

State is plain data; ``FlashStore`` keeps it on disk so a controller process that reboots or
loses power keeps its flash, like the device does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from firmware_bridge.mcuboot import ImageFormatError, McubootImage, parse_image

SwapMode = Literal["offset", "scratch"]


@dataclass(frozen=True)
class FlashGeometry:
    slot_size: int
    sector_size: int
    swap_mode: SwapMode
    # nRF52840 internal flash: ~41 us per 32-bit word, 85 ms per 4 KiB page erase.
    write_bytes_per_s: float = 98_000.0
    page_erase_s: float = 0.085
    page_size: int = 4096

    @property
    def max_image_size(self) -> int:
        # swap-using-offset keeps one sector of slot 1 free for the shifted image.
        return self.slot_size - self.sector_size if self.swap_mode == "offset" else self.slot_size

    def erase_time(self, nbytes: int) -> float:
        pages = -(-nbytes // self.page_size)
        return pages * self.page_erase_s

    def write_time(self, nbytes: int) -> float:
        return nbytes / self.write_bytes_per_s


# The AutoWatering controller (ota.md 1.5, Feb-2026 layout): 728 KiB slots, swap-using-scratch.
NRF52840_GEOMETRY = FlashGeometry(slot_size=0xB6000, sector_size=0x1000, swap_mode="scratch")
# The QEMU conformance peer (qemu_cortex_m0): 0x1a000 slots, 1 KiB sectors, swap-using-offset.
QEMU_PEER_GEOMETRY = FlashGeometry(
    slot_size=0x1A000, sector_size=0x400, swap_mode="offset", page_size=0x400, page_erase_s=0.0,
    write_bytes_per_s=1e12,
)


@dataclass
class UploadContext:
    """The device's RAM-only upload state: survives a disconnect, lost on any reset."""

    size: int
    off: int
    sha: bytes


@dataclass
class SlotImage:
    data: bytes

    def parsed(self) -> McubootImage | None:
        try:
            return parse_image(self.data, allow_trailing=True)
        except ImageFormatError:
            return None


@dataclass
class McubootFlash:
    geometry: FlashGeometry
    slot0: bytes
    slot0_confirmed: bool = True
    slot1: bytearray = field(default_factory=bytearray)
    slot1_pending: bool = False
    slot1_permanent: bool = False
    revert_scheduled: bool = False
    upload: UploadContext | None = None

    # ---- image list -------------------------------------------------------------------------

    def running_version(self) -> str | None:
        """The version of the image in slot 0, as the firmware built from it reports it in
        Device Information (a build that injects its version, ota.md 5.2 V)."""
        image = SlotImage(self.slot0).parsed()
        return None if image is None else str(image.version)

    def slot_images(self) -> list[tuple[int, McubootImage]]:
        out: list[tuple[int, McubootImage]] = []
        for slot, data in ((0, self.slot0), (1, bytes(self.slot1))):
            image = SlotImage(data).parsed() if data else None
            if image is not None:
                out.append((slot, image))
        return out

    def image_states(self) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = []
        for slot, image in self.slot_images():
            states.append({
                "slot": slot,
                "version": str(image.version),
                "hash": image.image_hash,
                "bootable": image.bootable,
                "pending": slot == 1 and (self.slot1_pending or self.slot1_permanent),
                "confirmed": self.slot0_confirmed if slot == 0 else self.revert_scheduled,
                "active": slot == 0,
                "permanent": slot == 1 and self.slot1_permanent,
            })
        return states

    def find_slot(self, image_hash: bytes) -> int | None:
        for slot, image in self.slot_images():
            if image.image_hash == image_hash:
                return slot
        return None

    # ---- bootloader ---------------------------------------------------------------------------

    def boot(self) -> str:
        """Run MCUboot's decision at reset; return what happened (for logs and tests)."""
        self.upload = None
        if self.slot1_pending or self.slot1_permanent:
            permanent = self.slot1_permanent
            self.slot1_pending = self.slot1_permanent = False
            candidate = SlotImage(bytes(self.slot1)).parsed()
            if (candidate is None or not candidate.hash_ok
                    or candidate.total_size > self.geometry.max_image_size):
                self.slot1 = bytearray()
                return "rejected"
            old = self.slot0
            self.slot0 = bytes(self.slot1[: candidate.total_size])
            self.slot1 = bytearray(old)
            self.slot0_confirmed = permanent
            self.revert_scheduled = not permanent
            if permanent and self.geometry.swap_mode == "offset":
                self.slot1 = bytearray()
            return "swapped-permanent" if permanent else "swapped-test"
        if self.revert_scheduled and not self.slot0_confirmed:
            previous = SlotImage(bytes(self.slot1)).parsed()
            running = self.slot0
            if previous is not None:
                self.slot0 = bytes(self.slot1[: previous.total_size])
                self.slot1 = bytearray(running)
            self.slot0_confirmed = True
            self.revert_scheduled = False
            return "reverted"
        return "normal"

    def confirm_running(self) -> None:
        self.slot0_confirmed = True
        if self.revert_scheduled:
            self.revert_scheduled = False
            if self.geometry.swap_mode == "offset":
                self.slot1 = bytearray()

    def erase_slot1(self) -> None:
        self.slot1 = bytearray()
        self.slot1_pending = self.slot1_permanent = False
        self.upload = None

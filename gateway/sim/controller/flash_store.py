"""Keeps a virtual controller's flash on disk: a reboot or a power loss keeps what flash keeps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gateway.sim.controller.mcuboot_flash import FlashGeometry, McubootFlash


class FlashStore:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._meta = directory / "flash.json"
        self._slot0 = directory / "slot0.bin"
        self._slot1 = directory / "slot1.bin"
        # Slots are replaced wholesale (new upload, erase, swap) or written in place (chunks);
        # the object identity tells the two apart.
        self._saved_slot0: bytes | None = None
        self._saved_slot1: bytearray | None = None

    def load(self, geometry: FlashGeometry, factory_image: bytes) -> McubootFlash:
        if not self._meta.exists():
            flash = McubootFlash(geometry=geometry, slot0=factory_image)
            self.save(flash)
            return flash
        meta = json.loads(self._meta.read_text())
        flash = McubootFlash(
            geometry=geometry,
            slot0=self._slot0.read_bytes(),
            slot0_confirmed=bool(meta["slot0_confirmed"]),
            slot1=bytearray(self._slot1.read_bytes()),
            slot1_pending=bool(meta["slot1_pending"]),
            slot1_permanent=bool(meta["slot1_permanent"]),
            revert_scheduled=bool(meta["revert_scheduled"]),
        )
        self._saved_slot0 = flash.slot0
        self._saved_slot1 = flash.slot1
        return flash

    def save(self, flash: McubootFlash, touched: Sequence[tuple[int, int]] = ()) -> None:
        """Write what changed: a replaced slot whole, in-place writes by range, flags (tiny)."""
        if flash.slot0 is not self._saved_slot0:
            self._slot0.write_bytes(flash.slot0)
            self._saved_slot0 = flash.slot0
        if flash.slot1 is not self._saved_slot1:
            self._slot1.write_bytes(bytes(flash.slot1))
            self._saved_slot1 = flash.slot1
        elif touched:
            with self._slot1.open("r+b") as fh:
                for start, end in touched:
                    fh.seek(start)
                    fh.write(flash.slot1[start:end])
        self._meta.write_text(json.dumps({
            "slot0_confirmed": flash.slot0_confirmed,
            "slot1_pending": flash.slot1_pending,
            "slot1_permanent": flash.slot1_permanent,
            "revert_scheduled": flash.revert_scheduled,
        }))

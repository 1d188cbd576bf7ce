"""A virtual controller's configuration (what the rig starts it with, passed to its process as
JSON) and the faults its control interface arms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.sim.controller.mcuboot_flash import (
    NRF52840_GEOMETRY,
    QEMU_PEER_GEOMETRY,
    FlashGeometry,
)


@dataclass
class ControllerConfig:
    index: int
    adapter_id: int
    address: str
    firmware_version: str = "3.1.0"
    serial_number: str = "000001"
    hardware_revision: str = "v1"
    smp: bool = True
    mcumgr_params: bool = True
    buf_size: int = 384
    buf_count: int = 4
    geometry: str = "nrf52840"
    indefinite_cbor: bool = False
    interval_ms: float = 30.0
    packets_per_event: int = 4
    mtu: int = 247
    udp_port: int | None = None
    udp_host: str = "127.0.0.1"
    # Zephyr's UDP transport netbuf defaults (CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE with the UDP
    # transport: 2048 bytes, 2 buffers); MCUmgr params over UDP report these.
    udp_buf_size: int = 2048
    udp_buf_count: int = 2
    time_scale: float = 1.0
    schedule_every_s: float | None = None
    nominal_pps: tuple[int, ...] = (25, 20, 23, 30, 18, 22, 26, 24)
    state_dir: str = ""
    factory_image_size: int = 24_000
    # Benchmarks: write "<uuid> <hex value> <monotonic ns>" per notification as it leaves the
    # link model, so a central can measure its own latency beyond the modelled air time.
    trace_dir: str = ""
    # AutoWatering firmware confirms its own image (boot_write_img_confirmed) once it has run
    # this long after a boot; None models firmware that leaves it to the updater.
    self_confirm_after_s: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ControllerConfig:
        raw = json.loads(text)
        raw["nominal_pps"] = tuple(raw["nominal_pps"])
        return cls(**raw)

    def flash_geometry(self) -> FlashGeometry:
        return QEMU_PEER_GEOMETRY if self.geometry == "qemu" else NRF52840_GEOMETRY


@dataclass
class Faults:
    """Faults armed from the control interface; see ``VirtualController.inject``."""

    slow_s: float = 0.0
    slow_until: float = 0.0
    mute_until: float = 0.0
    busy_until: float = 0.0
    corrupt_next: set[str] = field(default_factory=set)
    at_upload_offset: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    drop_smp_replies: int = 0
    # ``lose_bonds``: the controller was reset and forgot every bond it held. Its irrigation
    # service then answers each central "Not paired" (as BlueZ reports ATT 0x05 to its client)
    # until that central pairs again; ``rebonded`` holds the centrals' device paths that have.
    bonds_lost: bool = False
    rebonded: set[str] = field(default_factory=set)


def version_tuple(text: str) -> tuple[int, int, int, int]:
    major, minor, revision, build = [*(int(p) for p in text.split(".")[:4]), 0, 0, 0, 0][:4]
    return major, minor, revision, build

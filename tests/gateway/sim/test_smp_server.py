"""The simulated SMP server answers ota.md's golden frames byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.smp.wire import decode_payload
from gateway.sim.controller.mcuboot_flash import NRF52840_GEOMETRY, QEMU_PEER_GEOMETRY, McubootFlash
from gateway.sim.controller.smp_server import SmpServer, SmpServerConfig, TransportLimits
from tests.helpers.golden import H_NEW, H_OLD, NEW_IMAGE, OLD_IMAGE

FIRST_CHUNK = bytes.fromhex(
    "0a00008100012a01a5636c656e190de0636f666600637368615820b9283e304dc5e8f08016e91634b59d39daf578"
    "6755a58933a468203f40619a77646461746158403db8f3960000000000020000b80b0000000000000102030004"
    "00000000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff65696d61676500")
IMAGE_LIST_AFTER_UPLOAD = bytes.fromhex(
    "090000f200012e00a266696d6167657382a864736c6f74006776657273696f6e65312e302e3064686173685820"
    "c46dab286999493d8093456698b6e55109b7b1dd0be863306d480d51a209e45b68626f6f7461626c65f56770656e"
    "64696e67f469636f6e6669726d6564f566616374697665f5697065726d616e656e74f4a864736c6f740167766572"
    "73696f6e67312e322e332e34646861736858203412a80ce8180ab90a171e9248f9860cf4a4437f4d5017bd151054"
    "7e66ff682868626f6f7461626c65f56770656e64696e67f469636f6e6669726d6564f466616374697665f4697065"
    "726d616e656e74f46b73706c697453746174757300")


def server(**config: object) -> SmpServer:
    return SmpServer(McubootFlash(NRF52840_GEOMETRY, OLD_IMAGE),
                     SmpServerConfig(**config))  # type: ignore[arg-type]


def upload_all(srv: SmpServer) -> None:
    assert srv.handle(FIRST_CHUNK).frame == bytes.fromhex("0b00000700012a01a1636f66661840")
    off, seq = 64, 0x2B
    while off < len(NEW_IMAGE):
        chunk = NEW_IMAGE[off:off + 300]
        import cbor2

        body = cbor2.dumps({"off": off, "data": chunk})
        frame = bytes([0x0A, 0, len(body) >> 8, len(body) & 0xFF, 0, 1, seq & 0xFF, 1]) + body
        reply = srv.handle(frame)
        assert reply.frame is not None
        off = decode_payload(reply.frame[8:])["off"]
        seq += 1


def test_golden_upload_then_image_list() -> None:
    srv = server()
    upload_all(srv)
    reply = srv.handle(bytes.fromhex("0800000100012e00a0"))
    assert reply.frame == IMAGE_LIST_AFTER_UPLOAD
    test = srv.handle(bytes.fromhex(
        "0a00003100012f00a2646861736858203412a80ce8180ab90a171e9248f9860cf4a4437f4d5017bd1510547e"
        "66ff682867636f6e6669726df4"))
    expected = bytearray(IMAGE_LIST_AFTER_UPLOAD)
    expected[:8] = bytes.fromhex("0b0000f200012f00")
    pending_at = expected.index(bytes.fromhex("6770656e64696e67f4"), 150) + 8
    expected[pending_at] = 0xF5
    assert test.frame == bytes(expected)


def test_golden_os_frames() -> None:
    srv = server()
    assert srv.handle(bytes.fromhex("0a00000800003300a161646470696e67")).frame == bytes.fromhex(
        "0b00000800003300a161726470696e67")
    reset = srv.handle(bytes.fromhex("0a00000100003205a0"))
    assert reset.frame == bytes.fromhex("0b00000100003205a0") and reset.reset_after_s == 0.25
    params = server(mcumgr_params=False).handle(bytes.fromhex("0800000100003106a0"))
    assert params.frame == bytes.fromhex("0900000500003106a162726308")


def test_resume_and_wrong_offset_follow_zephyr() -> None:
    srv = server()
    srv.handle(FIRST_CHUNK)
    resume = srv.handle(FIRST_CHUNK)
    assert decode_payload(resume.frame[8:] if resume.frame else b"") == {"off": 64}
    wrong = srv.handle(bytes.fromhex("0a00001e00012c01a2636f6666190200646461746150030a11181f262d"
                                     "343b424950575e656c"))
    assert wrong.frame is not None and decode_payload(wrong.frame[8:]) == {"off": 64}


def test_no_free_slot_error_v2_and_v1() -> None:
    srv = server()
    upload_all(srv)
    srv.handle(bytes.fromhex("0a00003100012f00a2646861736858203412a80ce8180ab90a171e9248f9860cf4a"
                             "4437f4d5017bd1510547e66ff682867636f6e6669726df4"))
    srv.flash.boot()  # swapped to test mode: slot 1 is now the revert target
    v2 = bytearray(FIRST_CHUNK)
    v2[6] = 0x30
    assert srv.handle(bytes(v2)).frame == bytes.fromhex(
        "0b00001100013001a163657272a26567726f75700162726309")
    v1 = bytearray(v2)
    v1[0] = 0x02
    assert srv.handle(bytes(v1)).frame == bytes.fromhex("0300000500013001a162726306")


def test_mcuboot_cycle_test_revert_confirm() -> None:
    srv = server()
    upload_all(srv)
    flash = srv.flash
    assert flash.find_slot(bytes.fromhex(H_NEW)) == 1
    flash.slot1_pending = True
    assert flash.boot() == "swapped-test"
    states = flash.image_states()
    assert states[0]["hash"].hex() == H_NEW and not states[0]["confirmed"]
    assert states[1]["hash"].hex() == H_OLD and states[1]["confirmed"]
    assert flash.boot() == "reverted"
    assert flash.image_states()[0]["hash"].hex() == H_OLD
    flash.slot1_pending = True
    flash.boot()
    flash.confirm_running()
    assert flash.boot() == "normal"
    assert flash.image_states()[0]["hash"].hex() == H_NEW
    assert flash.image_states()[1]["hash"].hex() == H_OLD  # swap-using-scratch keeps it


def test_bootloader_rejects_a_corrupted_slot1() -> None:
    flash = McubootFlash(QEMU_PEER_GEOMETRY, OLD_IMAGE)
    bad = bytearray(NEW_IMAGE)
    bad[0x250] ^= 1
    flash.slot1 = bad
    flash.slot1_pending = True
    assert flash.boot() == "rejected"
    assert flash.image_states()[0]["hash"].hex() == H_OLD and len(flash.image_states()) == 1


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_garbage_frames_never_crash_the_server(frame: bytes) -> None:
    srv = server(indefinite_cbor=True)
    reply = srv.handle(frame)
    if reply.frame is not None:
        assert reply.frame[0] & 0x7 in (1, 3)
        decode_payload(reply.frame[8:])


def test_oversized_frame_is_dropped_silently() -> None:
    srv = server(buf_size=64)
    assert srv.handle(FIRST_CHUNK).frame is None


@pytest.mark.parametrize(("payload", "rc"), [
    ({"off": 0, "data": NEW_IMAGE[:64]}, 21),
    ({"off": 0, "data": NEW_IMAGE[:16], "len": 3552}, 22),
    ({"off": 0, "data": b"\0" * 64, "len": 3552}, 23),
    ({"off": 0, "data": NEW_IMAGE[:64], "len": 0xB6001}, 30),
    ({"data": NEW_IMAGE[:64]}, 20),
    ({"off": 0, "data": NEW_IMAGE[:64], "len": 3552, "sha": b"\1" * 33}, 24),
])
def test_upload_errors(payload: dict[str, object], rc: int) -> None:
    import cbor2

    body = cbor2.dumps(payload)
    frame = bytes([0x0A, 0, len(body) >> 8, len(body) & 0xFF, 0, 1, 9, 1]) + body
    reply = server(buf_size=4096).handle(frame)
    assert reply.frame is not None
    assert decode_payload(reply.frame[8:]) == {"err": {"group": 1, "rc": rc}}


def request(op: int, group: int, cmd: int, body: dict[str, object], version: int = 1) -> bytes:
    import cbor2

    payload = cbor2.dumps(body)
    return bytes([(version << 3) | op, 0, len(payload) >> 8, len(payload) & 0xFF, 0, group, 7,
                  cmd]) + payload


def answer(srv: SmpServer, frame: bytes, limits: TransportLimits | None = None) -> object:
    reply = srv.handle(frame, limits)
    assert reply.frame is not None
    return decode_payload(reply.frame[8:])


def test_echo_as_read_or_write_app_info_and_slot_info_as_zephyr_serves_them() -> None:
    srv = server()
    assert answer(srv, request(0, 0, 0, {"d": "x"})) == {"r": "x"}  # echo sent as a read
    assert answer(srv, request(2, 0, 0, {"d": "x"})) == {"r": "x"}
    assert answer(srv, request(0, 0, 7, {})) == {"output": "Zephyr"}
    full = answer(srv, request(0, 0, 7, {"format": "a"}))
    assert isinstance(full, dict) and full["output"].startswith("Zephyr unknown ")
    assert full["output"].endswith(" arm cortex-m4 arduino_nano_33_ble/nrf52840 Zephyr")
    assert answer(srv, request(0, 0, 7, {"format": "vs"})) == {"output": "Zephyr 4.4.0"}
    assert answer(srv, request(0, 0, 7, {"format": "q"})) == {"err": {"group": 0, "rc": 2}}
    assert answer(srv, request(0, 0, 7, {"format": "q"}, version=0)) == {"rc": 3}
    size = NRF52840_GEOMETRY.slot_size
    assert answer(srv, request(0, 1, 6, {})) == {"images": [{"image": 0, "slots": [
        {"slot": 0, "size": size}, {"slot": 1, "size": size, "upload_image_id": 0}]}]}


def test_params_and_frame_limit_follow_the_transport() -> None:
    srv = server()
    udp = TransportLimits(2048, 2)
    assert answer(srv, request(0, 0, 6, {})) == {"buf_size": 384, "buf_count": 4}
    assert answer(srv, request(0, 0, 6, {}), udp) == {"buf_size": 2048, "buf_count": 2}
    big = request(2, 0, 0, {"d": "y" * 1000})
    assert srv.handle(big).frame is None  # over BLE's 384-byte netbuf: dropped
    assert answer(srv, big, udp) == {"r": "y" * 1000}

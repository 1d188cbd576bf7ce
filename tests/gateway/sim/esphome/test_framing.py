"""The native API framings, server side: golden frames, and any bytes a client may send give
messages or a FrameError, nothing else."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from noise.connection import NoiseConnection

from gateway.sim.esphome.framing import (
    MAC_FAILURE,
    NOISE_PROLOGUE,
    NOISE_PROTOCOL,
    FrameError,
    NoiseFramer,
    PlainFramer,
    decode_psk,
    varint,
)

PSK = bytes(range(32))


def test_plaintext_frames_split_anywhere_decode_whole() -> None:
    # A HelloRequest (type 1) of 3 bytes, then a PingRequest (type 7) of none.
    stream = b"\x00\x03\x01abc" + b"\x00\x00\x07"
    for cut in range(len(stream) + 1):
        framer = PlainFramer()
        assert framer.feed(stream[:cut]) + framer.feed(stream[cut:]) == [(1, b"abc"), (7, b"")]
    framer = PlainFramer()
    framer.send(300, b"x" * 200)
    assert framer.outgoing == [b"\x00" + varint(200) + varint(300) + b"x" * 200]
    assert varint(300) == b"\xac\x02"


@given(st.binary(max_size=300))
def test_any_bytes_are_messages_or_a_frame_error(raw: bytes) -> None:
    for framer in (PlainFramer(), NoiseFramer(PSK, "p", "A4:CF:12:00:00:01")):
        with contextlib.suppress(FrameError):
            framer.feed(raw)


def client(psk: bytes) -> NoiseConnection:
    proto = NoiseConnection.from_name(NOISE_PROTOCOL)
    proto.set_as_initiator()
    proto.set_psks(psk)
    proto.set_prologue(NOISE_PROLOGUE)
    proto.start_handshake()
    return proto


def frame(body: bytes) -> bytes:
    return bytes((1, len(body) >> 8, len(body) & 0xFF)) + body


def test_the_noise_handshake_and_an_encrypted_message() -> None:
    framer = NoiseFramer(PSK, "garden", "A4:CF:12:00:00:01")
    proto = client(PSK)
    assert framer.feed(frame(b"") + frame(b"\x00" + proto.write_message())) == []
    hello, handshake = framer.outgoing
    assert hello == frame(b"\x01garden\x00A4:CF:12:00:00:01\x00")
    proto.read_message(handshake[4:])
    sealed = proto.encrypt(b"\x00\x07\x00\x00")  # PingRequest
    assert framer.feed(frame(sealed)) == [(7, b"")]
    framer.outgoing.clear()
    framer.send(8, b"")
    assert proto.decrypt(framer.outgoing[0][3:]) == b"\x00\x08\x00\x00"


def test_a_wrong_key_is_answered_with_the_firmwares_words() -> None:
    framer = NoiseFramer(PSK, "garden", "A4:CF:12:00:00:01")
    framer.feed(frame(b"") + frame(b"\x00" + client(bytes(32)).write_message()))
    assert framer.refused == MAC_FAILURE
    assert framer.outgoing[-1] == frame(b"\x01" + MAC_FAILURE.encode())


def test_a_client_in_the_other_framing_is_told_so_in_ours() -> None:
    """What lets aioesphomeapi say "requires encryption" or "uses plaintext" rather than
    report a closed connection: the first byte of the node's answer."""
    noise = NoiseFramer(PSK, "p", "m")
    assert noise.feed(b"\x00\x00\x01") == [] and noise.refused
    assert noise.outgoing[0][0] == 0x01
    plain = PlainFramer()
    assert plain.feed(b"\x01\x00\x00") == [] and plain.refused
    assert plain.outgoing[0][0] == 0x00
    # Past the first frame, a wrong indicator is a broken client: dropped.
    with pytest.raises(FrameError, match="plaintext client"):
        noise.feed(b"\x00\x00\x01")


@pytest.mark.parametrize("key", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_bad_key_is_a_typed_error(key: str) -> None:
    with pytest.raises(FrameError):
        decode_psk(key)

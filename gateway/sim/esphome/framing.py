"""The ESPHome native API's two framings, server side, without I/O: bytes in, messages out.

Plaintext: ``0x00, varint(length), varint(type), payload``.
Noise (``Noise_NNpsk0_25519_ChaChaPoly_SHA256``, prologue ``NoiseAPIInit\\0\\0``): every frame
is ``0x01, length (2 bytes, big endian), body``. The client opens with an empty frame and its
handshake (``0x00`` + the Noise message); the server answers with its hello (``0x01``, its
name and MAC, each NUL-terminated) and its handshake (``0x00`` + the Noise message), or with
``0x01`` + a reason and closes (a wrong key gives "Handshake MAC failure"). After that each
body is encrypted ``type (2 bytes), length (2 bytes), payload``.

The framers are what an ESP32 proxy does, as far as aioesphomeapi can tell, so the real client
library can be pointed at the rig.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidTag
from noise.connection import NoiseConnection

from gateway.sim.errors import SimError

# Plaintext frames above this are refused (aioesphomeapi's own bound).
MAX_PLAIN_FRAME = 65535
# A varint longer than this is a protocol error (a 4-byte varint holds 28 bits).
MAX_VARINT_BYTES = 4
NOISE_PROTOCOL = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
NOISE_PROLOGUE = b"NoiseAPIInit\x00\x00"
MAC_FAILURE = "Handshake MAC failure"

Message = tuple[int, bytes]


class FrameError(SimError):
    """The client's bytes break the framing: the connection is closed."""


def decode_psk(key: str) -> bytes:
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error as exc:
        raise FrameError(f"the Noise key is not base64: {exc}") from exc
    if len(raw) != 32:
        raise FrameError(f"the Noise key is {len(raw)} bytes, not 32")
    return raw


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buffer: bytearray, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None when the buffer ends inside it."""
    value = shift = 0
    for index in range(pos, min(len(buffer), pos + MAX_VARINT_BYTES)):
        byte = buffer[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    if len(buffer) - pos >= MAX_VARINT_BYTES:
        raise FrameError("a varint longer than 4 bytes")
    return None


class PlainFramer:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self.outgoing: list[bytes] = []
        self._started = False
        # Why the connection is refused, once it is: the server then closes.
        self.refused: str | None = None

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while self._buffer:
            if self._buffer[0] == 0x01 and not self._started:
                # A client speaking Noise: answered in plaintext framing before the close (an
                # empty DisconnectRequest), whose 0x00 tells it the node has no encryption.
                self.refused = "Bad indicator byte"
                self.outgoing.append(b"\x00\x00\x05")
                self._buffer.clear()
                return messages
            self._started = True
            if self._buffer[0] != 0x00:
                raise FrameError(f"plaintext frame starts with {self._buffer[0]:#04x}, not 0x00"
                                 " (an encrypted client talking to a plaintext proxy?)")
            length = _read_varint(self._buffer, 1)
            if length is None:
                break
            if length[0] > MAX_PLAIN_FRAME:
                raise FrameError(f"frame of {length[0]} bytes")
            kind = _read_varint(self._buffer, length[1])
            if kind is None or len(self._buffer) < kind[1] + length[0]:
                break
            end = kind[1] + length[0]
            messages.append((kind[0], bytes(self._buffer[kind[1]:end])))
            del self._buffer[:end]
        return messages

    def send(self, kind: int, payload: bytes) -> None:
        self.outgoing.append(b"\x00" + varint(len(payload)) + varint(kind) + payload)


class NoiseFramer:
    """The responder's side of the handshake, then encrypted messages."""

    def __init__(self, psk: bytes, name: str, mac: str) -> None:
        self._buffer = bytearray()
        self.outgoing: list[bytes] = []
        self._hello = b"\x01" + name.encode() + b"\x00" + mac.encode() + b"\x00"
        self._proto = NoiseConnection.from_name(NOISE_PROTOCOL)
        self._proto.set_as_responder()
        self._proto.set_psks(psk)
        self._proto.set_prologue(NOISE_PROLOGUE)
        # NN: neither side has a static key; the handshake makes the ephemeral ones.
        self._proto.start_handshake()
        self._state = "hello"
        # Why the handshake failed, once it has: the server then closes.
        self.refused: str | None = None

    def _frame(self, body: bytes) -> bytes:
        return bytes((0x01, len(body) >> 8, len(body) & 0xFF)) + body

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= 3:
            if self._buffer[0] == 0x00 and self._state == "hello":
                # A plaintext client: ESPHome answers in its own framing before it closes, and
                # that first 0x01 is how a client learns the node requires encryption.
                self.refused = "Bad indicator byte"
                self.outgoing.append(self._frame(b"\x01" + self.refused.encode()))
                self._buffer.clear()
                self._state = "refused"
                return messages
            if self._buffer[0] != 0x01:
                raise FrameError(f"encrypted frame starts with {self._buffer[0]:#04x}, not 0x01"
                                 " (a plaintext client talking to an encrypted proxy?)")
            size = (self._buffer[1] << 8) | self._buffer[2]
            if len(self._buffer) < 3 + size:
                break
            body = bytes(self._buffer[3:3 + size])
            del self._buffer[:3 + size]
            if self._state == "hello":
                self.outgoing.append(self._frame(self._hello))
                self._state = "handshake"
            elif self._state == "handshake":
                self._handshake(body)
                if self.refused is not None:
                    return messages
            else:
                messages.append(self._decrypt(body))
        return messages

    def _handshake(self, body: bytes) -> None:
        if not body or body[0] != 0x00:
            raise FrameError("the client's handshake frame does not start with 0x00")
        try:
            self._proto.read_message(body[1:])
        except InvalidTag:
            self.refused = MAC_FAILURE
        except Exception as exc:  # noqa: BLE001 - the noise library raises its own zoo
            self.refused = f"Handshake error: {type(exc).__name__}"
        if self.refused is not None:
            self.outgoing.append(self._frame(b"\x01" + self.refused.encode()))
            return
        self.outgoing.append(self._frame(b"\x00" + self._proto.write_message()))
        self._state = "ready"

    def _decrypt(self, body: bytes) -> Message:
        try:
            plain = self._proto.decrypt(body)
        except InvalidTag as exc:
            raise FrameError("a frame that does not decrypt") from exc
        if len(plain) < 4:
            raise FrameError(f"a decrypted message of {len(plain)} bytes")
        return (plain[0] << 8) | plain[1], bytes(plain[4:])

    def send(self, kind: int, payload: bytes) -> None:
        if self._state != "ready":
            raise FrameError("a message before the handshake finished")
        header = bytes((kind >> 8, kind & 0xFF, len(payload) >> 8 & 0xFF, len(payload) & 0xFF))
        self.outgoing.append(self._frame(self._proto.encrypt(header + payload)))

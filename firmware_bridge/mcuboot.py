"""MCUboot image format: header, TLV areas, the SHA256 TLV image hash (ota.md section 2).

Pure: bytes in, a frozen ``McubootImage`` out, or ``ImageFormatError``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from firmware_bridge.errors import DecodeError

IMAGE_MAGIC = 0x96F3B83D
HEADER = struct.Struct("<IIHHIIBBHII")
TLV_INFO = struct.Struct("<HH")
TLV_ENTRY = struct.Struct("<HH")
TLV_PROT_MAGIC = 0x6908
TLV_MAGIC = 0x6907
TLV_SHA256 = 0x10
SIGNATURE_TLVS = {0x20: "rsa2048", 0x22: "ecdsa", 0x23: "rsa3072", 0x24: "ed25519"}
FLAG_ENCRYPTED = 0x04 | 0x08
FLAG_NON_BOOTABLE = 0x10
# ota.md 1.6: Zephyr's MCUboot builds reserve CONFIG_ROM_START_OFFSET = 0x200 for the header.
EXPECTED_HEADER_SIZE = 0x200


class ImageFormatError(DecodeError):
    """The bytes are not a well-formed MCUboot image."""


@dataclass(frozen=True, order=True)
class ImageVersion:
    major: int
    minor: int
    revision: int
    build: int

    def __str__(self) -> str:
        # Zephyr's img_mgmt reports the build number only when it is non-zero.
        base = f"{self.major}.{self.minor}.{self.revision}"
        return f"{base}.{self.build}" if self.build else base


@dataclass(frozen=True)
class Tlv:
    type: int
    value: bytes
    protected: bool


@dataclass(frozen=True)
class McubootImage:
    header_size: int
    image_size: int
    protected_tlv_size: int
    flags: int
    load_addr: int
    version: ImageVersion
    tlvs: tuple[Tlv, ...]
    image_hash: bytes  # the SHA256 TLV value: what the device reports in image state
    computed_hash: bytes  # sha256 over header + body + protected TLVs
    file_sha256: bytes  # sha256 of the whole file: what the upload "sha" carries
    total_size: int

    @property
    def hash_ok(self) -> bool:
        return self.image_hash == self.computed_hash

    @property
    def bootable(self) -> bool:
        return not self.flags & FLAG_NON_BOOTABLE

    @property
    def signature_types(self) -> tuple[str, ...]:
        return tuple(SIGNATURE_TLVS[t.type] for t in self.tlvs if t.type in SIGNATURE_TLVS)


def _walk_tlvs(data: bytes, start: int, magic: int, protected: bool) -> tuple[list[Tlv], int]:
    if start + TLV_INFO.size > len(data):
        raise ImageFormatError(f"TLV area at {start:#x} is beyond the end of the image")
    got_magic, total = TLV_INFO.unpack_from(data, start)
    if got_magic != magic:
        raise ImageFormatError(f"bad TLV magic {got_magic:#06x} at {start:#x}, want {magic:#06x}")
    end = start + total
    if total < TLV_INFO.size or end > len(data):
        raise ImageFormatError(f"TLV area size {total} at {start:#x} overruns the image")
    pos = start + TLV_INFO.size
    tlvs: list[Tlv] = []
    while pos < end:
        if pos + TLV_ENTRY.size > end:
            raise ImageFormatError(f"truncated TLV entry at {pos:#x}")
        tlv_type, length = TLV_ENTRY.unpack_from(data, pos)
        pos += TLV_ENTRY.size
        if pos + length > end:
            raise ImageFormatError(f"TLV {tlv_type:#x} at {pos:#x} overruns its area")
        tlvs.append(Tlv(tlv_type, bytes(data[pos : pos + length]), protected))
        pos += length
    return tlvs, end


def parse_image(data: bytes, *, allow_trailing: bool = False) -> McubootImage:
    """Parse and hash an MCUboot image; raise ImageFormatError on anything malformed.

    ``allow_trailing`` accepts bytes after the TLV area, as in a flash slot read back whole.
    """
    if len(data) < HEADER.size:
        raise ImageFormatError(f"{len(data)} bytes is shorter than the 32-byte image header")
    (magic, load_addr, hdr_size, prot_size, img_size, flags,
     major, minor, revision, build, _pad) = HEADER.unpack_from(data, 0)
    if magic != IMAGE_MAGIC:
        raise ImageFormatError(f"bad image magic {magic:#010x}")
    if hdr_size < HEADER.size:
        raise ImageFormatError(f"header size {hdr_size} is smaller than the header")
    body_end = hdr_size + img_size
    if body_end > len(data):
        raise ImageFormatError(f"image body ends at {body_end:#x}, file has {len(data):#x} bytes")
    tlvs: list[Tlv] = []
    unprot_start = body_end
    if prot_size:
        prot, prot_end = _walk_tlvs(data, body_end, TLV_PROT_MAGIC, protected=True)
        if prot_end - body_end != prot_size:
            raise ImageFormatError("protected TLV area size disagrees with the header")
        tlvs.extend(prot)
        unprot_start = prot_end
    unprot, end = _walk_tlvs(data, unprot_start, TLV_MAGIC, protected=False)
    tlvs.extend(unprot)
    if end != len(data) and not allow_trailing:
        raise ImageFormatError(f"{len(data) - end} unexpected bytes after the TLV area")
    hashes = [t for t in unprot if t.type == TLV_SHA256]
    if len(hashes) != 1 or len(hashes[0].value) != 32:
        raise ImageFormatError("image needs exactly one 32-byte SHA256 TLV")
    hashed = data[: body_end + prot_size]
    return McubootImage(
        header_size=hdr_size,
        image_size=img_size,
        protected_tlv_size=prot_size,
        flags=flags,
        load_addr=load_addr,
        version=ImageVersion(major, minor, revision, build),
        tlvs=tuple(tlvs),
        image_hash=hashes[0].value,
        computed_hash=hashlib.sha256(hashed).digest(),
        file_sha256=hashlib.sha256(data[:end]).digest(),
        total_size=end,
    )


def image_problems(image: McubootImage, slot_limit: int | None) -> list[tuple[str, str]]:
    """What makes a parsed image unfit to send, as (kind, message); kind is "invalid" or
    "too_large". Empty when the image may go to a device (ota.md 2.6)."""
    problems = []
    if not image.hash_ok:
        problems.append(("invalid", "the SHA256 TLV does not match the image contents "
                                    "(corrupted)"))
    if not image.bootable:
        problems.append(("invalid", "the image is flagged non-bootable"))
    if image.flags & FLAG_ENCRYPTED:
        problems.append(("invalid", "the image is flagged encrypted; the project's MCUboot "
                                    "does not decrypt"))
    if image.header_size != EXPECTED_HEADER_SIZE:
        problems.append(("invalid", f"header size {image.header_size:#x}, not the "
                                    f"{EXPECTED_HEADER_SIZE:#x} Zephyr's MCUboot expects"))
    if slot_limit is not None and image.total_size > slot_limit:
        problems.append(("too_large", f"{image.total_size} bytes exceeds the slot limit of "
                                      f"{slot_limit} bytes"))
    return problems


class SignatureError(ImageFormatError):
    """The image's signature does not verify against the configured key (or is missing)."""


def _signed_region(data: bytes, image: McubootImage) -> bytes:
    """Header + body + protected TLVs: what MCUboot hashes and imgtool signs."""
    return data[:image.header_size + image.image_size + image.protected_tlv_size]


def verify_signature(data: bytes, image: McubootImage, public_key_pem: bytes) -> str:
    """Verify the image's signature TLV with ``public_key_pem`` the way MCUboot does; return
    the key type. ECDSA P-256 and RSA-PSS sign the region itself, Ed25519 its SHA-256 digest
    (imgtool's conventions). Raises SignatureError."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as exc:
        raise SignatureError(f"the public key is not a PEM public key: {exc}") from exc
    signatures = {t.type: t.value for t in image.tlvs if t.type in SIGNATURE_TLVS}
    region = _signed_region(data, image)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and 0x22 in signatures:
            key.verify(signatures[0x22], region, ec.ECDSA(hashes.SHA256()))
            return "ecdsa-p256"
        if isinstance(key, ed25519.Ed25519PublicKey) and 0x24 in signatures:
            key.verify(signatures[0x24], hashlib.sha256(region).digest())
            return "ed25519"
        if isinstance(key, rsa.RSAPublicKey):
            tlv = 0x20 if key.key_size == 2048 else 0x23
            if tlv in signatures:
                key.verify(signatures[tlv], region,
                           padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                           hashes.SHA256())
                return f"rsa{key.key_size}"
    except InvalidSignature as exc:
        raise SignatureError("the signature does not verify with the configured key") from exc
    raise SignatureError(f"no signature of the key's type in the image "
                         f"(signatures: {', '.join(image.signature_types) or 'none'})")

"""Golden inputs shared by tests: the ota.md section 2.5 / 7 test image, rebuilt bit for bit."""

from __future__ import annotations

from gateway.sim.images import make_image

BODY = bytes((7 * i + 3) % 256 for i in range(3000))
NEW_IMAGE = make_image((1, 2, 3, 4), BODY)  # out_unsigned.bin
OLD_IMAGE = make_image((1, 0, 0, 0), BODY)  # old_unsigned.bin
FILE_SHA256 = "b9283e304dc5e8f08016e91634b59d39daf5786755a58933a468203f40619a77"
H_NEW = "3412a80ce8180ab90a171e9248f9860cf4a4437f4d5017bd1510547e66ff6828"
H_OLD = "c46dab286999493d8093456698b6e55109b7b1dd0be863306d480d51a209e45b"

# Golden vector V19 (tests/firmware_bridge/test_codec_p1.py decodes it; the state store reads it).
V19 = bytes.fromhex(
    "0200EE02000001080103000200050100013C0001000100000000CDCC4C3D0000000000000000A04100040"
    "05C971CB569971CB56900000000")

# Golden vector V1, a Bulk Sync (tests/firmware_bridge/test_codec.py decodes it).
V1 = bytes.fromhex(
    "01070000971CB5693C000000010004024D030C00B9006F0294277000500000000C0000000100000000010000"
    "0105FFFF0000000019001C0000180000")

"""The controller's fixed limits (device-ble.md), apart from the codecs so that a caller who
needs only a number (the CLI's argument checks, the ops contract) does not load every layout."""

NO_CHANNEL = 0xFF
CHANNELS = 8

# The longest duration task the firmware runs as asked: it accepts 1-1440 minutes but stores
# them in a u8 (device-ble.md Δ21: 256 runs 0 minutes, 1440 runs 160).
MAX_TASK_MINUTES = 255

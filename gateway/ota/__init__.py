"""Firmware updates as fleet policy: the gates, the slot, the hand-over, the configured timeouts."""

"""Units as types: the wire carries bare integers, the code carries what they measure.

``NewType`` costs nothing at run time and lets mypy refuse a litre where a millilitre belongs.
"""

from typing import NewType

Millilitres = NewType("Millilitres", int)
Litres = NewType("Litres", int)
Seconds = NewType("Seconds", int)
Minutes = NewType("Minutes", int)
PulsesPerSecond = NewType("PulsesPerSecond", int)
PulsesPerLitre = NewType("PulsesPerLitre", int)
UnixSeconds = NewType("UnixSeconds", int)
"""Unix UTC seconds as the device's RTC counts them; 0 means the RTC was never set."""
UptimeSeconds = NewType("UptimeSeconds", int)
"""Seconds since the device booted: not a date (device-ble.md 4.4, delta 9)."""
UptimeMillis = NewType("UptimeMillis", int)
OffsetMinutes = NewType("OffsetMinutes", int)
Percent = NewType("Percent", int)

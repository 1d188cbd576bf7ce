"""GATT UUIDs of the AutoWatering controller (device-ble.md section 1)."""

from __future__ import annotations

from typing import Final


def _irrigation(suffix: str) -> str:
    return f"12345678-1234-5678-1234-56789abc{suffix}"


IRRIGATION_SERVICE: Final = _irrigation("def0")
VALVE_CONTROL: Final = _irrigation("def1")
FLOW_SENSOR: Final = _irrigation("def2")
SYSTEM_STATUS: Final = _irrigation("def3")
TASK_QUEUE: Final = _irrigation("def7")
RTC_CONFIG: Final = _irrigation("def9")
ALARM_STATUS: Final = _irrigation("defa")
CURRENT_TASK: Final = _irrigation("deff")
BULK_SYNC: Final = _irrigation("de60")
CHANNEL_CONFIG: Final = _irrigation("def4")
SCHEDULE_CONFIG: Final = _irrigation("def5")
SYSTEM_CONFIG: Final = _irrigation("def6")
STATISTICS: Final = _irrigation("def8")
HISTORY: Final = _irrigation("defc")
DIAGNOSTICS: Final = _irrigation("defd")
RAIN_DATA: Final = _irrigation("de13")
ENVIRONMENTAL_DATA: Final = _irrigation("de15")
HYDRAULIC_STATUS: Final = _irrigation("de22")
# Timezone sits in the other UUID family although it belongs to the irrigation service.
TIMEZONE_CONFIG: Final = "12345678-1234-5678-9abc-def123456793"

DEVICE_INFORMATION_SERVICE: Final = "0000180a-0000-1000-8000-00805f9b34fb"
DIS_FIRMWARE_REVISION: Final = "00002a26-0000-1000-8000-00805f9b34fb"
DIS_SERIAL_NUMBER: Final = "00002a25-0000-1000-8000-00805f9b34fb"
DIS_HARDWARE_REVISION: Final = "00002a27-0000-1000-8000-00805f9b34fb"

SMP_SERVICE: Final = "8d53dc1d-1db7-4cd3-868b-8a527460aa84"
SMP_CHARACTERISTIC: Final = "da2e7828-fbce-4e01-ae9e-261174997c48"

ADVERTISED_NAME: Final = "AutoWatering"
NAME_PREFIX: Final = "AutoWater"
# Company ID 0x0000 is a placeholder in the firmware; the payload is ASCII "AW".
MANUFACTURER_ID: Final = 0x0000
MANUFACTURER_DATA: Final = b"AW"
ATT_MTU: Final = 247

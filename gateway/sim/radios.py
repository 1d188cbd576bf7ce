"""Where the rig's radios live on its private D-Bus.

A real gateway has one adapter. The rig also needs one adapter per virtual controller, but a
BLE client that takes "the first adapter" (btleplug, and so mcumgr-toolkit) must not land on a
controller's radio. So BlueZoo serves the gateway's adapter under BlueZ's own name and every
controller's adapter from a second connection under this name: ``org.bluez``'s object manager
lists only the gateway's adapter, as on a real hub.
"""

from __future__ import annotations

PERIPHERAL_RADIOS_BUS_NAME = "org.autowatering.sim.PeripheralRadios"

"""What the gateway asks of BlueZ itself (bleak covers the rest): the bond inventory, bond
removal, the pairing agent with its window, and links left behind by an unclean stop."""

from gateway.bluez.bonds import Bond, bonds, pairing_window, remove_bond
from gateway.bluez.links import release_orphan

__all__ = ["Bond", "bonds", "pairing_window", "release_orphan", "remove_bond"]

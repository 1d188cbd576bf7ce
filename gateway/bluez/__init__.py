"""What the gateway asks of BlueZ itself (bleak covers the rest): the bond inventory, bond
removal, and the pairing agent with its window."""

from gateway.bluez.bonds import Bond, bonds, pairing_window, remove_bond

__all__ = ["Bond", "bonds", "pairing_window", "remove_bond"]

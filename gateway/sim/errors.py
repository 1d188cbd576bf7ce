"""Errors of the virtual rig and the QEMU peer: a tree of their own, since the rig stands
beside the gateway (it imports only firmware_bridge, cloud_client and itself); the CLI
translates them at its boundary."""


class SimError(Exception):
    """The virtual rig or a simulation peer could not do what was asked."""


class SimConfigError(SimError):
    """A rig option or controller configuration is invalid."""

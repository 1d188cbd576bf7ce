"""Errors of the virtual rig and the QEMU peer."""

from gateway.errors import GatewayError


class SimError(GatewayError):
    """The virtual rig or a simulation peer could not do what was asked."""


class SimConfigError(SimError):
    """A rig option or controller configuration is invalid."""

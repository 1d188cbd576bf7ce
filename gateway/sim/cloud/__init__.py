"""The emulated AutoWatering cloud: backend routes with their quirks, the proposed gateway
routes, Cognito, OTA releases and presigned downloads, faults on demand (cloud-api.md)."""

from gateway.sim.cloud.server import EmulatorServer
from gateway.sim.cloud.world import ApiError, Fault, World

__all__ = ["ApiError", "EmulatorServer", "Fault", "World"]

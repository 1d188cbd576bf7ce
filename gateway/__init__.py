"""The AutoWatering gateway: the fleet of controllers and its policy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autowatering-gateway")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"

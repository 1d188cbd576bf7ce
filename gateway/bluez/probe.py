"""Whether an adapter is there and powered, as BlueZ says: the daemon's watchdog and a radio's
presence both read it."""

from __future__ import annotations

from dbus_fast.aio import MessageBus

from gateway.bluez import bus


class AdapterProbe:
    """Reads the adapter's Powered property from BlueZ over one kept D-Bus connection."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self._bus: MessageBus | None = None
        # Whether the last check reached bluetoothd at all (whatever it said of the adapter):
        # READY=1 waits for that, not for a healthy adapter.
        self.bluez_answered = False

    async def check(self) -> str | None:
        """None when BlueZ answers and the adapter is powered, else why not."""
        self.bluez_answered = False
        try:
            if self._bus is None or not self._bus.connected:
                self._bus = await bus.connect()
            powered = await bus.get_property(self._bus, f"/org/bluez/{self.adapter}",
                                             "org.bluez.Adapter1", "Powered")
        except bus.BluezRefused as exc:
            self.bluez_answered = True
            if exc.name in ("org.freedesktop.DBus.Error.UnknownObject",
                            "org.freedesktop.DBus.Error.UnknownMethod"):
                return f"adapter {self.adapter} is missing"
            return f"BlueZ refused to read {self.adapter}: {exc.name}"
        except bus.BluezNotRunning as exc:
            return str(exc)
        except bus.BluezUnreachable as exc:
            self.close()
            return str(exc)
        self.bluez_answered = True
        return None if powered else f"adapter {self.adapter} is powered off"

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

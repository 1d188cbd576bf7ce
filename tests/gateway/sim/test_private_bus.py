"""The rig's private D-Bus takes what a full garden asks of it. BlueZoo holds a signal match
per object of every controller's GATT application (services, characteristics, descriptors):
24 controllers are about a thousand on its one connection. Past dbus-daemon's default of 512
a controller's characteristics were never watched, and their notifications never reached any
central: bench/fleet.py had commands to three of its 24 controllers answered only on
re-read, 10 s later, in every run of seed 3."""

from __future__ import annotations

from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from gateway.sim.dbus_daemon import PrivateBus

# What the fleet bench's garden asks (24 controllers), with room for the rig's largest.
MATCH_RULES = 3000


async def test_one_connection_may_watch_every_object_of_a_full_garden(tmp_path: Path) -> None:
    bus = PrivateBus(tmp_path)
    address = await bus.start()
    try:
        client = await MessageBus(bus_address=address).connect()
        try:
            for n in range(MATCH_RULES):
                reply = await client.call(Message(
                    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                    body=[f"type='signal',interface='org.freedesktop.DBus.Properties',"
                          f"path='/rig/app/char{n}'"]))
                assert reply is not None
                assert reply.message_type is MessageType.METHOD_RETURN, (n, reply.body)
        finally:
            client.disconnect()
    finally:
        await bus.stop()

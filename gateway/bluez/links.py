"""Links BlueZ holds that no client of ours owns.

BlueZ keeps an LE link that a D-Bus client made when that client dies (a crash, an OOM kill,
the watchdog's SIGABRT), and a controller takes one connection and stops advertising while
connected: a restarted gateway would scan for it forever (hostile-edges H4). Before the
gateway connects to a paired controller it cannot see, it asks BlueZ; a link it does not own
is released, and the controller advertises again (bleak-retry-connector's stale-connection
handling does the same for Home Assistant)."""

from __future__ import annotations

import asyncio

import structlog

from gateway.bluez import bus
from gateway.bluez.agent import device_path
from gateway.clock import Clock

log = structlog.get_logger(__name__)

DEVICE = "org.bluez.Device1"
# BlueZ reports the link down (Connected=false) within this after Disconnect: a supervision
# timeout is at most a few seconds, and a disconnect we ask for is immediate.
RELEASE_WAIT_S = 5.0
RELEASE_POLL_S = 0.1


async def release_orphan(adapter: str, address: str, clock: Clock) -> bool:
    """True when BlueZ held a link to ``address`` (one we do not own: the caller holds none)
    and it is now released; False when there was none or BlueZ cannot tell."""
    path = device_path(adapter, address)
    try:
        async with bus.system_bus() as system:
            if not await bus.get_property(system, path, DEVICE, "Connected"):
                return False
            log.warning("orphaned_link_released", address=address,
                        reason="BlueZ held a link no client of ours owns (an unclean stop)")
            await bus.call(system, path, DEVICE, "Disconnect")
            async with asyncio.timeout(RELEASE_WAIT_S):
                while await bus.get_property(system, path, DEVICE, "Connected"):
                    await clock.sleep(RELEASE_POLL_S)
    except bus.BluezError:
        return False  # unknown to BlueZ, or BlueZ away: the normal connect path reports it
    except TimeoutError:
        log.warning("orphaned_link_still_up", address=address, waited_s=RELEASE_WAIT_S)
        return False
    return True

"""An ESPHome Bluetooth proxy as a radio: its native-API connection (kept, and made again with
backoff), bleak-esphome's scanner registered with habluetooth's manager, its slots as the proxy
reports them, and connects through bleak-esphome's client on the device that proxy heard.

The path is the gateway's choice (``paths.choose``), not habluetooth's: its client wrapper
picks the best-scoring scanner itself, so the client is built here for this proxy's
connector."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import bleak_esphome
import structlog
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import (
    APIConnectionError,
    BluetoothConnectionDroppedError,
    EncryptionPlaintextAPIError,
    InvalidAuthAPIError,
    InvalidEncryptionKeyAPIError,
    RequiresEncryptionAPIError,
)
from aioesphomeapi.model import BluetoothProxyFeature
from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bleak_esphome.backend.client import ESPHomeClientData
from bleak_retry_connector import (
    BleakNotFoundError,
    BleakOutOfConnectionSlotsError,
    establish_connection,
)
from bleak_retry_connector.bluez import Allocations
from bluetooth_data_tools import mac_to_int, monotonic_time_coarse
from habluetooth import BaseHaRemoteScanner, BluetoothManager

from firmware_bridge.errors import PeerNotFound
from firmware_bridge.link.gatt_link import BleakGattLink, GattLink
from firmware_bridge.smp.ble import BleSmpTransport
from gateway.backoff import full_jitter
from gateway.clock import Clock
from gateway.config import EsphomeProxySettings
from gateway.link.paths import Sighting
from gateway.link.radios.base import MAX_PROXY_SLOTS, RadioRefused
from gateway.link.radios.keys import credential_name, read_key
from gateway.link.scheduler import ScanGate, SlotScheduler
from gateway.ops.health import RadioKind

log = structlog.get_logger(__name__)

# The API's own ping interval: aioesphomeapi calls a proxy dead after 4.5 of these without an
# answer. At 2 s a proxy that loses power is known dead within 9 s, which leaves the failover
# goal (15 s) room for the link-lost backoff (1 s) and a connect through another radio.
KEEPALIVE_S = 2.0
# Connect, Noise handshake, hello and device info over a home LAN: well under a second; 10 s
# covers a proxy busy with a BLE connect and a congested Wi-Fi.
API_CONNECT_TIMEOUT_S = 10.0
# A proxy answers the slot subscription at once; the doctor waits this long for it.
SLOT_REPORT_WITHIN_S = 3.0
# Reconnects to a proxy that is away: soon after a blip, then at most 10 s apart, so a proxy
# back from a power cut serves again within seconds of its boot. An attempt at a host that is
# away costs one TCP SYN on the LAN; one refused while the proxy is off returns at once, so
# the count climbs fast and a cap of 30 s cost a pinned controller its proxy for half a minute.
RECONNECT_FIRST_S = 2.0
RECONNECT_CAP_S = 10.0
# A proxy that answers and refuses (key, password, encryption): a person must change the
# credential or its YAML, so the attempt (a Noise handshake on the ESP32) is spaced wider.
REFUSED_RECONNECT_CAP_S = 60.0
# aioesphomeapi takes any connection change of a device for the answer to a request about it
# (an unpair, a cache clear). The late close of a link the hub just abandoned (a cancelled
# connect, released without waiting) is such a change: the request is asked again. A proxy
# holds one link per device, so one stale close is what comes; three attempts leave room for
# a connect failure besides, all within one API_CONNECT_TIMEOUT_S.
DEVICE_REQUEST_ATTEMPTS = 3

T = TypeVar("T")


class EsphomeRadio:
    kind = RadioKind.PROXY

    def __init__(self, settings: EsphomeProxySettings, manager: Callable[[], BluetoothManager],
                 clock: Clock, on_seen: Callable[[str], None] | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.clock = clock
        self._manager = manager
        self.on_seen = on_seen
        # A proxy scans while it connects (the ESP32 arbitrates its own radio): no gate.
        self.scheduler = SlotScheduler(0, ScanGate())
        self.scheduler.close(f"proxy {self.name} is not connected yet")
        self._reason: str | None = f"proxy {self.name} is not connected yet"
        self._refused: RadioRefused | None = None
        self._was_up = False  # reached at least once since start
        self._scanner: BaseHaRemoteScanner | None = None
        self._client_class: type[BleakClient] | None = None
        self._connected = False
        self._info: dict[str, str] = {"host": f"{settings.host}:{settings.port}"}
        self.limit = 0
        self._failures = 0
        self._lists_links = False
        self._api: APIClient | None = None
        # Done when the current API connection ends (a new one per connection).
        self._lost: asyncio.Future[None] | None = None
        self._data: ESPHomeClientData | None = None
        self._flags = 0

    # ---- what the set reads ------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._connected and self._refused is None

    @property
    def reason(self) -> str | None:
        if self._refused is not None:
            return f"{self._refused} (remedy: {self._refused.remedy})"
        return None if self._connected else self._reason

    def heard(self, address: str) -> Sighting | None:
        scanner = self._scanner
        if scanner is None or not self._connected:
            return None
        found = scanner.get_discovered_device_advertisement_data(address)
        if found is None:
            return None
        at = scanner.discovered_device_timestamps.get(address)
        age = monotonic_time_coarse() - at if at is not None else 0.0
        return Sighting(found[1].rssi, age)

    def detail(self) -> Mapping[str, str]:
        return dict(self._info)

    # ---- connects ----------------------------------------------------------------------------

    def _device(self, address: str) -> tuple[BLEDevice, type[BleakClient]]:
        scanner, client_class = self._scanner, self._client_class
        if not self.up or scanner is None or client_class is None:
            raise PeerNotFound(f"proxy {self.name} is down ({self.reason})")
        found = scanner.get_discovered_device_advertisement_data(address)
        if found is None:
            raise PeerNotFound(f"proxy {self.name} has not heard {address}")
        return found[0], client_class

    async def release_orphan(self, address: str) -> bool:
        return False  # the proxy drops its links when its API connection ends

    async def refresh_services(self, address: str) -> bool:
        """Forget the services bleak-esphome cached for ``address`` (in this process, and on
        the proxy when its ESPHome can), so the next connect discovers them afresh: after a
        firmware update the handles move, and a stale table fails every bring-up."""
        self._forget(address)
        api, data = self._api, self._data
        if api is None or data is None or not (
                self._flags & BluetoothProxyFeature.CACHE_CLEARING):
            return True
        try:
            await _device_request(lambda: api.bluetooth_device_clear_cache(mac_to_int(address)))
        except (APIConnectionError, TimeoutError) as exc:
            log.info("proxy_cache_clear_failed", radio=self.name, address=address,
                     error=str(exc))
        return True

    async def forget_bond(self, address: str) -> bool:
        """Through a proxy the bond is the ESP32's: it paired when the controller asked for
        security on connect (device-ble.md 3.1), so the proxy forgets it and the next connect
        through it pairs afresh (Just Works). BlueZ's bond is another one, the hub adapter's
        own, and stays. The services cached for ``address`` go too."""
        self._forget(address)
        api = self._api
        if api is None or not (self._flags & BluetoothProxyFeature.PAIRING):
            log.warning("proxy_bond_kept", radio=self.name, address=address,
                        reason="not connected" if api is None else "its firmware cannot unpair",
                        remedy=f"clear the bond on the controller and on the proxy {self.name} "
                               f"(restart it), or pin {address} to another radio: awgw pair "
                               f"{address} --radio NAME")
            return True
        try:
            answer = await _device_request(lambda: api.bluetooth_device_unpair(mac_to_int(address)))
        except (APIConnectionError, TimeoutError) as exc:
            log.warning("proxy_unpair_failed", radio=self.name, address=address, error=str(exc))
            return True
        log.info("proxy_bond_forgotten", radio=self.name, address=address,
                 success=answer.success, error=answer.error)
        return True

    def _forget(self, address: str) -> None:
        if self._data is not None:
            cache = self._data.bluetooth_device.cache
            cache.clear_gatt_services_cache(mac_to_int(address))
            cache.clear_gatt_mtu_cache(mac_to_int(address))

    def smp_transport(self, address: str) -> BleSmpTransport:
        device, client_class = self._device(address)
        # SMP links are an update's, before and after its reset: the table may have moved.
        self._forget(address)

        def client(lost: Callable[[BleakClient], None], timeout_s: float) -> BleakClient:
            return client_class(device, lost, timeout=timeout_s)

        return BleSmpTransport(device, adapter=self.name, client_factory=client)

    async def connect(self, address: str, timeout_s: float,
                      on_disconnect: Callable[[], None]) -> GattLink:
        device, client_class = self._device(address)

        lost = self._lost
        if lost is None:
            raise PeerNotFound(f"proxy {self.name} is not connected")

        async def attempt(disconnected: Callable[[BleakClient], None]) -> BleakClient:
            # One attempt: retries are the supervisor's (its failure table and the path
            # choice, which may send the next attempt through another radio).
            return await establish_connection(
                client_class, device, address, disconnected_callback=disconnected,
                max_attempts=1, timeout=timeout_s)

        async def opener(disconnected: Callable[[BleakClient], None]) -> BleakClient:
            # A connect in flight when the proxy goes away would wait out its timeout (the
            # proxy never answers it): it ends with the API connection instead, the way
            # asyncio.timeout ends a wait (cancel this task, then take the cancel back).
            task = asyncio.current_task()
            assert task is not None
            cut = False

            def cut_short(_lost: asyncio.Future[None]) -> None:
                nonlocal cut
                cut = True
                task.cancel()

            lost.add_done_callback(cut_short)
            try:
                return await attempt(disconnected)
            except asyncio.CancelledError:
                if cut and task.uncancel() == 0:
                    raise BleakError(f"not connected: proxy {self.name} went away during "
                                     f"the connect") from None
                raise
            except BleakOutOfConnectionSlotsError as exc:
                raise BleakError(f"no resources: proxy {self.name} has no free slot") from exc
            except BleakNotFoundError as exc:
                raise BleakDeviceNotFoundError(address, f"proxy {self.name}: {exc}") from exc
            finally:
                lost.remove_done_callback(cut_short)

        return await BleakGattLink.connect(device, adapter=self.name, timeout_s=timeout_s,
                                           on_disconnect=on_disconnect, opener=opener)

    # ---- the API connection ------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            cap_s = RECONNECT_CAP_S
            try:
                await self._session(read_key(self.settings))
                self._failures = 0  # it was up and went away: soon again (blips are short)
            except RadioRefused as exc:
                cap_s = self._refuse(exc)
            except (APIConnectionError, OSError, TimeoutError) as exc:
                cap_s = self._refuse(refusal(self.settings, exc))
            await self.clock.sleep(max(0.5, full_jitter(random.random, self._failures,
                                                        RECONNECT_FIRST_S, cap_s)))
            self._failures += 1

    def _refuse(self, exc: RadioRefused) -> float:
        """Say why (once per reason); returns the cap of the wait before the next attempt."""
        text = str(exc)
        if text != self._reason:  # once per distinct reason, not once per retry
            # A proxy that was up and is now out of reach is a power cut (radio_down said
            # so); one never reached since start is likely misconfigured.
            say = log.warning if exc.transient and self._was_up else log.error
            say("radio_refused", radio=self.name, error=text, remedy=exc.remedy)
        self._reason = text
        self._connected = False
        return RECONNECT_CAP_S if exc.transient else REFUSED_RECONNECT_CAP_S

    async def _session(self, key: str | None) -> None:
        api = APIClient(self.settings.host, self.settings.port, None, noise_psk=key,
                        client_info="awgw", keepalive=KEEPALIVE_S)
        stopped = asyncio.Event()

        async def on_stop(expected_disconnect: bool) -> None:
            stopped.set()

        data: ESPHomeClientData | None = None
        undo: list[Callable[[], None]] = []
        self._lost = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(API_CONNECT_TIMEOUT_S):
                await api.connect(on_stop=on_stop, login=True)
                info = await api.device_info()
            version = api.api_version
            flags = info.bluetooth_proxy_feature_flags_compat(version) if version else 0
            if not flags & BluetoothProxyFeature.ACTIVE_CONNECTIONS:
                raise RadioRefused(f"proxy {self.name} ({info.name}) cannot connect to devices",
                                   "set `bluetooth_proxy: active: true` in its ESPHome YAML")
            data = bleak_esphome.connect_scanner(api, info, True)
            scanner = data.scanner
            if scanner is None:
                raise RadioRefused(f"proxy {self.name}: bleak-esphome made no scanner for it",
                                   "report this: the proxy's device info is unusual")
            forward = self._manager().async_on_allocation_changed

            def slots(allocations: Allocations) -> None:
                self._slots(allocations)
                forward(allocations)

            data.bluetooth_device.async_subscribe_connection_slots(slots)
            undo.append(scanner.async_setup())
            undo.append(self._manager().async_register_scanner(scanner))
            self._scanner = scanner
            self._client_class = _client_class(scanner)
            self._api, self._data, self._flags = api, data, flags
            self._info.update(name=info.name, esphome=info.esphome_version,
                              api=f"{version.major}.{version.minor}" if version else "?",
                              encryption="noise" if key else "none")
            self._connected = True
            self._refused = None
            self._reason = None
            self._was_up = True
            log.info("radio_up", radio=self.name, kind=self.kind.value, **self._info)
            await stopped.wait()
            log.warning("radio_down", radio=self.name, kind=self.kind.value,
                        reason="the proxy's API connection ended")
        finally:
            self._connected = False
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(None)
            self._scanner = None
            self._client_class = None
            self._api = self._data = None
            self._reason = self._reason or f"proxy {self.name} disconnected"
            self.scheduler.close(f"proxy {self.name} disconnected")
            if data is not None:
                # Its links are gone with it: fail them now (bleak-esphome's clients listen
                # here), and let slot waiters look elsewhere.
                data.bluetooth_device.async_set_unavailable()
                for callback in list(data.disconnect_callbacks):
                    callback()
            for step in reversed(undo):
                step()
            await api.disconnect(force=True)

    def _slots(self, allocations: Allocations) -> None:
        limit, free, allocated = allocations.slots, allocations.free, allocations.allocated
        if not (0 <= free <= limit <= MAX_PROXY_SLOTS) or len(allocated) + free > limit:
            refused = RadioRefused(
                f"proxy {self.name} reports impossible slot counts (free {free} of {limit}, "
                f"{len(allocated)} allocated)", "update ESPHome on the proxy, or restart it")
            if self._refused is None or str(self._refused) != str(refused):
                log.error("radio_refused", radio=self.name, error=str(refused),
                          remedy=refused.remedy)
            self._refused = refused
            self.scheduler.close(str(refused))
            return
        self._refused = None
        self.limit = limit
        # Slots in use that are not ours: the phone, another Home Assistant. Ours are those
        # of our leases the proxy lists (a lease still connecting holds no slot there yet).
        # A proxy that never lists its links (ESPHome before the allocated list) is taken to
        # hold all of ours.
        self._lists_links = self._lists_links or bool(allocated)
        leased = {lease.address.upper() for lease in self.scheduler.leases}
        ours = (sum(1 for a in allocated if a.upper() in leased) if self._lists_links
                else len(leased))
        foreign = max(0, limit - free - ours)
        cap = min(limit, self.settings.slots or limit)
        self.scheduler.resize(min(cap, limit - foreign))


async def _device_request(ask: Callable[[], Awaitable[T]]) -> T:
    async with asyncio.timeout(API_CONNECT_TIMEOUT_S):
        for _ in range(DEVICE_REQUEST_ATTEMPTS - 1):
            try:
                return await ask()
            except BluetoothConnectionDroppedError:
                continue  # a stale close answered it
        return await ask()


def refusal(settings: EsphomeProxySettings, exc: BaseException) -> RadioRefused:
    """Why the proxy's API would not have us, with what to do about it."""
    name, where = settings.name, f"{settings.host}:{settings.port}"
    credential = credential_name(settings)
    if isinstance(exc, InvalidEncryptionKeyAPIError):
        return RadioRefused(f"proxy {name} at {where} refused the key",
                            f"put the proxy's `api: encryption: key:` in the credential "
                            f"{credential} (or key_file)")
    if isinstance(exc, RequiresEncryptionAPIError):
        return RadioRefused(f"proxy {name} at {where} requires encryption and no key is "
                            f"configured", f"put its key in the credential {credential} (or "
                            "key_file)")
    if isinstance(exc, EncryptionPlaintextAPIError):
        return RadioRefused(f"proxy {name} at {where} has no encryption but a key is "
                            "configured", "remove the key, or add `api: encryption:` to the "
                            "proxy's YAML")
    if isinstance(exc, InvalidAuthAPIError):
        return RadioRefused(f"proxy {name} at {where} asks for an API password",
                            "use an encryption key instead of the deprecated password")
    return RadioRefused(f"proxy {name} at {where} is unreachable: {type(exc).__name__}: {exc}",
                        "check the proxy is powered and on the network, and its host and port "
                        "in [[radios.esphome]]", transient=True)


@dataclass(frozen=True)
class ProxyReport:
    """What `awgw doctor` learns by asking a proxy once."""

    name: str
    esphome: str
    api: str
    can_connect: bool  # bluetooth_proxy: active: true
    free: int | None  # None: it sent no slot report in time
    limit: int | None


async def probe(settings: EsphomeProxySettings, key: str | None) -> ProxyReport:
    """Connect, read its device info and first slot report, disconnect. Raises RadioRefused."""
    api = APIClient(settings.host, settings.port, None, noise_psk=key, client_info="awgw-doctor")
    slots: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    def report(free: int, limit: int, _allocated: list[int]) -> None:
        if not slots.done():
            slots.set_result((free, limit))

    try:
        async with asyncio.timeout(API_CONNECT_TIMEOUT_S):
            await api.connect(login=True)
            info = await api.device_info()
        version = api.api_version
        flags = info.bluetooth_proxy_feature_flags_compat(version) if version else 0
        active = bool(flags & BluetoothProxyFeature.ACTIVE_CONNECTIONS)
        free = limit = None
        if active:
            api.subscribe_bluetooth_connections_free(report)
            try:
                async with asyncio.timeout(SLOT_REPORT_WITHIN_S):
                    free, limit = await slots
            except TimeoutError:
                pass
        return ProxyReport(info.name, info.esphome_version,
                           f"{version.major}.{version.minor}" if version else "?", active,
                           free, limit)
    except (APIConnectionError, OSError, TimeoutError) as exc:
        raise refusal(settings, exc) from exc
    finally:
        await api.disconnect(force=True)


def _client_class(scanner: BaseHaRemoteScanner) -> type[BleakClient]:
    """A BleakClient whose backend is this proxy's bleak-esphome client (bleak names a backend
    by its ``__name__``, which the connector's partial lacks)."""
    connector = scanner.connector
    if connector is None:
        raise RadioRefused(f"scanner {scanner.name} has no connector",
                           "report this: the proxy's device info is unusual")
    make = connector.client

    def esphome_backend(*args: Any, **kwargs: Any) -> Any:
        return make(*args, **kwargs)

    backend = cast(Any, esphome_backend)

    class ProxyClient(BleakClient):
        def __init__(self, device: BLEDevice, disconnected_callback: Any = None,
                     services: Any = None, **kwargs: Any) -> None:
            super().__init__(device, disconnected_callback, services, backend=backend, **kwargs)

    return ProxyClient

"""The gateway's radios as one: each connect goes through the radio ``paths.choose`` picks, on
that radio's slots and connect turn; what happens through each radio is remembered per
controller (``PathMemory``) so the next choice can move it, keep it, or fail it over.

The share policy, priorities and pre-emption are each radio's ``SlotScheduler``'s: a visit
waits for a slot of the radio chosen for it, and an urgent one pre-empts background links on
that radio only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence

import structlog

from firmware_bridge.link.gatt_link import GattLink
from gateway.clock import Clock
from gateway.errors import RegistryError
from gateway.link.decision import Action
from gateway.link.paths import (
    HEARD_WITHIN_S,
    Constraints,
    PathChoice,
    PathMemory,
    PathReason,
    RadioView,
    Sighting,
    choose,
)
from gateway.link.radios.base import NoPath, Radio, RadioReport
from gateway.link.scheduler import Lease, Priority, SlotsClosed
from gateway.ops.health import RadioKind
from gateway.store.registry import Registry

log = structlog.get_logger(__name__)

# At start, first choices wait for every radio to be up and to have heard a round of adverts
# (a controller advertises about once a second; an ESP32 proxy batches adverts every 100 ms):
# a first choice made before the proxies connected would put their controllers on a worse
# radio, and there they would stay (paths.STAY_S). Bounded, as a proxy may be away.
START_LISTEN_S = 3.0
START_GRACE_S = 10.0
# A radio that closed its slots as a visit was about to wait on them (it went down between
# the choice and the wait): look again after this, so a flapping radio cannot make us spin.
RECHOOSE_S = 0.5
# A controller no radio could serve waits in a not_found backoff (up to 120 s). A choice costs
# no air time, so the set looks again this often and ends the wait as soon as a path opens: a
# pinned proxy back from a power cut, a radio that starts hearing it. habluetooth reports a
# proxy's advert only when its content changes, so a reconnected proxy repeating what it
# heard before its cut would otherwise wake nobody.
PATH_RECHECK_S = 1.0


class RadioSet:
    def __init__(self, radios: Sequence[Radio], registry: Registry, clock: Clock, *,
                 listen_s: float = START_LISTEN_S, grace_s: float = START_GRACE_S) -> None:
        if not radios or radios[0].kind is not RadioKind.ADAPTER:
            raise ValueError("the first radio is the hub's own adapter (pairing happens there)")
        self.radios: dict[str, Radio] = {r.name: r for r in radios}
        self.local = radios[0]
        self.registry = registry
        self.clock = clock
        self.memory: dict[str, PathMemory] = {}
        self.routes: dict[str, str] = {}  # address -> the radio of its lease now
        self.tried: dict[str, str] = {}  # address -> the radio of its last connect attempt
        self.last_choice: dict[str, PathChoice] = {}
        self.connecting: collections.Counter[str] = collections.Counter()
        self._update_locks: dict[str, asyncio.Lock] = {}
        self._listen_s, self._grace_s = listen_s, grace_s
        self._started_at: float | None = None
        self._listened = asyncio.Event()
        self._path_wanted = asyncio.Event()  # set by ``stranded``: watch_paths looks
        if len(self.radios) == 1:
            self._listened.set()  # one radio: nothing to compare

    # ---- the choice --------------------------------------------------------------------------

    def heard(self, address: str) -> dict[str, Sighting]:
        return {name: s for name, radio in self.radios.items()
                if (s := radio.heard(address)) is not None}

    def constraints(self, address: str) -> Constraints:
        record = self.registry.find(address)
        if record is None:
            return Constraints()
        return Constraints(pinned=record.radio, local_only=record.passkey)

    def choose(self, address: str, constraints: Constraints | None = None, *,
               remember: bool = True) -> PathChoice:
        """``remember``: keep it as the reason the next connect logs (a look that connects
        nothing does not)."""
        views = [RadioView(r.name, r.kind, r.up, r.scheduler.free, r.scheduler.max_links,
                           self.connecting[r.name]) for r in self.radios.values()]
        choice = choose(views, self.heard(address), self._memory(address),
                        constraints or self.constraints(address), self.clock.now())
        if remember:
            self.last_choice[address] = choice
        return choice

    def _memory(self, address: str) -> PathMemory:
        """Where the controller was served; read once from the registry after a restart, so
        a restart does not move it (the stay of paths.STAY_S counts from the real move)."""
        memory = self.memory.get(address)
        if memory is None:
            record = self.registry.find(address)
            memory = PathMemory()
            if record is not None and record.served_by is not None \
                    and record.served_since is not None:
                age_s = max(0.0, self.clock.time() - record.served_since)
                memory = PathMemory(record.served_by, self.clock.now() - age_s)
            self.memory[address] = memory
        return memory

    def _pick(self, address: str, *, remember: bool = True) -> Radio | NoPath:
        """The radio to wait on, or why there is none."""
        constraints = self.constraints(address)  # one registry read per choice
        choice = self.choose(address, constraints, remember=remember)
        if choice.radio is not None:
            return self.radios[choice.radio]
        if choice.reason is PathReason.WAIT_FOR_SLOT:
            # Wait in the queue of the radio it would be best served by (there an urgent
            # visit can pre-empt a background link); a pin waits for its own radio.
            name = constraints.pinned or max(choice.scores, key=lambda n: choice.scores[n])
            return self.radios[name]
        pinned = constraints.pinned
        if pinned is not None and pinned not in self.radios:
            return NoPath(f"{address} is pinned to radio {pinned!r}, which is not configured "
                          f"(radios: {', '.join(self.radios)}); pin it again with awgw pair "
                          f"{address} --radio NAME, or add that radio to the config")
        if len(self.radios) == 1:
            # The hub's one adapter: a controller still held by a link from an earlier run of
            # the daemon, or busy with the phone, does not advertise, and a direct connect
            # still reaches it (and releases an orphaned link), as it always has.
            return self.local
        return NoPath(f"{address}: {choice.reason.value} (no radio that may serve it hears "
                      f"it; it is retried as soon as one does)")

    def has_path(self, address: str) -> bool:
        """Whether a visit would now find a radio to connect through or wait on."""
        return not isinstance(self._pick(address, remember=False), NoPath)

    def stranded(self) -> None:
        """A controller found no path and now backs off: ``watch_paths`` looks for one."""
        self._path_wanted.set()

    async def watch_paths(self, waiting: Callable[[], Iterable[str]],
                          wake: Callable[[str], None]) -> None:
        """Forever: wake each controller ``waiting`` names (it found no path) once one
        opens. Idle, with no timer, from the round that finds none waiting to the next
        ``stranded``: a hub's wake from idle costs more CPU than a notification
        (bench/relay_latency.py)."""
        while True:
            await self._path_wanted.wait()
            await self.clock.sleep(PATH_RECHECK_S)
            stranded = list(waiting())
            if not stranded:
                self._path_wanted.clear()
            for address in stranded:
                if self.has_path(address):
                    wake(address)

    async def _listen(self) -> None:
        """Once, at start: until every radio is up and has listened START_LISTEN_S, or
        START_GRACE_S have passed."""
        if self._listened.is_set():
            return
        if self._listen_s <= 0 and self._grace_s <= 0:
            self._listened.set()
            return
        clock = self.clock
        if self._started_at is None:
            self._started_at = clock.now()
            up_at: float | None = None
            while clock.now() - self._started_at < self._grace_s:
                if all(r.up for r in self.radios.values()):
                    up_at = clock.now() if up_at is None else up_at
                    if clock.now() - up_at >= self._listen_s:
                        break
                else:
                    up_at = None
                await clock.sleep(RECHOOSE_S / 5)
            self._listened.set()
        await self._listened.wait()

    async def _release_orphans(self, address: str) -> None:
        """Nothing hears it: perhaps because one of the hub's adapters still holds a link an
        earlier run of the daemon made. Released, the controller advertises again."""
        for radio in self.radios.values():
            await radio.release_orphan(address)

    # ---- what a supervisor holds -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, address: str, priority: Priority, *, kept: bool
                   ) -> AsyncIterator[Lease]:
        await self._listen()
        while True:
            radio = self._pick(address)
            if isinstance(radio, NoPath):
                await self._release_orphans(address)
                raise radio
            lease = Lease(address, priority, kept, 0.0, radio=radio.name)
            try:
                await radio.scheduler.acquire(lease)
            except SlotsClosed:
                await self.clock.sleep(RECHOOSE_S)
                continue
            break
        self.routes[address] = radio.name
        try:
            yield lease
        finally:
            radio.scheduler.release(lease)
            if self.routes.get(address) == radio.name:
                del self.routes[address]

    @contextlib.asynccontextmanager
    async def connect_turn(self, lease: Lease | None = None) -> AsyncIterator[None]:
        radio = self.radios[lease.radio] if lease is not None and lease.radio else self.local
        async with radio.scheduler.connect_turn(lease):
            yield

    def promote(self, address: str) -> None:
        for radio in self.radios.values():
            radio.scheduler.promote(address)

    def demote(self, lease: Lease) -> None:
        self.radios[lease.radio or self.local.name].scheduler.demote(lease)

    @contextlib.asynccontextmanager
    async def update_turn(self, radio: str) -> AsyncIterator[None]:
        """One firmware update per radio at a time: an upload fills the radio's air time."""
        async with self._update_locks.setdefault(radio, asyncio.Lock()):
            yield

    @property
    def leases(self) -> list[Lease]:
        """Every slot held now, on every radio."""
        return [lease for r in self.radios.values() for lease in r.scheduler.leases]

    def radio_of(self, address: str) -> Radio:
        """The radio of the controller's lease now (the hub's adapter when it holds none)."""
        return self.radios[self.routes.get(address, self.local.name)]

    async def connect(self, address: str, timeout_s: float,
                      on_disconnect: Callable[[], None]) -> GattLink:
        radio = self.radio_of(address)
        return await self.through(radio, address, lambda: radio.connect(
            address, timeout_s, on_disconnect))

    async def through(self, radio: Radio, address: str,
                      connect: Callable[[], Awaitable[GattLink]]) -> GattLink:
        """Run ``connect`` through ``radio``, remembering how it went for the next choice."""
        name = radio.name
        before = self._memory(address)
        self.tried[address] = name
        self.connecting[name] += 1
        try:
            link = await connect()
        except Exception:
            self.memory[address] = before.failed(name, self.clock.now())
            raise
        finally:
            self.connecting[name] -= 1
        self.memory[address] = before.served(name, self.clock.now())
        if before.current != name:
            choice = self.last_choice.get(address)
            log.info("path_chosen", address=address, radio=name, previous=before.current,
                     reason=choice.reason.value if choice else None)
            try:
                self.registry.set_path(address, name, self.clock.time())
            except RegistryError as exc:
                # Only the memory of a restart is lost: this run still keeps the choice.
                log.warning("path_not_saved", address=address, radio=name, error=str(exc))
        return link

    async def reset(self, address: str, action: Action) -> Radio | None:
        """After a lost bond (REPAIR_BOND) or a stale GATT table (CLEAR_GATT_CACHE): the radio
        the controller's last connect went through forgets its bond, or the services it
        cached. None when it did so itself (a proxy: the ESP32 holds the bond, and
        bleak-esphome the services); else the hub adapter whose BlueZ device the caller
        removes and pairs again through, BlueZ's only reset of either."""
        radio = self.radios.get(self.tried.get(address, self.local.name), self.local)
        done = (await radio.refresh_services(address) if action is Action.CLEAR_GATT_CACHE
                else await radio.forget_bond(address))
        return None if done else radio

    async def unpair(self, address: str) -> None:
        """A person unpaired ``address``: every proxy forgets the bond its ESP32 may hold (it
        paired on its first connect), so a later pairing through it starts clean. The hub
        adapters' bonds are BlueZ's, which the caller removes."""
        for radio in self.radios.values():
            if radio.kind is RadioKind.PROXY:
                await radio.forget_bond(address)
        self.tried.pop(address, None)

    # ---- what the hub shows ------------------------------------------------------------------

    def serving(self, address: str) -> str | None:
        """The radio that last connected it (its link's, while it has one)."""
        return self.routes.get(address) or self._memory(address).current

    def reports(self, addresses: Sequence[str]) -> list[RadioReport]:
        out = []
        for radio in self.radios.values():
            heard = sum(1 for a in addresses if (s := radio.heard(a)) is not None
                        and s.age_s <= HEARD_WITHIN_S)
            out.append(RadioReport(radio.name, radio.kind, radio.up, radio.reason,
                                   len(radio.scheduler.leases), radio.scheduler.max_links,
                                   heard, dict(radio.detail())))
        return out

    def rssi_by_radio(self, address: str) -> Mapping[str, int]:
        return {name: s.rssi for name, s in self.heard(address).items()}

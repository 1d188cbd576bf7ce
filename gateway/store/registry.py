"""Paired controllers, in SQLite in the state directory: identity, bond, firmware, last seen,
link policy. Small and synchronous: a handful of rows, written on pairing and per visit."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from gateway.config import LinkPolicy, OtaPolicy
from gateway.errors import RegistryError, UnknownController

SCHEMA = """
CREATE TABLE IF NOT EXISTS controllers (
    address TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    serial TEXT,
    bonded INTEGER NOT NULL DEFAULT 0,
    firmware_version TEXT,
    policy TEXT,
    paired_at REAL NOT NULL,
    last_seen REAL,
    board TEXT,
    ota_policy TEXT,
    radio TEXT,
    passkey INTEGER NOT NULL DEFAULT 0,
    served_by TEXT,
    served_since REAL
);
"""
# Columns added after the first release: (name, declaration) for ALTER TABLE on older files.
MIGRATIONS = (("board", "TEXT"), ("ota_policy", "TEXT"), ("radio", "TEXT"),
              ("passkey", "INTEGER NOT NULL DEFAULT 0"), ("served_by", "TEXT"),
              ("served_since", "REAL"))
log = structlog.get_logger(__name__)
T = TypeVar("T")
# cloud-api.md 1: the board every release and controller has unless told otherwise.
DEFAULT_BOARD = "arduino_nano_33_ble"


@dataclass(frozen=True)
class ControllerRecord:
    address: str
    name: str
    serial: str | None
    bonded: bool
    firmware_version: str | None
    policy: LinkPolicy | None  # None: the configured default
    paired_at: float
    last_seen: float | None
    board: str = DEFAULT_BOARD
    ota_policy: OtaPolicy | None = None  # None: the configured [cloud] ota_policy
    radio: str | None = None  # pinned by a person (awgw pair --radio); None: chosen per connect
    # Bonded with a passkey: only the hub's own adapters can serve it (gateway/link/paths.py).
    passkey: bool = False
    # The radio its connects go through (chosen, not pinned), and since when (wall clock):
    # the path choice's memory, kept across restarts so a restart is not a change of radio.
    served_by: str | None = None
    served_since: float | None = None


def normalise_address(address: str) -> str:
    parts = address.strip().upper().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789ABCDEF" for c in p)
                                  for p in parts):
        raise UnknownController(f"{address!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
    return ":".join(parts)


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._reported: set[tuple[str, str]] = set()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.executescript(SCHEMA)
                have = {str(row[1]) for row in db.execute("PRAGMA table_info(controllers)")}
                for name, declaration in MIGRATIONS:
                    if name not in have:
                        db.execute(f"ALTER TABLE controllers ADD COLUMN {name} {declaration}")
        except (OSError, sqlite3.Error) as exc:
            raise RegistryError(f"cannot open registry {path}: {exc}") from exc

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=5)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open registry {self.path}: {exc}") from exc
        try:
            with db:
                yield db
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self.path}: {exc}") from exc
        finally:
            db.close()

    def add(self, address: str, *, name: str, bonded: bool, serial: str | None = None,
            firmware_version: str | None = None, policy: LinkPolicy | None = None,
            board: str | None = None, ota_policy: OtaPolicy | None = None,
            radio: str | None = None, passkey: bool = False) -> None:
        """Add or re-pair; a re-pair sets the pin and the passkey flag afresh (a pair without
        --radio unpins)."""
        with self._db() as db:
            db.execute(
                "INSERT INTO controllers (address, name, serial, bonded, firmware_version, "
                "policy, paired_at, last_seen, board, ota_policy, radio, passkey) VALUES (?, ?, "
                "?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(address) DO UPDATE SET "
                "name=excluded.name, "
                "bonded=excluded.bonded, serial=COALESCE(excluded.serial, serial), "
                "firmware_version=COALESCE(excluded.firmware_version, firmware_version), "
                "policy=COALESCE(excluded.policy, policy), board=COALESCE(excluded.board, "
                "board), ota_policy=COALESCE(excluded.ota_policy, ota_policy), "
                "radio=excluded.radio, passkey=excluded.passkey",
                (normalise_address(address), name, serial, int(bonded), firmware_version,
                 policy.value if policy else None, time.time(), time.time(),
                 board.lower() if board else None, ota_policy.value if ota_policy else None,
                 radio, int(passkey)))

    def remove(self, address: str) -> None:
        with self._db() as db:
            cursor = db.execute("DELETE FROM controllers WHERE address = ?",
                                (normalise_address(address),))
        if cursor.rowcount == 0:
            raise UnknownController(f"{address} is not a paired controller")

    def get(self, address: str) -> ControllerRecord:
        with self._db() as db:
            row = db.execute(f"SELECT {COLUMNS} FROM controllers WHERE address = ?",  # noqa: S608
                             (normalise_address(address),)).fetchone()
        if row is None:
            raise UnknownController(f"{address} is not a paired controller "
                                    f"(pair it first: awgw pair {address})")
        return self._checked(row)

    def find(self, address: str) -> ControllerRecord | None:
        try:
            return self.get(address)
        except UnknownController:
            return None

    def all(self) -> list[ControllerRecord]:
        with self._db() as db:
            # COLUMNS (formatted in) is this module's constant, never input.
            rows = db.execute(f"SELECT {COLUMNS} FROM controllers ORDER BY address"  # noqa: S608
                              ).fetchall()
        return [self._checked(r) for r in rows]

    def _checked(self, row: tuple[object, ...]) -> ControllerRecord:
        record, damaged = _record(row)
        for problem in damaged:
            key = (record.address, problem)
            if key not in self._reported:  # once per damaged value, not on every read
                self._reported.add(key)
                log.warning("registry_value_ignored", address=record.address, problem=problem,
                            path=str(self.path),
                            remedy=f"pair it again (awgw pair {record.address}) to write "
                                   f"the row afresh; until then the default is used")
        return record

    def seen(self, address: str, *, firmware_version: str | None = None,
             serial: str | None = None, at: float | None = None) -> None:
        with self._db() as db:
            db.execute("UPDATE controllers SET last_seen = ?, firmware_version = COALESCE(?, "
                       "firmware_version), serial = COALESCE(?, serial) WHERE address = ?",
                       (time.time() if at is None else at, firmware_version, serial,
                        normalise_address(address)))

    def set_path(self, address: str, radio: str, since: float) -> None:
        """The controller is served through ``radio`` from ``since`` (wall clock)."""
        with self._db() as db:
            db.execute("UPDATE controllers SET served_by = ?, served_since = ? WHERE address = ?",
                       (radio, since, normalise_address(address)))

    def set_policy(self, address: str, policy: LinkPolicy | None) -> None:
        self.get(address)
        with self._db() as db:
            db.execute("UPDATE controllers SET policy = ? WHERE address = ?",
                       (policy.value if policy else None, normalise_address(address)))



COLUMNS = ("address, name, serial, bonded, firmware_version, policy, paired_at, last_seen, "
           "board, ota_policy, radio, passkey, served_by, served_since")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    raise ValueError(f"{value!r} is not a number")


def _record(row: tuple[object, ...]) -> tuple[ControllerRecord, list[str]]:
    """The record, and what in the row was damaged (an edited or half-written file) and read
    as unset instead: a bad value in one optional column costs that setting, not the
    controller, and never the daemon."""
    (address, name, serial, bonded, firmware, policy, paired_at, last_seen, board, ota, radio,
     passkey, served_by, served_since) = row
    damaged: list[str] = []

    def optional(column: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except (ValueError, TypeError) as exc:
            damaged.append(f"{column}: {exc}")
            return None

    record = ControllerRecord(
        str(address), str(name), _text(serial), bool(bonded), _text(firmware),
        optional("policy", lambda: None if policy is None else LinkPolicy(str(policy))),
        optional("paired_at", lambda: _number(paired_at) or 0.0) or 0.0,
        optional("last_seen", lambda: _number(last_seen)),
        str(board) if board else DEFAULT_BOARD,
        optional("ota_policy", lambda: None if ota is None else OtaPolicy(str(ota))),
        _text(radio), bool(passkey), _text(served_by),
        optional("served_since", lambda: _number(served_since)))
    return record, damaged

"""The registry as a file on an SD card: a damaged value in an optional column costs that
setting (read as unset, said once), never the controller or the daemon."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.store.registry import Registry

ADDRESS = "C0:FF:EE:00:00:01"
OPTIONAL = ("policy", "ota_policy", "last_seen", "served_since", "paired_at")


def damage(path: Path, column: str, value: object) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(f"UPDATE controllers SET {column} = ?", (value,))  # noqa: S608 - test's own
    db.close()


def test_a_damaged_value_is_read_as_unset_and_said_once(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite3")
    registry.add(ADDRESS, name="AutoWatering", bonded=True)
    damage(registry.path, "policy", "bogus")
    with capture_logs() as logs:
        first, again = registry.get(ADDRESS), registry.all()[0]
    assert first.policy is None and again.policy is None and first.bonded
    said = [e for e in logs if e["event"] == "registry_value_ignored"]
    assert len(said) == 1 and "policy" in said[0]["problem"] and "awgw pair" in said[0]["remedy"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(OPTIONAL),
       value=st.one_of(st.none(), st.text(max_size=12), st.integers(-2**63, 2**63 - 1),
                       st.floats(allow_nan=False), st.binary(max_size=8)))
def test_any_value_in_an_optional_column_still_reads(tmp_path: Path, column: str,
                                                     value: object) -> None:
    # NOT NULL: sqlite refuses it (and stores a NaN as NULL, so NaN is left out above).
    assume(not (column == "paired_at" and value is None))
    registry = Registry(tmp_path / f"{column}.sqlite3")
    registry.add(ADDRESS, name="AutoWatering", bonded=True)
    damage(registry.path, column, value)
    record = registry.get(ADDRESS)
    assert record.address == ADDRESS
    registry.set_path(ADDRESS, "garden", 1.0)
    assert registry.all()[0].served_by == "garden"

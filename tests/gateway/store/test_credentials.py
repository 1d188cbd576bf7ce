"""The cloud identity on disk: a token rotated while a systemd credential holds the first one
survives a restart; a credential installed later wins again; and the CLI refuses to write the
identity as a user the daemon is not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli.cloud import check_owner
from gateway.errors import CloudLinkError
from gateway.store.credentials import CREDENTIAL_NAME, FileTokenStore


def test_a_token_rotated_under_a_credential_survives_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # hostile-edges L6: with the credential, a rotated token was never saved.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / CREDENTIAL_NAME).write_text("first\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    cloud = tmp_path / "cloud"
    store = FileTokenStore(cloud)
    assert store.load() == "first"
    store.save("rotated")
    assert store.load() == "rotated"
    assert FileTokenStore(cloud).load() == "rotated"  # the next start
    assert oct((cloud / "refresh_token").stat().st_mode & 0o777) == "0o600"
    (credentials / CREDENTIAL_NAME).write_text("installed later\n")
    assert FileTokenStore(cloud).load() == "installed later"


def test_an_empty_credential_leaves_the_linked_file_in_charge(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / CREDENTIAL_NAME).write_text("")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    store = FileTokenStore(tmp_path / "cloud")
    assert store.load() is None
    store.save("linked")
    assert store.load() == "linked" and not (tmp_path / "cloud" / "refresh_token.replaces")\
        .exists()


def test_the_cli_refuses_to_link_as_another_user_than_the_state_directorys(
        tmp_path: Path) -> None:
    # L6: `sudo awgw cloud link` left root-owned 0600 files the daemon could not read.
    state = tmp_path / "state"
    state.mkdir()
    check_owner(state)  # ours: fine
    os.chown(state, 65534, 65534)
    with pytest.raises(CloudLinkError, match="sudo -u"):
        check_owner(state)
    check_owner(tmp_path / "missing")  # a first link makes it

"""A proxy's key from the credential or the key file: whatever the file holds, a valid key or
a typed refusal with its remedy, never an exception of another kind."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import EsphomeProxySettings
from gateway.link.radios.base import RadioRefused
from gateway.link.radios.keys import CREDENTIAL_PREFIX, read_key

KEY = base64.b64encode(bytes(range(32))).decode()


def proxy(key_file: Path | None = None) -> EsphomeProxySettings:
    return EsphomeProxySettings(name="garden", host="127.0.0.1", key_file=key_file)


def test_the_credential_goes_before_the_key_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{CREDENTIAL_PREFIX}garden").write_text(KEY + "\n")
    other = base64.b64encode(bytes(32)).decode()
    (tmp_path / "file").write_text(other)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_key(proxy(tmp_path / "file")) == KEY
    (tmp_path / f"{CREDENTIAL_PREFIX}garden").write_text("")  # install.sh's empty placeholder
    assert read_key(proxy(tmp_path / "file")) == other


def test_no_key_anywhere_is_a_plaintext_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_key(proxy()) is None


def test_a_named_key_file_that_is_missing_is_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(RadioRefused, match="does not exist") as refused:
        read_key(proxy(tmp_path / "nope"))
    assert "encryption key" in refused.value.remedy


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_whatever_the_key_file_holds(tmp_path_factory: pytest.TempPathFactory,
                                     content: bytes) -> None:
    path = tmp_path_factory.mktemp("key") / "key"
    path.write_bytes(content)
    try:
        key = read_key(proxy(path))
    except RadioRefused as refused:
        remedy = refused.remedy
        key = None
    else:
        remedy = "none needed"
    assert remedy
    assert key is None or len(base64.b64decode(key, validate=True)) == 32

"""A proxy's Noise key: from the systemd credential awgw-esphome_<name>, else the file the
config names; never from the config. Checked here so a bad key is refused with its remedy
before a connection is tried."""

from __future__ import annotations

import base64
import binascii
import os

from gateway.config import EsphomeProxySettings
from gateway.link.radios.base import RadioRefused

# The unit loads a directory of keys under this ID; systemd names each file's credential
# <ID>_<file name> (systemd.exec, LoadCredential=).
CREDENTIAL_DIRECTORY = "awgw-esphome"
CREDENTIAL_PREFIX = CREDENTIAL_DIRECTORY + "_"
KEY_BYTES = 32  # ESPHome's api encryption key: 32 bytes, base64 (its YAML's `key:`)


def credential_name(proxy: EsphomeProxySettings) -> str:
    return CREDENTIAL_PREFIX + proxy.name


def read_key(proxy: EsphomeProxySettings) -> str | None:
    """The base64 key, or None for a plaintext proxy. Raises RadioRefused for a key file that
    is named but missing, unreadable or not a 32-byte base64 key."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = [(p, named) for p, named in (
        (os.path.join(directory, credential_name(proxy)) if directory else None, False),
        (str(proxy.key_file) if proxy.key_file else None, True)) if p]
    for path, named in candidates:
        try:
            with open(path, encoding="utf-8") as file:
                key = file.read(1024).strip()
        except FileNotFoundError:
            if named:
                raise RadioRefused(f"proxy {proxy.name}: key_file {path} does not exist",
                                   "put the proxy's api encryption key there, or remove "
                                   "key_file for a proxy without encryption") from None
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise RadioRefused(f"proxy {proxy.name}: cannot read its key from {path}: {exc}",
                               "make the file readable by the awgw user") from exc
        if key:
            return _checked(proxy, key, path)
    return None


def _checked(proxy: EsphomeProxySettings, key: str, path: str) -> str:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise RadioRefused(f"proxy {proxy.name}: {path} does not hold a {KEY_BYTES}-byte "
                           f"base64 key", "copy the `api: encryption: key:` value from the "
                           "proxy's ESPHome YAML, exactly")
    return key

"""The gateway's cloud identity on disk: its id (a UUID made once, cloud-api.md 11 P1) and the
refresh token of the linked account (2.5: mode 0600 in the state directory, or a systemd
credential, which then wins and is read-only)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

from gateway.errors import CloudLinkError

# systemd's LoadCredential=awgw-refresh-token:... puts it here for the service.
CREDENTIAL_NAME = "awgw-refresh-token"
# A Cognito refresh token is ~1.8 KiB of base64; a file far larger is not one.
MAX_TOKEN_BYTES = 16 * 1024


def gateway_id(cloud_dir: Path) -> str:
    path = cloud_dir / "gateway_id"
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise CloudLinkError(f"{path} does not hold a gateway id: {exc}") from exc
    cloud_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = str(uuid.uuid4())
    _write_private(path, made)
    return made


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 from the start (never briefly world-readable)."""
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    temp.replace(path)


class FileTokenStore:
    """``cloud_client.RefreshTokenStore`` on a 0600 file; a systemd credential overrides it.

    A pool that rotates refresh tokens hands out a new one on refresh. A credential is
    read-only, so the rotated token goes to the state file, marked with the digest of the
    credential it replaces: it is used while that credential is unchanged, and a credential a
    person installs later wins again (hostile-edges L6: a rotated token was lost at the next
    start, and the gateway had to be linked again)."""

    def __init__(self, cloud_dir: Path) -> None:
        self.path = cloud_dir / "refresh_token"
        self.marker = cloud_dir / "refresh_token.replaces"
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        self.credential = Path(directory) / CREDENTIAL_NAME if directory else None

    def _credential(self) -> str | None:
        # install.sh creates the credential file empty (LoadCredential= fails on a missing
        # file): empty means "not given", and `awgw cloud link`'s own file is used.
        if self.credential is None:
            return None
        token = _read_token(self.credential)
        return token or None

    def _source(self) -> Path:
        credential = self._credential()
        if credential is None:
            return self.path
        try:
            replaced = self.marker.read_text().strip()
        except FileNotFoundError:
            replaced = ""
        except OSError as exc:
            raise CloudLinkError(f"cannot read {self.marker}: {exc.strerror}") from exc
        if replaced == _digest(credential) and self.path.exists():
            return self.path  # rotated since this credential was installed
        assert self.credential is not None
        return self.credential

    def load(self) -> str | None:
        return _read_token(self._source()) or None

    def save(self, refresh_token: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        credential = self._credential()
        _write_private(self.path, refresh_token)
        if credential is not None:
            _write_private(self.marker, _digest(credential))
        else:
            with contextlib.suppress(FileNotFoundError):
                self.marker.unlink()

    def clear(self) -> None:
        for path in (self.path, self.marker):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def stamp(self) -> float | None:
        """When the token last changed (the daemon notices a new link by it)."""
        try:
            return self._source().stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None


def _read_token(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise CloudLinkError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_TOKEN_BYTES:
        raise CloudLinkError(f"{path} is {len(data)} bytes: not a refresh token")
    return data.decode(errors="replace").strip()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

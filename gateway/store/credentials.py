"""The gateway's cloud identity on disk: its id (a UUID made once, cloud-api.md 11 P1) and the
refresh token of the linked account (2.5: mode 0600 in the state directory, or a systemd
credential, which then wins and is read-only)."""

from __future__ import annotations

import contextlib
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
    """``cloud_client.RefreshTokenStore`` on a 0600 file; a systemd credential overrides it."""

    def __init__(self, cloud_dir: Path) -> None:
        self.path = cloud_dir / "refresh_token"
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        self.credential = Path(directory) / CREDENTIAL_NAME if directory else None

    def _source(self) -> Path:
        # install.sh creates the credential file empty (LoadCredential= fails on a missing
        # file): empty means "not given", and `awgw cloud link`'s own file is used.
        if self.credential is not None and self.credential.exists() \
                and self.credential.stat().st_size > 0:
            return self.credential
        return self.path

    def load(self) -> str | None:
        source = self._source()
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CloudLinkError(f"cannot read {source}: {exc.strerror}") from exc
        if len(data) > MAX_TOKEN_BYTES:
            raise CloudLinkError(f"{source} is {len(data)} bytes: not a refresh token")
        token = data.decode(errors="replace").strip()
        return token or None

    def save(self, refresh_token: str) -> None:
        if self._source() is self.credential:
            return  # a systemd credential is read-only; rotation lives until the next start
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.path, refresh_token)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def stamp(self) -> float | None:
        """When the token last changed (the daemon notices a new link by it)."""
        try:
            return self._source().stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

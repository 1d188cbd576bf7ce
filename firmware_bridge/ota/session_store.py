"""The upload session on disk, so a gateway restart resumes instead of starting over.

One small JSON file per device: which image (file sha) is going up and the last offset the
device acknowledged. Writes are atomic (write, fsync, rename) and rate-limited: losing the last
half second only costs a resync, which the device's own offset makes exact anyway.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

# How often the acknowledged offset reaches the disk at most (an SD card on a Pi wears).
SAVE_EVERY_S = 0.5


@dataclass
class UploadSession:
    device: str
    file_sha256: str
    image_hash: str
    total: int
    acked: int
    updated_at: float


class SessionStore(Protocol):
    def load(self, device: str) -> UploadSession | None: ...
    def save(self, session: UploadSession, *, force: bool = False) -> None: ...
    def clear(self, device: str) -> None: ...


class FileSessionStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._last_save = 0.0

    def _path(self, device: str) -> Path:
        safe = "".join(c if c.isalnum() else "_" for c in device)
        return self.directory / f"{safe}.json"

    def load(self, device: str) -> UploadSession | None:
        try:
            raw = json.loads(self._path(device).read_text())
            return UploadSession(**raw)
        except (OSError, ValueError, TypeError):
            return None  # absent or unreadable: there is nothing to resume

    def save(self, session: UploadSession, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < SAVE_EVERY_S:
            return
        self._last_save = now
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(session.device)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(asdict(session), handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)

    def clear(self, device: str) -> None:
        self._path(device).unlink(missing_ok=True)

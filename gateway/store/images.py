"""Image files the daemon itself reads (the staged directory, the firmware cache), read the way
a file someone else may have put there must be."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.errors import CommandFailed
from gateway.ops.models import MAX_IMAGE_BYTES


def read_image(path: Path) -> bytes:
    """No link followed, nothing but a regular file (a FIFO would block, a device never end),
    at most MAX_IMAGE_BYTES; CommandFailed otherwise. Blocking: call it in a thread or from
    the CLI."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CommandFailed(f"{path} is not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise CommandFailed(f"{path} is {info.st_size} bytes; an image is at most "
                                f"{MAX_IMAGE_BYTES} (the controller's upload slot)")
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if not data or len(data) > MAX_IMAGE_BYTES:
        raise CommandFailed(f"{path} is empty or grew while it was read")
    return data

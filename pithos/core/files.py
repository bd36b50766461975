"""Small file-system steps shared by every layer that makes files durable."""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make the entries of directory `path` durable (a file created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

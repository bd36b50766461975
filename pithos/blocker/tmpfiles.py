"""Temporary files whose writer can be told alive or dead without a timer.

A writer holds an exclusive flock(2) on its temporary file from its creation until the file is
renamed into place or removed; the kernel drops the lock when the writer dies, however it dies
(kill -9 included), and keeps it while the writer lives, however slowly it goes (a paused
process holds its locks).  So a temporary file that nobody holds locked is a dead writer's,
and a collector may remove it: it takes the lock itself (without waiting) and, holding it,
removes the name.

One race is left, between a writer's create and its lock: a collector may find the new file
unlocked and remove it.  So a writer checks, once it holds the lock, that its name still
names its file, and otherwise starts again under a new name (`create_locked`).  From then on
it holds the lock until its name has left the directory (renamed into place, or removed), so
no collector can take the lock while the name is the writer's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable

# A collector removing a fresh file between a writer's create and lock is rare; more than a
# few in a row means something else removes our files.
_CREATE_TRIES = 8


def create_locked(make_path: Callable[[], str], mode: int, flags: int = 0) -> tuple[int, str]:
    """A new file, opened for writing (`flags` added) at a path `make_path()` gives, locked
    for as long as the fd is open; returns (fd, path).  Close the fd only after the path has
    been renamed away or unlinked."""
    for _ in range(_CREATE_TRIES):
        path = make_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | flags, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                return fd, path
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)  # a collector took it for a dead writer's between create and lock
    raise OSError(errno.EAGAIN, f"temporary files in {os.path.dirname(path)} keep vanishing")


def _same_file(fd: int, path: str) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def dead(directory: str, remove: bool) -> list[str]:
    """The names of the files in `directory` that no live writer holds (sorted); with
    `remove`, each is removed while its lock is held, so no writer can be using it.  Other
    entries (live writers' files, directories) are left alone."""
    found = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone (renamed into place meanwhile), or not a file we can open
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a live writer holds it
                raise
            # Holding the lock: the file is no live writer's.  Its name must still be that
            # file (a writer that finished renamed it away before letting the lock go).
            if not _same_file(fd, path):
                continue
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            found.append(name)
        finally:
            os.close(fd)
    return found

"""A full filesystem under the catalog: disk-full errors become NoSpace, and a reserve file
keeps room for the writes that get out of it.

Deleting an object frees no block by itself: it writes catalog rows (a deletion marker, a
purge of old versions) that let the garbage collector reclaim the blocks afterwards.  On a
full filesystem those rows need room too: SQLite appends them to its WAL, which grows until a
checkpoint lets it start over (about 4 MiB), and the checkpoint may grow the database file.
So an SQLite catalog in a data directory keeps `<database>-reserve`, a file of a few MiB
allocated beside the database while there is room.  A write the way out of a full disk
needs (deleting objects, containers and old versions; the login before them: methods marked
`recovery_write`) that finds the filesystem full gives the reserve up and runs once more;
every other write (an upload's commit above all) fails with NoSpace, so a full disk answers
uploads with 507 and never hands the reserve to them.  Opening the catalog is such a step too:
a reader of a WAL database must create its shared-memory file when no other connection has it
open.  The reserve comes back, on a later write, once the filesystem has several times its
size free again (after `pithos gc`).

PostgreSQL's disk-full error (SQLSTATE 53100) becomes NoSpace as well; there is no reserve
(the database server owns its disk).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from pithos.core.errors import NoSpace

# SQLite's result codes for a full disk: SQLITE_FULL (a database or WAL write), and
# SQLITE_IOERR_SHMSIZE (the shared-memory file beside a WAL database could not be extended:
# ENOSPC when a reader creates it on a full filesystem).
SQLITE_FULL = 13
SQLITE_IOERR_SHMSIZE = 4874
# PostgreSQL's disk_full.
PG_DISK_FULL = "53100"

# The reserve of a catalog in a data directory: a WAL's growth to its checkpoint and then some.
RESERVE_BYTES = 8 << 20
# The reserve is made again only when this many times its size is free (not at once after it
# was given up: the disk is still full then).
REFILL_FACTOR = 4
# How often a writer looks whether the reserve is there.
CHECK_INTERVAL_S = 1.0


def is_disk_full(exc: BaseException) -> bool:
    """Whether a database error (SQLAlchemy's, or the driver's it wraps) says the disk is
    full."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code in (SQLITE_FULL, SQLITE_IOERR_SHMSIZE)
    return getattr(orig, "sqlstate", None) == PG_DISK_FULL


@contextlib.contextmanager
def disk_full_as_no_space() -> Iterator[None]:
    """Raise a disk-full database error from the block as NoSpace (a 507 at the API)."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise no_space(exc) from exc


def no_space(exc: BaseException) -> NoSpace:
    """The NoSpace for a database error that says the disk is full."""
    orig = getattr(exc, "orig", None) or exc
    reason = (str(orig).strip().splitlines() or ["disk full"])[0]
    return NoSpace(f"the catalog is out of space: {reason}")


class SpaceReserve:
    """`size_bytes` allocated in the file at `path` while the filesystem has room."""

    def __init__(self, path: str, size_bytes: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self._next_check = 0.0

    def ensure(self) -> None:
        """Allocate the reserve if it is missing and REFILL_FACTOR times its size is free.
        Cheap: looks at most once every CHECK_INTERVAL_S; never raises (a reserve that
        cannot be made now is tried again later)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL_S
        try:
            if os.stat(self.path).st_size >= self.size_bytes:
                return
        except FileNotFoundError:
            pass
        with contextlib.suppress(OSError):
            st = os.statvfs(os.path.dirname(self.path) or ".")
            if st.f_bavail * st.f_frsize < REFILL_FACTOR * self.size_bytes:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # Allocated, not just sized: a sparse file would hold nothing in reserve.
                # Part of it stays if this fails midway; the next check completes it.
                os.posix_fallocate(fd, 0, self.size_bytes)
            finally:
                os.close(fd)

    def release(self) -> None:
        """Give the reserve's space back to the filesystem (repeat-safe)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _HasReserve(Protocol):
    _reserve: SpaceReserve | None


P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=_HasReserve)


def recovery_write(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
    """Mark a catalog write that getting out of a full disk needs: if it fails with NoSpace,
    the catalog's reserve (if it has one) is given up and the write runs once more.  The
    write must be one transaction, so that a failed run changed nothing (SQLite rolls a
    transaction back when it hits a full disk)."""

    def write(self: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return release_and_retry(self._reserve, lambda: method(self, *args, **kwargs))

    functools.update_wrapper(write, method)
    return write


def release_and_retry(reserve: SpaceReserve | None, step: Callable[[], R]) -> R:
    """`step()`; if it fails with NoSpace and there is a reserve, the reserve is given up
    (even if another process gave it up first: its room may be left) and `step()` runs once
    more."""
    try:
        return step()
    except NoSpace:
        if reserve is None:
            raise
        reserve.release()
    return step()

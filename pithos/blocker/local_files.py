"""LocalBlockStore's file-per-block pieces: a block streamed into a file as it arrives
(`_FileWriter`), a block file opened for verified part reads (`_LocalParts`), and the file
steps they share with the store (pithos.blocker.local)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pithos.blocker import pagecache, tmpfiles
from pithos.blocker.store import PartReader, PartsWriter
from pithos.core.errors import BackendError, InvalidArgument, NoSpace
from pithos.core.files import fsync_dir
from pithos.core.wal_sync import GroupSync


class _Store(Protocol):
    """What a `_FileWriter` uses of its LocalBlockStore."""

    _tmp: str
    _writing: set[int]
    _direct_writes: bool

    @property
    def _names(self) -> Iterator[int]: ...
    def _path(self, hash_: bytes) -> str: ...
    def _check_room(self, size: int) -> None: ...
    def _set_outboard(self, fd: int, outboard: bytes) -> None: ...
    def _quarantine_one(self, hash_: bytes, seen: bytes | None, size: int = 0) -> bool: ...
    def _refresh_packed(self, hash_: bytes, size: int) -> bool: ...


_TRANSIENT_ERRNOS = {errno.EINTR, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT}
_OUTBOARD_XATTR = "user.b3"
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP}


def _backend_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: {exc.strerror}")
    return BackendError(f"{what}: {exc}", transient=exc.errno in _TRANSIENT_ERRNOS)


def _libc_function(name: str) -> Any:
    """A function of the C library (with errno), or None where it is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


def _libc_syncfs() -> Callable[[int], int]:
    fn: Callable[[int], int] | None = _libc_function("syncfs")
    if fn is None:
        raise InvalidArgument("syncfs is not available here")
    return fn


class SharedSyncfs:
    """syncfs(2) of the filesystem of `fd`, shared by the callers that want one at the same
    time (pithos.core.wal_sync.GroupSync: a call returns once a syncfs that began after it
    was made has completed): the uploads of a sync client, each a map page or a small object
    to make durable, asked for hundreds a second; each syncfs waits for whatever else is
    dirty on the filesystem, and a second one at once mostly redoes the first's walk.  A
    failed syncfs is raised to its caller, and covers nobody: the others try again."""

    def __init__(self, fd: int, syncfs: Callable[[int], int]) -> None:
        self._fd = fd
        self._syncfs = syncfs
        self._group = GroupSync(self._sync)

    def _sync(self) -> None:
        if self._syncfs(self._fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def sync(self) -> None:
        self._group.sync()


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    fn = _libc_function("sync_file_range")
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn  # type: ignore[no-any-return]


# Start writing back what a streamed block has received so far, without waiting: the sync at
# its commit then waits for the last piece only (measured: 4 MiB in 512 KiB pieces, fdatasync
# 2.3 ms -> 1.0 ms).  Optional: where it is missing, the commit's fdatasync does it all.
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _libc_sync_file_range()
# With this many blocks streaming at once in the process, pieces in page-aligned buffers are
# written with O_DIRECT (_FileWriter.write).  Under that load the CPU is what limits uploads,
# and a direct write skips the copy into the page cache and the writeback and drop that
# follow (server CPU per 4 MiB PUT at 16 clients about -8%).  With one or two, the disk's
# latency would be on the upload's path (each direct write waits for the device): PUT 4 MiB
# at one client was 13% slower direct.
_DIRECT_WRITERS = 3


def _refresh(path: str) -> int | None:
    """Refresh the age of the block file at `path` (its mtime); its size, None if absent.

    utime sets the time of the file that `path` named when it was looked up; a conditional
    delete may have moved that file to the trash since, and read its time before this change
    (it then unlinks it).  So the block counts as present only if its name is still there
    after the change: then either the delete had not moved the file yet (it will read the new
    time and put the file back), or the block is back in place (put back, or stored anew)."""
    try:
        os.utime(path)
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


class _FileWriter(PartsWriter):
    """A blob written into a temporary file as it arrives, renamed to its hash at commit."""

    blocking_io = True

    def __init__(self, store: _Store) -> None:
        self._store = store
        self._fd: int | None = None
        self._tmp = ""
        self._written = 0
        self._direct = False
        self._outboard = b""

    def _open(self) -> int:
        if self._fd is None:
            store = self._store
            # Writable by its owner until commit, which sets the outboard (an xattr in the
            # user namespace needs write permission) and then makes the file read-only.
            self._fd, self._tmp = tmpfiles.create_locked(
                lambda: f"{store._tmp}/stream.{os.getpid()}.{next(store._names)}", 0o644)
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        try:
            fd = self._open()
            view = memoryview(data)
            direct = self._store._direct_writes \
                and len(self._store._writing) >= _DIRECT_WRITERS \
                and pagecache.direct_writable(view, self._written)
            if direct != self._direct:
                if not pagecache.set_direct(fd, direct):
                    self._store._direct_writes = direct = False
                self._direct = direct
            self._store._check_room(view.nbytes)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            self.abort()
            raise _backend_error(exc, "cannot store block") from exc
        if not self._direct and _sync_file_range is not None:
            _sync_file_range(fd, self._written, len(data), _SYNC_FILE_RANGE_WRITE)
        self._written += len(data)

    def commit(self, hash_: bytes) -> None:
        store = self._store
        path = store._path(hash_)
        try:
            size = _refresh(path)
            if size is None and store._refresh_packed(hash_, self._written):
                self.abort()  # packed (pithos.blocker.packs): refreshed, bytes kept
                return
            if size == self._written:  # present: keep its bytes, refresh its age
                self.abort()
            else:
                if size is not None:  # damaged (see BlockStore.put_many): replaced
                    store._quarantine_one(hash_, None, self._written)
                fd = self._open()
                store._set_outboard(fd, self._outboard)
                os.fchmod(fd, 0o444)
                os.fdatasync(fd)
                pagecache.drop(fd, self._written)
                # Renamed while still locked: the temporary name is ours until it is gone.
                os.rename(self._tmp, path)
                os.close(fd)
                self._fd = None
            # As in put_many: the rename (ours, or another writer's not yet synced) must be
            # durable before we return.
            fsync_dir(os.path.dirname(path))
        except OSError as exc:
            self.abort()
            raise _backend_error(exc, "cannot store block") from exc
        store._writing.discard(id(self))

    def keep_outboard(self, outboard: bytes) -> None:
        self._outboard = outboard

    def abort(self) -> None:
        self._store._writing.discard(id(self))
        if self._fd is not None:
            with contextlib.suppress(OSError):  # before the close lets the lock go
                os.unlink(self._tmp)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _LocalParts(PartReader):
    """A block file opened for ranged reads (see `LocalBlockStore.open_parts`)."""

    def __init__(self, reads: pagecache.ReadPolicy, fd: int, direct_fd: int, size: int,
                 outboard: bytes) -> None:
        self._reads = reads
        self._fd = fd
        self._direct_fd = direct_fd
        self.size = size
        self.outboard = outboard

    def read(self, offset: int, length: int) -> bytes:
        try:
            if self._direct_fd >= 0:
                data = self._reads.read_direct_range(self._direct_fd, offset, length)
                if data is not None:
                    return data
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise _backend_error(exc, "cannot read block") from exc

    def close(self) -> None:
        for fd in (self._fd, self._direct_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._direct_fd = -1


def _reads_as(fd: int, expected: bytes) -> bool:
    """Whether the file of `fd` holds exactly `expected`."""
    view = memoryview(expected)
    offset = 0
    while offset < len(view):
        chunk = os.pread(fd, min(len(view) - offset, 1 << 22), offset)
        if not chunk or chunk != view[offset:offset + len(chunk)]:
            return False
        offset += len(chunk)
    return os.pread(fd, 1, offset) == b""


def _untrash(trash: str, path: str) -> None:
    """Put a block moved to the trash back in place: a link, so that a copy stored anew in
    the meantime is kept (it has the same bytes), made durable before the trash name goes."""
    try:
        os.link(trash, path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        return  # already put back (or removed) by another process that opened the store
    fsync_dir(os.path.dirname(path))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(trash)

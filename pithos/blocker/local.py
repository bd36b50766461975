"""LocalBlockStore: one file per block in a local directory, durable on return.

Layout under the store's directory:

    00/ .. ff/      256 fan-out directories; a block lives at `ab/abcdef...` (its hex hash)
    tmp/            blocks being written; a name appears under its hash only when complete
    trash/          blocks a conditional delete has moved out of place and not yet decided on
    quarantine/     damaged blocks moved aside (`quarantine_many`), one file per hex hash

A put writes a temporary file, fdatasyncs it, renames it into place and, once for the whole
batch, fsyncs every directory that gained an entry: the rename is then durable too.  Files of a
batch are written and synced on a thread pool, so their syncs overlap and the journal commits
them together (group commit without a packfile).

Why files and not packfiles: measured on this project's machines (see docs/design.md), for 4 MiB
blocks a file per block writes as fast as appending to a pack, and it keeps every process that
opens the directory (API workers, the NBD server, the CLI, the garbage collector) coherent with
no shared index, and makes deleting a block one unlink.

A conditional delete (`delete_if_put_before`, the garbage collector's) must not lose a block that
a writer re-puts or touches while it runs, and POSIX has no "unlink if older than".  So it moves
the file out of place first (one atomic rename into trash/), then reads the time of the file
it moved: a refresh that came before the rename changed that file's time, so the delete sees it
and puts the file back (a link, unless a writer has stored the block anew meanwhile); otherwise
it unlinks it.  A refresh that comes after the rename finds the name gone: a put writes the
block anew, a touch reports it absent.  One case is left: a refresh (utime) looks the path up
before the rename and changes the time after the delete read it.  So a refresh checks, after its
utime, that the name is still there; if not, it counts the block absent (see `_refresh`).  A
store that is opened puts back whatever it finds in trash/: a delete killed before deciding
leaves its block there, and the next sweep decides again.  A reader that misses a block puts it
back too if it finds it in trash/ (a block refreshed and then named by a committed version may
be there for the moment between the rename and the link back).

Every temporary file is held under an flock(2) by its writer until it is renamed into place
(pithos.blocker.tmpfiles): one nobody holds is a dead writer's, which `leftovers` lists (for
fsck) and `remove_leftovers` removes (for the garbage collector), without guessing from its
age.

A damaged block is quarantined in two renames: first to an undecided name
(`quarantine/<hex>.<pid>.<n>`, which a store being opened puts back, should this process die
there), then, once the file moved is known to be the one found damaged (same inode as the file
read, whose bytes were those the reader saw), to `quarantine/<hex>`.  A file stored afresh in
between (another reader quarantined the damaged one first, and a writer stored the block
again) is put back instead.  Readers missing a block do not look there (they do in trash/):
they would put back the damaged block being moved.

A block streamed in (`open_writer`) keeps its BLAKE3 tree outboard (pithos.core.treehash) in
the extended attribute `user.b3` of its file: 64 bytes for a 4 MiB block, which ext4 and XFS
keep inside the inode, so it costs no extra block or seek.  `open_parts` hands it out with the
file, for reads verified part by part.  Where the filesystem has no user xattrs, blocks are
stored without it and read verified whole, as blocks put whole (`put_many`) always are.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from pithos.blocker import pagecache, tmpfiles
from pithos.blocker.store import PartReader, PartsStore, PartsWriter
from pithos.core.errors import BackendError, InvalidArgument, NoSpace, NotFound
from pithos.core.files import fsync_dir
from pithos.core.offload import Offload

_T = TypeVar("_T")
_R = TypeVar("_R")
_HEX_LEN = 64
_TRANSIENT_ERRNOS = {errno.EINTR, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT}
_HEX_DIGITS = frozenset("0123456789abcdef")
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
# A put of at most this many blocks runs in one pool task when syncing by syncfs (put_many).
_ONE_TASK_ITEMS = 4
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


class LocalBlockStore(PartsStore):
    """Blocks as files under `path` (created if absent)."""

    def __init__(self, path: str | os.PathLike[str], io_threads: int = 16,
                 offload: Offload | None = None, sync: str = "syncfs",
                 keep_free_bytes: int = 0) -> None:
        """`sync` chooses how a batch is made durable: "file" (fdatasync each new file, fsync
        each directory it was renamed into) or "syncfs" (one syncfs(2) of the whole filesystem
        per batch: fewer syncs for batches of small blocks, but it also flushes whatever else
        is dirty on that filesystem).  A write that would leave less than `keep_free_bytes`
        free on the filesystem fails with NoSpace (room kept for a catalog beside the
        blocks: deletes on a full disk, pithos/catalog/space.py).  `offload` says where
        blocking file work runs (pithos.core.offload; default: `io_threads` threads of the
        store's own)."""
        if sync not in ("file", "syncfs"):
            raise InvalidArgument(f"unknown sync mode {sync!r}")
        self.path = os.fspath(path)
        self._syncfs = _libc_syncfs() if sync == "syncfs" else None
        self._tmp = os.path.join(self.path, "tmp")
        self._trash = os.path.join(self.path, "trash")
        self._quarantine = os.path.join(self.path, "quarantine")
        self._names = itertools.count()
        self._reads = pagecache.ReadPolicy()
        # Streamed writers not yet committed or aborted (ids; set.add/discard are atomic), and
        # whether this filesystem takes O_DIRECT (see _FileWriter.write).
        self._writing: set[int] = set()
        self._direct_writes = True
        self._outboards = True  # until the filesystem refuses user xattrs
        self.keep_free_bytes = keep_free_bytes
        try:
            created = not os.path.isdir(self._tmp)
            trash_created = not os.path.isdir(self._trash)  # (stores made before it existed)
            os.makedirs(self._tmp, exist_ok=True)
            os.makedirs(self._trash, exist_ok=True)
            if created:  # (in a store made before it, at its first quarantine: see there)
                os.makedirs(self._quarantine, exist_ok=True)
            for i in range(256):
                os.makedirs(os.path.join(self.path, f"{i:02x}"), exist_ok=True)
            if created or trash_created:
                # The directories must survive a crash before any block is named in them.
                fsync_dir(self.path)
            if created:
                fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            raise _backend_error(exc, f"cannot open block store at {self.path}") from exc
        self._own_offload = offload is None
        self._offload = offload or Offload.threads(io_threads, name="blockio")
        self._pool = self._offload.pool
        self._root_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._restore_trash()
        except OSError as exc:
            self.close()
            raise _backend_error(exc, f"cannot open block store at {self.path}") from exc

    # -- paths -------------------------------------------------------------------------------

    def _path(self, hash_: bytes) -> str:
        hex_ = hash_.hex()
        return f"{self.path}/{hex_[:2]}/{hex_}"

    def _restore_trash(self) -> None:
        """Put back every block found in the trash.  A conditional delete that was killed
        between moving a block there and deciding leaves it: the block may have been refreshed
        just before, and the next sweep decides again.  (A delete running in another process
        meanwhile loses nothing either: at worst a block it removes stays, as garbage.)  So is
        every block a quarantine left undecided (`quarantine/<hex>.<pid>.<n>`): at worst a
        damaged block is back, for the next read to find."""
        for directory in (self._trash, self._quarantine):
            try:
                with os.scandir(directory) as entries:
                    names = [entry.name for entry in entries]
            except FileNotFoundError:
                continue  # no quarantine yet
            for name in names:
                hex_ = name[:_HEX_LEN]
                if name[_HEX_LEN:_HEX_LEN + 1] == "." and _HEX_DIGITS.issuperset(hex_) \
                        and len(hex_) == _HEX_LEN:
                    _untrash(f"{directory}/{name}", self._path(bytes.fromhex(hex_)))

    def trash_files(self) -> list[str]:
        """Blocks a conditional delete has moved to the trash and not yet decided on (in
        progress, or left by a delete that was killed, until the store is opened again)."""
        return sorted(os.listdir(self._trash))

    def stale_tmp_files(self) -> list[str]:
        """Every temporary file, of live writers and of dead ones; never named as blocks."""
        return sorted(os.listdir(self._tmp))

    def leftovers(self) -> list[str]:
        return [f"tmp/{name}" for name in tmpfiles.dead(self._tmp, remove=False)]

    def remove_leftovers(self) -> list[str]:
        return [f"tmp/{name}" for name in tmpfiles.dead(self._tmp, remove=True)]

    def _map(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        # Threads pay off only when there is more than one file to wait on, except under an
        # event loop: there even one blocking call must leave its thread.
        if len(items) < 2 and not self._offload.cooperative:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def _call(self, fn: Callable[[], None]) -> None:
        """`fn()`, on the pool when under an event loop (see `_map`)."""
        self._offload.run(fn)

    # -- BlockStore --------------------------------------------------------------------------

    def _put_one(self, item: tuple[bytes, bytes], outboard: bytes = b"") -> tuple[str, bool]:
        """Store one block (with its outboard, if given); returns its directory, which must
        be synced before the put returns (a block found present may have been renamed in by
        a writer that has not synced yet), and whether this put wrote it."""
        hash_, data = item
        path = self._path(hash_)
        view = memoryview(data)
        size = _refresh(path)
        if size == view.nbytes:  # present: refresh its age, keep its bytes
            return os.path.dirname(path), False
        if size is not None:  # damaged (see BlockStore.put_many): replaced below
            self._quarantine_one(hash_, None, view.nbytes)
        self._check_room(len(data))
        # An outboard is an xattr in the user namespace, which needs write permission: such
        # a file is made read-only once it is set (as a streamed block's).
        keep = bool(outboard) and self._outboards
        fd, tmp = tmpfiles.create_locked(
            lambda: f"{self._tmp}/{hash_.hex()}.{os.getpid()}.{next(self._names)}",
            0o644 if keep else 0o444)
        try:
            while view:
                view = view[os.write(fd, view):]
            if keep:
                self._set_outboard(fd, outboard)
                os.fchmod(fd, 0o444)
            if self._syncfs is None:
                os.fdatasync(fd)
                pagecache.drop(fd, len(data))
            # (Still locked: the temporary name is ours until it is gone.)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return os.path.dirname(path), True

    def _check_room(self, size: int) -> None:
        """ENOSPC if writing `size` more bytes would leave less than keep_free_bytes free."""
        if self.keep_free_bytes:
            st = os.fstatvfs(self._root_fd)
            if st.f_bavail * st.f_frsize < self.keep_free_bytes + size:
                raise OSError(errno.ENOSPC, "no space left for blocks (the last "
                              f"{self.keep_free_bytes} bytes free are kept for the catalog)")

    def _set_outboard(self, fd: int, outboard: bytes) -> None:
        """The outboard (if any), as an xattr; a filesystem that refuses it loses only the
        aid."""
        if not outboard or not self._outboards:
            return
        try:
            os.setxattr(fd, _OUTBOARD_XATTR, outboard)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._outboards = False
            # Otherwise (no room for it, a size limit): this block is read verified whole.

    def _put_then_syncfs(self, items: Sequence[tuple[bytes, bytes]],
                         outboards: Mapping[bytes, bytes]) -> None:
        self._syncfs_then_drop([item for item in items
                                if self._put_one(item, outboards.get(item[0], b""))[1]])

    def _syncfs_then_drop(self, written: Sequence[tuple[bytes, bytes]]) -> None:
        """Make the batch durable; then the large blocks it wrote leave the page cache (see
        pagecache; a block found present keeps its pages: it may be one that is read)."""
        self._syncfs_or_raise()
        for hash_, data in written:
            pagecache.drop_path(self._path(hash_), len(data))

    def _syncfs_or_raise(self) -> None:
        assert self._syncfs is not None
        if self._syncfs(self._root_fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def put_many(self, items: Sequence[tuple[bytes, bytes]],
                 outboards: Mapping[bytes, bytes] | None = None) -> None:
        if not items:
            return
        kept: Mapping[bytes, bytes] = outboards or {}
        try:
            if self._syncfs is not None and self._offload.cooperative and \
                    len(items) <= _ONE_TASK_ITEMS:
                # Under an event loop a few files (an upload's map page, a small object and
                # its page) are written and synced in one pool task: each hand-off is a
                # thread wake-up there and back, and without per-file syncs the writes are
                # only copies.
                self._pool.submit(self._put_then_syncfs, items, kept).result()
                return
            done = self._map(lambda item: self._put_one(item, kept.get(item[0], b"")), items)
            if self._syncfs is not None:
                # One writeback of the filesystem makes every file and rename durable.
                written = [item for item, (_, wrote) in zip(items, done, strict=True) if wrote]
                self._call(lambda: self._syncfs_then_drop(written))
            else:
                # Now sync the directories to commit the renames.
                self._map(fsync_dir, sorted({directory for directory, _ in done}))
        except OSError as exc:
            raise _backend_error(exc, "cannot store block") from exc

    def open_writer(self) -> PartsWriter:
        writer = _FileWriter(self)
        self._writing.add(id(writer))
        return writer

    def _get_one(self, hash_: bytes) -> bytes | None:
        try:
            fd = os.open(self._path(hash_), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return self._reads.read(fd, hash_)
        finally:
            os.close(fd)

    def _untrash_for_reader(self, hashes: Sequence[bytes]) -> bool:
        """Put back any of these blocks found in the trash; whether one was.  A reader that
        misses a block calls it: a conditional delete may hold it there for a moment (and put
        it back, if it was refreshed), or may have been killed there.  Putting a block back is
        always safe; at worst a block being removed stays, as garbage for the next sweep."""
        prefixes = {h.hex() + "." for h in hashes}
        try:
            names = os.listdir(self._trash)
        except FileNotFoundError:
            return False
        found = False
        for name in names:
            prefix = name[:_HEX_LEN + 1]
            if prefix in prefixes:
                _untrash(f"{self._trash}/{name}", self._path(bytes.fromhex(prefix[:-1])))
                found = True
        return found

    def get_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        try:
            found = self._map(self._get_one, hashes)
            absent = [h for h, data in zip(hashes, found, strict=True) if data is None]
            if absent and self._untrash_for_reader(absent):
                found = [data if data is not None else self._get_one(h)
                         for h, data in zip(hashes, found, strict=True)]
        except OSError as exc:
            raise _backend_error(exc, "cannot read block") from exc
        absent = [h for h, data in zip(hashes, found, strict=True) if data is None]
        if absent:
            raise NotFound(f"{len(absent)} block(s) not found", absent)
        return [data for data in found if data is not None]

    def _open_block(self, hash_: bytes) -> int:
        """An fd of the block's file, put back from the trash if a delete holds it there."""
        path = self._path(hash_)
        try:
            try:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if not self._untrash_for_reader([hash_]):
                    raise NotFound("block not found", [hash_]) from None
            try:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound("block not found", [hash_]) from None
        except OSError as exc:
            raise _backend_error(exc, "cannot read block") from exc

    def read(self, hash_: bytes, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        fd = self._open_block(hash_)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def open_parts(self, hash_: bytes) -> PartReader | None:
        if not self._outboards:
            return None
        fd = self._open_block(hash_)
        try:
            try:
                outboard = os.getxattr(fd, _OUTBOARD_XATTR)
            except OSError as exc:
                if exc.errno in _NO_XATTRS:
                    self._outboards = False
                elif exc.errno != errno.ENODATA:
                    raise
                os.close(fd)
                return None
            size = os.fstat(fd).st_size
            # As a whole read would (pagecache.ReadPolicy): a cold block is read past the
            # cache, on a second fd, so the first stays usable for reads O_DIRECT refuses.
            direct_fd = -1
            if self._reads.goes_direct(fd, size, hash_):
                with contextlib.suppress(OSError):
                    direct_fd = os.open(self._path(hash_),
                                        os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError as exc:
            os.close(fd)
            raise _backend_error(exc, "cannot read block") from exc
        return _LocalParts(self._reads, fd, direct_fd, size, outboard)

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        unique = list(dict.fromkeys(hashes))
        present = self._map(lambda h: os.path.exists(self._path(h)), unique)
        return [h for h, here in zip(unique, present, strict=True) if not here]

    def touch_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        unique = list(dict.fromkeys(hashes))

        try:
            sizes = self._map(lambda h: _refresh(self._path(h)), unique)
        except OSError as exc:
            raise _backend_error(exc, "cannot touch block") from exc
        return [h for h, size in zip(unique, sizes, strict=True) if size is None]

    def _delete_one(self, hash_: bytes) -> str | None:
        path = self._path(hash_)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return None
        return os.path.dirname(path)

    def delete_many(self, hashes: Sequence[bytes]) -> int:
        try:
            dirs = [d for d in self._map(self._delete_one, list(dict.fromkeys(hashes)))
                    if d is not None]
            self._map(fsync_dir, sorted(set(dirs)))
        except OSError as exc:
            raise _backend_error(exc, "cannot delete block") from exc
        return len(dirs)

    def _delete_if_put_before(self, hash_: bytes, cutoff: float) -> bool:
        """Remove one block if its file's mtime is before `cutoff`; whether it was removed."""
        path = self._path(hash_)
        try:
            if os.stat(path).st_mtime >= cutoff:
                return False  # young: no need to move it
        except FileNotFoundError:
            return False
        trash = f"{self._trash}/{hash_.hex()}.{os.getpid()}.{next(self._names)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return False  # removed meanwhile
        try:
            # The time of the file moved: a refresh before the rename is in it.
            young = os.stat(trash).st_mtime >= cutoff
            if not young:
                os.unlink(trash)
                return True
        except FileNotFoundError:
            return False  # put back by a store opened meanwhile (see _restore_trash)
        except BaseException:
            with contextlib.suppress(OSError):
                _untrash(trash, path)
            raise
        _untrash(trash, path)
        return False

    def delete_if_put_before(self, hashes: Sequence[bytes], cutoff: float) -> list[bytes]:
        unique = list(dict.fromkeys(hashes))
        try:
            removed = self._map(lambda h: self._delete_if_put_before(h, cutoff), unique)
            gone = [h for h, r in zip(unique, removed, strict=True) if r]
            if gone:
                # Durable: the names left the fan-out directories, then the trash.
                dirs = {os.path.dirname(self._path(h)) for h in gone} | {self._trash}
                self._map(fsync_dir, sorted(dirs))
        except OSError as exc:
            raise _backend_error(exc, "cannot delete block") from exc
        return gone

    def _quarantine_one(self, hash_: bytes, seen: bytes | None, size: int = 0) -> bool:
        """Move the block's file into quarantine/ if it is the damaged one: its bytes are
        `seen`, or (`seen` None) its size is not `size`; whether it was moved."""
        path = self._path(hash_)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            held = os.fstat(fd)
            if seen is None:
                if held.st_size == size:
                    return False
            elif held.st_size != len(seen) or not _reads_as(fd, seen):
                return False  # stored afresh since it was read
            # Undecided under a name of its own, which readers do not put back (as they do
            # the trash's): a reader would put back the damaged block we are moving.
            self._make_quarantine()
            pending = f"{self._quarantine}/{hash_.hex()}.{os.getpid()}.{next(self._names)}"
            try:
                os.rename(path, pending)
            except FileNotFoundError:
                return False
            try:
                moved = os.stat(pending)
                if (moved.st_dev, moved.st_ino) != (held.st_dev, held.st_ino):
                    _untrash(pending, path)  # a copy stored since our read: not ours to move
                    return False
                os.rename(pending, f"{self._quarantine}/{hash_.hex()}")
            except FileNotFoundError:
                return False  # put back by a store opened meanwhile: a read finds it again
        finally:
            os.close(fd)
        return True

    def _make_quarantine(self) -> None:
        """quarantine/, durably, in a store made before it existed (made when needed rather
        than when the store is opened: opening a store on a full disk creates nothing)."""
        if not os.path.isdir(self._quarantine):
            os.makedirs(self._quarantine, exist_ok=True)
            fsync_dir(self.path)

    def quarantine_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        unique = list({h: (h, seen) for h, seen in items}.values())
        try:
            moved = self._map(lambda item: self._quarantine_one(*item), unique)
            gone = [h for (h, _), m in zip(unique, moved, strict=True) if m]
            if gone:
                dirs = {os.path.dirname(self._path(h)) for h in gone}
                self._map(fsync_dir, sorted(dirs | {self._quarantine}))
        except OSError as exc:
            raise _backend_error(exc, "cannot quarantine block") from exc
        return gone

    def quarantined(self, hashes: Sequence[bytes] | None = None) -> list[bytes]:
        if hashes is None:
            try:
                names = os.listdir(self._quarantine)
            except FileNotFoundError:
                return []
            return sorted(bytes.fromhex(n) for n in names
                          if len(n) == _HEX_LEN and _HEX_DIGITS.issuperset(n))
        return [h for h in dict.fromkeys(hashes)
                if os.path.exists(f"{self._quarantine}/{h.hex()}")]

    def iterate(self, start_after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        after = "" if start_after is None else start_after.hex()
        for i in range(256):
            prefix = f"{i:02x}"
            if prefix < after[:2]:
                continue
            names = sorted(n for n in os.listdir(f"{self.path}/{prefix}")
                           if len(n) == _HEX_LEN and n > after)
            for name in names:
                try:
                    size = os.stat(f"{self.path}/{prefix}/{name}").st_size
                except FileNotFoundError:
                    continue  # deleted while we scanned
                try:
                    yield bytes.fromhex(name), size
                except ValueError:
                    continue  # not a block file

    def sizes(self, hashes: Sequence[bytes]) -> list[int | None]:
        def one(h: bytes) -> int | None:
            try:
                return os.stat(self._path(h)).st_size
            except FileNotFoundError:
                return None

        return self._map(one, hashes)

    def age_s(self, hashes: Sequence[bytes]) -> list[float | None]:
        now = time.time()

        def one(h: bytes) -> float | None:
            try:
                return max(0.0, now - os.stat(self._path(h)).st_mtime)
            except FileNotFoundError:
                return None

        return self._map(one, hashes)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._root_fd)
        if self._own_offload:
            self._offload.close()


class _FileWriter(PartsWriter):
    """A blob written into a temporary file as it arrives, renamed to its hash at commit."""

    blocking_io = True

    def __init__(self, store: LocalBlockStore) -> None:
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

"""LocalBlockStore: blocks in a local directory, durable on return; a file per block, and
small blocks packed.

Layout under the store's directory:

    00/ .. ff/      256 fan-out directories; a block lives at `ab/abcdef...` (its hex hash)
    tmp/            blocks being written; a name appears under its hash only when complete
    trash/          blocks a conditional delete has moved out of place and not yet decided on
    quarantine/     damaged blocks moved aside (`quarantine_many`), one file per hex hash
    packs/          blocks put whole of at most `pack_max` bytes (64 KiB: CDC chunks, small
                    objects, map pages), appended to pack files and named by an index that
                    every process shares (pithos.blocker.packs, which says how each guarantee
                    below holds there).  A block is looked for as a file first, then in the
                    index: blocks stored as files before packs existed stay files.  The
                    store's side of it: pithos.blocker.local_packed.

What follows is about blocks as files.

A put writes a temporary file, fdatasyncs it, renames it into place and, once for the whole
batch, fsyncs every directory that gained an entry: the rename is then durable too.  Files of a
batch are written and synced on a thread pool, so their syncs overlap and the journal commits
them together (group commit without a packfile).

Why files for large blocks: measured on this project's machines (see docs/design.md), for 4 MiB
blocks a file per block writes as fast as appending to a pack, needs no index and no compaction,
and makes deleting a block one unlink.  For small blocks a file each costs 100-300 us (write,
rename, a share of the sync) where an append costs ~10: those are packed.

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
import errno
import heapq
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from pithos.blocker import pagecache, tmpfiles
from pithos.blocker.local_files import (
    _NO_XATTRS,
    _OUTBOARD_XATTR,
    SharedSyncfs,
    _backend_error,
    _FileWriter,
    _libc_syncfs,
    _LocalParts,
    _reads_as,
    _refresh,
    _untrash,
)
from pithos.blocker.local_packed import _LOOKUPS_PER_TASK, _MAP_TASKS, PackedMixin
from pithos.blocker.packs import PACK_ROLL_BYTES, Location, Packs
from pithos.blocker.store import PartReader, PartsStore, PartsWriter
from pithos.core.errors import InvalidArgument, NotFound
from pithos.core.files import fsync_dir
from pithos.core.offload import Offload

_T = TypeVar("_T")
_R = TypeVar("_R")
_HEX_LEN = 64
_HEX_DIGITS = frozenset("0123456789abcdef")
# Blocks up to this size are packed (pithos.blocker.packs): every CDC chunk (4-64 KiB), small
# objects and map pages (see benchmarks/README.md, "The packed layout for small blocks").
PACK_MAX = 64 * 1024
# ... when a put has at least this many of them: a packed batch pays two syncs (the pack's
# and the index's commit) where a file per block shares one syncfs, so a put of a few blocks
# (a small object, its map page) stays files (measured: PUT 4 KiB cost 15% more server CPU
# packed; benchmarks/README.md).
PACK_MIN_BATCH = 5


# A put of at most this many blocks runs in one pool task when syncing by syncfs (put_many).
_ONE_TASK_ITEMS = 4


class LocalBlockStore(PackedMixin, PartsStore):
    """Blocks as files under `path` (created if absent)."""

    def __init__(self, path: str | os.PathLike[str], io_threads: int = 16,
                 offload: Offload | None = None, sync: str = "syncfs",
                 keep_free_bytes: int = 0, pack_max: int = PACK_MAX,
                 pack_min_batch: int = PACK_MIN_BATCH,
                 pack_roll_bytes: int = PACK_ROLL_BYTES) -> None:
        """`sync` chooses how a batch is made durable: "file" (fdatasync each new file, fsync
        each directory it was renamed into) or "syncfs" (one syncfs(2) of the whole filesystem
        per batch: fewer syncs for batches of small blocks, but it also flushes whatever else
        is dirty on that filesystem).  A write that would leave less than `keep_free_bytes`
        free on the filesystem fails with NoSpace (room kept for a catalog beside the
        blocks: deletes on a full disk, pithos/catalog/space.py).  `offload` says where
        blocking file work runs (pithos.core.offload; default: `io_threads` threads of the
        store's own).  Blocks put whole of at most `pack_max` bytes, without an outboard,
        at least `pack_min_batch` of them in one put, are packed (`pack_max` 0: none;
        blocks packed before are read whatever it says), in packs of about
        `pack_roll_bytes` at most."""
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
        self.pack_max = pack_max
        self.pack_min_batch = pack_min_batch
        self._pack_roll_bytes = pack_roll_bytes
        self._packs: Packs | None = None  # opened at the first packed put or read
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
        self._shared_syncfs = SharedSyncfs(self._root_fd, self._syncfs) \
            if self._syncfs is not None else None
        try:
            self._restore_trash()
        except OSError as exc:
            self.close()
            raise _backend_error(exc, f"cannot open block store at {self.path}") from exc

    # -- paths -------------------------------------------------------------------------------

    def _path(self, hash_: bytes) -> str:
        hex_ = hash_.hex()
        return f"{self.path}/{hex_[:2]}/{hex_}"

    def locate(self, hash_: bytes) -> Location | None:
        """Where the block's bytes are on disk (its file, or its record in a pack), for
        tools that inspect or damage them; None if absent."""
        try:
            return Location(self._path(hash_), 0, os.stat(self._path(hash_)).st_size)
        except FileNotFoundError:
            packs = self._packs_ro()
            return packs.locate(hash_) if packs is not None else None

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

    def _map(self, fn: Callable[[_T], _R], items: Sequence[_T], lookups: bool = False
             ) -> list[_R]:
        """[fn(item) for item in items], on the pool.  `lookups`: each call only looks a
        file up (a stat, a utime), not a read, write or sync whose latency a task per file
        overlaps: past _MAP_TASKS files they go in that many tasks."""
        # Threads pay off only when there is more than one file to wait on, except under an
        # event loop: there even one blocking call must leave its thread.
        if not items:
            return []
        if len(items) < 2 and not self._offload.cooperative:
            return [fn(item) for item in items]
        if not lookups:
            return list(self._pool.map(fn, items))
        step = max(_LOOKUPS_PER_TASK, -(-len(items) // _MAP_TASKS))
        if len(items) <= step:
            return self._pool.submit(lambda: [fn(item) for item in items]).result()
        parts = self._pool.map(lambda part: [fn(item) for item in part],
                               [items[i:i + step] for i in range(0, len(items), step)])
        return [result for part in parts for result in part]

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
        if size is None and view.nbytes <= self.pack_max and \
                self._refresh_packed(hash_, view.nbytes):
            return os.path.dirname(path), False  # packed by an earlier put: refreshed
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
        assert self._shared_syncfs is not None
        self._shared_syncfs.sync()

    def put_many(self, items: Sequence[tuple[bytes, bytes]],
                 outboards: Mapping[bytes, bytes] | None = None) -> None:
        if not items:
            return
        kept: Mapping[bytes, bytes] = outboards or {}
        try:
            if self.pack_max:
                # A block with an outboard keeps a file of its own, for reads by parts.
                packed = [item for item in items if item[0] not in kept
                          and len(memoryview(item[1])) <= self.pack_max]
                if packed and len(packed) >= self.pack_min_batch:
                    self._offload.run(self._put_packed, packed)
                    if len(packed) == len(items):
                        return
                    items = [item for item in items if item[0] in kept
                             or len(memoryview(item[1])) > self.pack_max]
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
            return self._packed_get(hash_)
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
            packs = self._packs_ro()
            if packs is not None and len(hashes) > 1:
                # Packed blocks in one look-up of the index (a single block is looked for
                # in one task, file first: see _get_one).
                packed: dict[bytes, bytes | None] = {**self._offload.run(packs.get, hashes)}
                rest = [h for h in dict.fromkeys(hashes) if h not in packed]
                packed.update(zip(rest, self._map(self._get_one, rest), strict=True))
                found = [packed[h] for h in hashes]
            else:
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
        try:
            fd = os.open(self._path(hash_), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            packs = self._packs_ro()
            try:
                data = self._offload.run(packs.read, hash_, offset, length) \
                    if packs is not None else None
            except OSError as exc:
                raise _backend_error(exc, "cannot read block") from exc
            if data is not None:
                return data
            fd = self._open_block(hash_)  # (put back from the trash, or NotFound)
        except OSError as exc:
            raise _backend_error(exc, "cannot read block") from exc
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def open_parts(self, hash_: bytes) -> PartReader | None:
        if not self._outboards:
            return None
        try:
            fd = self._open_block(hash_)
        except NotFound:
            if self._packed_rows([hash_]):
                return None  # packed: no outboard, read whole
            raise
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
        # The index first, in one look-up: a batch of packed blocks (a CDC upload's) would
        # otherwise cost a file look-up on the pool per block.  Rows kept are answered here;
        # the index's look-up and the few files left go in one pool task.
        unique = list(dict.fromkeys(hashes))
        packs = self._packs_ro()
        kept = packs.kept(unique) if packs is not None and unique else {}
        asked = [h for h in unique if h not in kept] if kept else unique
        if not asked:
            return []
        try:
            rest, absent = self._offload.run(self._missing_here, packs, asked)
        except OSError as exc:
            raise _backend_error(exc, "cannot look blocks up") from exc
        present = self._map(lambda h: os.path.exists(self._path(h)), rest, lookups=True)
        absent.update(h for h, here in zip(rest, present, strict=True) if not here)
        return [h for h in asked if h in absent]

    def touch_many(self, hashes: Sequence[bytes], fresh_since: float | None = None
                   ) -> list[bytes]:
        unique = list(dict.fromkeys(hashes))
        return [h for h, size in zip(unique, self.touch_sizes(unique, fresh_since),
                                     strict=True)
                if size is None]

    def touch_sizes(self, hashes: Sequence[bytes], fresh_since: float | None = None
                    ) -> list[int | None]:
        unique = list(dict.fromkeys(hashes))
        try:
            packs = self._packs_ro()
            # One update of the index that answers which are packed and their lengths (no
            # look-up first); the others are looked for as files (each refreshed: a file's
            # age is its mtime, and a stat costs about what the refresh does).
            found: dict[bytes, int | None] = {}
            if packs is not None and unique:
                # Rows kept and fresh need neither a write nor a read of the index: answered
                # here, without a pool hand-off (a hashmap upload names the chunks it sent a
                # moment before, through the same worker as a rule).
                if fresh_since is not None:
                    found.update((h, row[2]) for h, row in packs.kept(unique, fresh_since).items())
                asked = [h for h in unique if h not in found] if found else unique
                if asked:
                    found.update(self._offload.run(self._touch_here, packs, asked,
                                                   fresh_since))
            rest = [h for h in unique if h not in found]
            refreshed = self._map(lambda h: _refresh(self._path(h)), rest, lookups=True)
            found.update(zip(rest, refreshed, strict=True))
        except OSError as exc:
            raise _backend_error(exc, "cannot touch block") from exc
        return [found[h] for h in hashes]

    def _delete_one(self, hash_: bytes) -> str | None:
        path = self._path(hash_)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return None
        return os.path.dirname(path)

    def delete_many(self, hashes: Sequence[bytes]) -> int:
        try:
            unique = list(dict.fromkeys(hashes))
            dirs = self._map(self._delete_one, unique)
            self._map(fsync_dir, sorted({d for d in dirs if d is not None}))
            packs = self._packs_ro()
            packed = set(self._offload.run(packs.delete, unique)) if packs else set()
        except OSError as exc:
            raise _backend_error(exc, "cannot delete block") from exc
        return sum(1 for h, d in zip(unique, dirs, strict=True) if d or h in packed)

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
            files = [h for h, r in zip(unique, removed, strict=True) if r]
            if files:
                # Durable: the names left the fan-out directories, then the trash.
                dirs = {os.path.dirname(self._path(h)) for h in files} | {self._trash}
                self._map(fsync_dir, sorted(dirs))
            # Packed blocks: one transaction, ordered by SQLite against any put or touch.
            packs = self._packs_ro()
            packed = set(self._offload.run(packs.delete, unique, cutoff)) if packs else set()
        except OSError as exc:
            raise _backend_error(exc, "cannot delete block") from exc
        gone = set(files) | packed
        return [h for h in unique if h in gone]

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
            packs = self._packs_ro()
            if packs is not None:  # (a packed record is moved aside durably, one by one)
                gone += [h for h, seen in unique if h not in gone
                         and self._offload.run(packs.quarantine, h, seen)]
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
        packs = self._packs_ro()
        if packs is None:
            yield from self._iterate_files(start_after)
            return
        last = None  # a block both packed and a file is listed once
        for hash_, size in heapq.merge(self._iterate_files(start_after),
                                       packs.iterate(start_after)):
            if hash_ != last:
                yield hash_, size
            last = hash_

    def _iterate_files(self, start_after: bytes | None) -> Iterator[tuple[bytes, int]]:
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

        rows = self._packed_rows(list(dict.fromkeys(hashes)))  # (first: see `missing`)
        rest = [h for h in dict.fromkeys(hashes) if h not in rows]
        found: dict[bytes, int | None] = {h: row[2] for h, row in rows.items()}
        found.update(zip(rest, self._map(one, rest, lookups=True), strict=True))
        return [found[h] for h in hashes]

    def age_s(self, hashes: Sequence[bytes]) -> list[float | None]:
        now = time.time()

        def one(h: bytes) -> float | None:
            try:
                return max(0.0, now - os.stat(self._path(h)).st_mtime)
            except FileNotFoundError:
                return None

        rows = self._packed_rows(list(dict.fromkeys(hashes)))  # (first: see `missing`)
        rest = [h for h in dict.fromkeys(hashes) if h not in rows]
        found: dict[bytes, float | None] = {h: max(0.0, now - row[3])
                                            for h, row in rows.items()}
        found.update(zip(rest, self._map(one, rest, lookups=True), strict=True))
        return [found[h] for h in hashes]

    def close(self) -> None:
        if self._packs is not None:
            self._packs.close()
        with contextlib.suppress(OSError):
            os.close(self._root_fd)
        if self._own_offload:
            self._offload.close()

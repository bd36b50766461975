"""Small blocks appended to pack files, with one index every process shares.

LocalBlockStore's packed layout (docs/design.md, "Local layout"): a block at or below the
store's `pack_max` is a record in a pack rather than a file of its own.  A file per block
costs a write, a rename and its share of a sync (100-300 us for 16 KiB); an append costs a
copy, and a batch one data sync and one index commit however many blocks it holds.

    packs/<16 hex>.pack     append-only records: MAGIC, hash (32 bytes), length (4), data
    packs/index.sqlite      SQLite (WAL): hash -> pack, offset, length, stamp

- A process appends to a pack of its own (`_Active`), which it holds under an exclusive
  flock(2) from its creation until no batch of the process writes to it any more (a new pack
  is begun past PACK_ROLL_BYTES).  A pack nobody holds is sealed: nothing is appended to it
  again, and only then may compaction take it.
- A batch of DIRECT_MIN_BYTES or more is written with O_DIRECT (`direct_io`): at an offset
  rounded up to 4 KiB and padded to it, dead bytes no row points at.
- Durable on return: a batch's records are written, the pack fdatasynced, and only then are
  the index rows committed, and the WAL synced before the call returns.  Not by SQLite at the
  commit (synchronous=FULL), which syncs with the index's write lock held, so that every
  other batch of every process waited for it: the commit is made with synchronous=NORMAL and
  the WAL fdatasynced after it, outside the lock, one sync serving every commit made before
  it started (`pithos.core.wal_sync`, the catalog's group commit).  A writer killed
  at any point leaves at worst bytes no row points at (a torn tail), never a row pointing at
  bytes not on disk.
- Writers queue for the index on a flock(2) of the packs directory (`WriterLock`, every
  process's write transactions), woken as the holder lets go, rather than in SQLite's busy
  handler, which sleeps up to 100 ms between tries; the WAL is checkpointed by a thread of
  each process (`WalCheckpoints`), outside that lock and off the writers' requests, and by a
  writer itself only past a hard bound.
- The age of a block is its row's stamp: a put of a present block, and a touch, set it to
  now; a conditional delete removes the rows whose stamp is before the cutoff.  Each is one
  transaction, so SQLite's write lock orders a delete against a concurrent put or touch of
  the same block (the rename dance the file layout needs is not needed here).
- Compaction (`compact`, run by `pithos gc` and `pithos store compact`) copies the live
  records of a sealed pack with enough dead bytes into the compactor's own pack, syncs it,
  moves the rows that still point at the old places, and unlinks the old pack.  A reader that
  looked a block up before the move and finds its pack gone looks again (`_read_record`).
- A damaged record is quarantined as a file in quarantine/, as a damaged block file is: its
  bytes are copied there while the index's write lock is held, and its row is deleted in the
  same transaction, only if the record still reads as the damaged bytes seen.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pithos.blocker import direct_io, tmpfiles
from pithos.blocker.pack_rows import KeptRows
from pithos.core.files import fsync_dir
from pithos.core.locks import WriterLock, native_lock
from pithos.core.wal_sync import CHECKPOINT_BYTES, WalCheckpoints, WalSync

MAGIC = b"PKB1"
HEADER = struct.Struct(">4s32sI")
# A writer begins a new pack past this size: compaction copies a pack whole, so a pack is
# kept to what one pass copies in seconds.
PACK_ROLL_BYTES = 128 << 20
# Compaction copies and moves the rows of at most this many bytes of records at a time.
_COMPACT_BATCH_BYTES = 32 << 20
# A look-up of many hashes is cut into statements of at most this many parameters.
_IN_CHUNK = 500
# The index's page size, as it is created (see _db).
_PAGE_SIZE = 1024
# A block whose pack vanished under a reader (compacted) is looked up again this many times.
_RELOOKS = 8
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    stamp REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_pack ON blocks (pack, offset);
"""


@contextlib.contextmanager
def _sql_errors() -> Iterator[None]:
    """The index's failures as the OSErrors the store reports (a full disk is ENOSPC)."""
    try:
        yield
    except sqlite3.Error as exc:
        text = str(exc).lower()
        code = errno.ENOSPC if "full" in text else \
            errno.EAGAIN if "locked" in text or "busy" in text else errno.EIO
        what = "out of space" if code == errno.ENOSPC else "failed"
        raise OSError(code, f"block index: {what} ({exc})") from exc


@dataclass(frozen=True)
class Location:
    """Where a packed block's bytes are: `length` bytes at `offset` of the file `path`."""

    path: str
    offset: int
    length: int


class _Active:
    """A pack this process appends to, held under flock while it may still be written."""

    def __init__(self, fd: int, pack_id: int, direct_fd: int | None) -> None:
        self.fd = fd
        self.direct_fd = direct_fd  # (O_DIRECT, for large batches; None if refused)
        self.id = pack_id
        self.end = 0
        self.users = 0
        self.sealed = False

    def close(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
        os.close(self.fd)  # (last: it holds the lock)


# Buffers per pwritev(2) (the kernel's IOV_MAX is 1024).
_IOV_MAX = 1024
# A batch of at least this many bytes is written past the page cache (direct_io), aligned:
# up to 4 KiB of padding after it, a share small enough at this size.
DIRECT_MIN_BYTES = 1 << 20


def _pwritev_all(fd: int, parts: Sequence[bytes | memoryview], at: int) -> int:
    """Write `parts` back to back at `at`, whatever each call writes; returns the end."""
    views = list(parts)  # (bytes, or memoryviews of bytes: their length is their size)
    first = 0
    while first < len(views):
        written = os.pwritev(fd, views[first:], at)
        at += written
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:  # a short write: the rest of that part next
            views[first] = memoryview(views[first])[written:]
    return at


class Packs:
    """The packed blocks of the store rooted at `root` (packs/ created if absent)."""

    def __init__(self, root: str, quarantine_dir: str, tmp_dir: str,
                 roll_bytes: int = PACK_ROLL_BYTES) -> None:
        self.dir = os.path.join(root, "packs")
        self.roll_bytes = roll_bytes
        self._quarantine = quarantine_dir
        self._tmp = tmp_dir
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, exist_ok=True)
            fsync_dir(root)
        self._db_path = os.path.join(self.dir, "index.sqlite")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        # Native locks (pithos/core/locks.py): a server's pool threads take them, and
        # neither is held across a yield (only list and file-system calls inside).
        self._conns_lock = native_lock()
        self._append_lock = native_lock()
        # Look-ups: the rows this process has seen, the others through one connection
        # (pithos/blocker/pack_rows.py).
        self._kept = KeptRows(os.path.join(self.dir, "index.stamp"))
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = native_lock()
        self._writing: sqlite3.Connection | None = None  # (see _write)
        self._active: _Active | None = None
        self._pid = os.getpid()
        self._names = iter(range(1 << 62))
        # (No executor: the store's callers are plain threads, a pool's under a server.)
        self._wal_sync = WalSync(self._db_path + "-wal")
        # Every write transaction of every process under it (a flock of the packs directory):
        # writers queue in the kernel rather than sleep in SQLite's busy handler.
        self._writer = WriterLock(self.dir)
        self._checkpoints = WalCheckpoints(self._db_path)
        self._mode_set = False
        self._direct_refused = False  # (see append)
        self._db()  # (sets the index's mode, under the writer lock: before _write holds it)
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- the index ---------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared across threads, nor
        carried across a fork: a child opens its own and appends to packs of its own)."""
        if self._pid != os.getpid():
            self._forked()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
            with self._conns_lock:
                self._conns.append(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        with _sql_errors():
            db = sqlite3.connect(self._db_path, timeout=120, isolation_level=None,
                                 check_same_thread=False)
            try:
                if not self._mode_set:
                    # Once, as the packs open (the mode is the database file's), and under
                    # the writer lock: set on every new connection, one setting it while
                    # another did (of these packs, or of another object on the same
                    # directory: LocalBlockStore._packs_rw may open two) failed at once with
                    # "database is locked", busy timeout or not.  Pages of 1 KiB, not 4: rows
                    # are keyed by random hashes, so a batch of a few hundred dirties as many
                    # pages, each copied whole into the WAL and again at the checkpoint
                    # (4 KiB for a 60-byte row).  Takes effect only as the index is created
                    # (before WAL mode): an existing one keeps its page size.
                    with self._writer:
                        db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
                        db.execute("PRAGMA journal_mode=WAL")
                    self._mode_set = True
                # (The WAL is synced after each commit, outside the write lock: _write.)
                db.execute("PRAGMA synchronous=NORMAL")
                # The WAL is cut back to this after a checkpoint (it would stay at its
                # largest): the room it took is the disk's again.
                db.execute(f"PRAGMA journal_size_limit={CHECKPOINT_BYTES}")
                # Checkpoints are a thread's (_checkpoint_if_due): SQLite's own
                # run inside the COMMIT that passed the mark, under the writer lock and in
                # the writer's request.
                db.execute("PRAGMA wal_autocheckpoint=0")
                # A connection per writing thread (up to a pool's worth, 16) and one for the
                # process's look-ups: each keeps a cache of its own, grown as pages are
                # read, the kernel's page cache the index for all of them.  8 MiB holds a
                # first sync's index of ~45,000 chunks, whose look-ups by random hash
                # missed a 1 MiB cache and read pages by pread(2)
                # (A/B on the sync bench's first sync: 16 MiB took 4-6% off the server's
                # CPU in three pairs of three; 8 MiB in two, within the noise in one).
                db.execute("PRAGMA cache_size=-8192")
                # Statement journals and RETURNING's rows in memory, not in temporary files
                # (~150 MB of them on a 1 GB first sync before refresh's UPDATE OR FAIL).
                db.execute("PRAGMA temp_store=MEMORY")
            except BaseException:
                db.close()
                raise
        return db

    def _forked(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._conns = []
        self._reader = self._writing = None  # (the parent's: left alone, as the others)
        self._reader_lock = native_lock()
        self._kept.reset()
        active, self._active = self._active, None
        if active is not None:
            with contextlib.suppress(OSError):
                active.close()

    @contextlib.contextmanager
    def _write(self, changed: Callable[[], bool] | None = None
               ) -> Iterator[sqlite3.Connection]:
        """One write transaction on the process's writing connection, taking the write lock
        at its start (so a read in it sees what the commit will be judged against).
        `changed`: whether it wrote anything, asked after the commit (else it is taken to
        have): only then is the WAL synced.  One connection for every writing thread (the
        lock lets one write at a time anyway): its page cache outlives its own commits, where
        a connection per thread lost its cache at each of the others' and read the pages
        again to insert into them."""
        with _sql_errors(), self._writer:
            if self._pid != os.getpid():
                self._forked()
            db = self._writing
            if db is None:
                db = self._writing = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        if changed is None or changed():
            self._wal_sync.sync()  # durable before the caller goes on, as FULL made it
            self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> None:
        """The WAL checkpointed as SQLite's automatic checkpoint would, but neither under the
        writer lock nor in a writer's request: by the process's checkpointing thread
        (pithos.core.wal_sync.WalCheckpoints).  Past its bound (the thread falls behind
        writers that never pause: a PASSIVE checkpoint cannot finish while they append) this
        writer checkpoints it whole itself, holding the writer lock: writers wait, and the
        WAL stays bounded (one a failure leaves is tried again by the next write)."""
        if self._checkpoints.after_commit():
            # (A failure, a full disk say, fails no write: the commit is durable already.)
            with self._writer, contextlib.suppress(sqlite3.Error):
                if self._writing is not None:
                    self._writing.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _rows(self, db: sqlite3.Connection, hashes: Sequence[bytes]
              ) -> dict[bytes, tuple[int, int, int, float]]:
        """hash -> (pack, offset, length, stamp) of the packed ones among `hashes`."""
        found: dict[bytes, tuple[int, int, int, float]] = {}
        unique = list(dict.fromkeys(hashes))
        with _sql_errors():
            self._select(db, unique, found)
        return found

    @staticmethod
    def _select(db: sqlite3.Connection, unique: Sequence[bytes],
                found: dict[bytes, tuple[int, int, int, float]]) -> None:
        for i in range(0, len(unique), _IN_CHUNK):
            part = unique[i:i + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            for h, pack, offset, length, stamp in db.execute(
                    "SELECT hash, pack, offset, length, stamp FROM blocks "
                    f"WHERE hash IN ({marks})", part):
                found[bytes(h)] = (pack, offset, length, stamp)

    def kept(self, hashes: Sequence[bytes], fresh_since: float | None = None
             ) -> dict[bytes, tuple[int, int, int, float]]:
        """The rows among `hashes` this process keeps (stamped at or after `fresh_since`, if
        given): no I/O, so a caller on an event loop may ask before handing the rest to a
        thread (`lookup`, `refresh`)."""
        if self._pid != os.getpid():
            return {}  # (the fork is handled where a connection is used)
        rows = self._kept.known(hashes, self._kept.tag())
        if fresh_since is not None:
            rows = {h: row for h, row in rows.items() if row[3] >= fresh_since}
        return rows

    def lookup(self, hashes: Sequence[bytes]) -> dict[bytes, tuple[int, int, int, float]]:
        """hash -> (pack, offset, length, stamp) of the packed ones among `hashes`: the rows
        this process keeps, the index's for the others (pithos/blocker/pack_rows.py)."""
        if self._pid != os.getpid():
            self._forked()
        unique = list(dict.fromkeys(hashes))
        tag = self._kept.tag()
        found = self._kept.known(unique, tag)
        rest = [h for h in unique if h not in found] if found else unique
        if rest:
            with self._reader_lock:
                db = self._reader
                if db is None:
                    db = self._reader = self._connect()
                read = self._rows(db, rest)
            self._kept.keep(read, tag)
            found.update(read)
        return found

    # -- packs -------------------------------------------------------------------------------

    def pack_path(self, pack_id: int) -> str:
        return f"{self.dir}/{pack_id:016x}.pack"

    def _begin_pack(self) -> _Active:
        """A new pack, created locked and named durably before any row can point at it."""
        fd, path = tmpfiles.create_locked(lambda: self.pack_path(secrets.randbits(63)), 0o600)
        direct = None
        try:
            direct = direct_io.open_direct(path)  # (before the mode forbids opening it)
            os.fchmod(fd, 0o444)
            fsync_dir(self.dir)
        except BaseException:
            if direct is not None:
                os.close(direct)
            os.close(fd)
            raise
        return _Active(fd, int(os.path.basename(path)[:-5], 16), direct)

    def _take(self, size: int, direct: bool = False) -> tuple[_Active, int, bool]:
        """Room for `size` bytes at the end of this process's pack: (pack, offset, whether
        to write it direct); if `direct` and the pack takes direct writes, at an offset and
        for a length rounded up to direct_io.ALIGN."""
        with self._append_lock:
            if self._pid != os.getpid():
                self._forked()
            active = self._active
            if active is None or active.end >= self.roll_bytes:
                if active is not None:
                    active.sealed = True
                    if active.users == 0:
                        active.close()  # lets the lock go: compactable
                active = self._active = self._begin_pack()
            offset = active.end
            direct = direct and active.direct_fd is not None and not self._direct_refused
            if direct:
                offset = direct_io.round_up(offset)
                size = direct_io.round_up(size)
            active.end = offset + size
            active.users += 1
            return active, offset, direct

    def _release(self, active: _Active) -> None:
        with self._append_lock:
            active.users -= 1
            if active.sealed and active.users == 0:
                active.close()

    def append(self, records: Sequence[tuple[bytes, bytes | memoryview]]
               ) -> tuple[int, list[int]]:
        """Write `records` (hash, data) to this process's pack and fdatasync it; returns the
        pack and each record's offset (of its header).  Nothing points at them yet."""
        pack, offsets, _ = self._append(records)
        return pack, offsets

    def _append(self, records: Sequence[tuple[bytes, bytes | memoryview]]
                ) -> tuple[int, list[int], list[int]]:
        """`append`, with each record's data size too."""
        # A small batch's headers and data go out as they are (pwritev), not copied into one
        # buffer first; a large one is copied into aligned buffers and written past the page
        # cache (pithos.blocker.direct_io), at an aligned offset.
        parts: list[bytes | memoryview] = []
        offsets = []
        sizes = []
        size = 0
        for hash_, data in records:
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")  # (so that its length is its size in bytes)
            offsets.append(size)
            sizes.append(view.nbytes)
            parts.append(HEADER.pack(MAGIC, hash_, view.nbytes))
            parts.append(data if isinstance(data, bytes) else view)
            size += HEADER.size + view.nbytes
        active, start, direct = self._take(size, direct=size >= DIRECT_MIN_BYTES)
        try:
            if direct and active.direct_fd is not None:
                try:
                    direct_io.write_direct(active.direct_fd, parts, start)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # A device wanting another alignment than ALIGN: this process's packs
                    # are written through the page cache from now on.  (The descriptor
                    # stays open with its pack: another thread may be writing through it.)
                    self._direct_refused = True
                    direct = False  # (the room taken is aligned: written as it is)
            if not direct:
                at = start
                for i in range(0, len(parts), _IOV_MAX):
                    at = _pwritev_all(active.fd, parts[i:i + _IOV_MAX], at)
            os.fdatasync(active.fd)
        finally:
            self._release(active)
        return active.id, [start + o for o in offsets], sizes

    # -- the BlockStore operations on packed blocks ------------------------------------------

    def refresh(self, hashes: Sequence[bytes], fresh_since: float | None = None
                ) -> dict[bytes, int]:
        """Set the stamp of each packed block among `hashes` to now; returns those that had
        a row (and so are present, refreshed, when this returns), with their lengths.  A row
        stamped at or after `fresh_since` is only read, not rewritten (BlockStore.touch_many:
        the writer's lease keeps every sweep's cutoff before it)."""
        if not hashes:
            return {}
        unique = list(dict.fromkeys(hashes))
        found: dict[bytes, int] = {}
        if fresh_since is not None:
            # A hashmap upload names the chunks it sent a moment before: their rows are read
            # (kept by this process, else from the index: pithos/blocker/pack_rows.py; no
            # write lock, no page written to the WAL, no sync) and only the older ones
            # rewritten.  (A row that vanishes or appears after this read is reported as
            # the update or the caller's look-up for a file finds it: absent, or present.)
            rows = self.lookup(unique)
            stale = []
            for h in unique:
                row = rows.get(h)
                if row is not None and row[3] >= fresh_since:
                    found[h] = row[2]
                elif row is not None:
                    stale.append(h)
            unique = stale
            if not unique:
                return found
        fresh = len(found)
        tag = self._kept.tag()
        now = time.time()
        # (Nothing updated, nothing to make durable: blocks kept as files.)
        with self._write(changed=lambda: len(found) > fresh) as db:
            # A statement per few hundred hashes, not per hash (a hashmap upload touches
            # every block it names: 60,000 of them a GB of 16 KiB chunks), each answering the
            # rows it updated and their lengths (RETURNING: one pass over the index, where a
            # look-up, an update and a select of the same rows were three; a hashmap upload
            # checks its entries' lengths against these).  OR FAIL: a statement that may
            # abort half-way (the default, ABORT: stamp is NOT NULL) keeps a journal of every
            # page it changes, to undo its own changes; a stamp is never NULL, and the
            # transaction is rolled back whole on any error anyway.
            for i in range(0, len(unique), _IN_CHUNK):
                part = unique[i:i + _IN_CHUNK]
                for h, length in db.execute(
                        f"UPDATE OR FAIL blocks SET stamp = ? WHERE hash IN "
                        f"({','.join('?' * len(part))}) RETURNING hash, length",
                        (now, *part)):
                    found[bytes(h)] = length
        # Only the rows stamped here (`unique` holds no fresh one now): a kept stamp newer
        # than the index's would let a later touch skip a row that a sweep may remove.
        self._kept.restamp((h for h in unique if h in found), now, tag)
        return found

    def put(self, items: Sequence[tuple[bytes, bytes | memoryview]]) -> None:
        """Append blocks known absent from the index (or to be replaced) and index them."""
        if not items:
            return
        pack, offsets, sizes = self._append(items)
        tag = self._kept.tag()
        now = time.time()
        rows = [(h, pack, off, size, now) for (h, _), off, size in zip(items, offsets, sizes,
                                                                        strict=True)]
        with self._write() as db:
            # A concurrent writer may have indexed the same block meanwhile: either copy
            # serves (same hash), so the last row wins.
            db.executemany(
                "INSERT INTO blocks (hash, pack, offset, length, stamp) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (hash) DO UPDATE SET pack = excluded.pack, "
                "offset = excluded.offset, length = excluded.length, stamp = excluded.stamp",
                rows)
        self._kept.keep({row[0]: row[1:] for row in rows}, tag)

    def _read_record(self, hash_: bytes, fds: dict[int, int],
                     row: tuple[int, int, int, float] | None, offset: int = 0,
                     length: int | None = None) -> bytes | None:
        """Bytes [offset, offset + length) of the packed block (all of it when `length` is
        None), None if it has no row.  Looks again when the pack vanished (compacted)."""
        for _ in range(_RELOOKS):
            if row is None:
                return None
            pack, at, size, _ = row
            fd = fds.get(pack)
            if fd is None:
                try:
                    fd = os.open(self.pack_path(pack), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:  # (compacted away: the index says where it went)
                    self._kept.forget([hash_])
                    row = self.lookup([hash_]).get(hash_)
                    continue
                fds[pack] = fd
            if length is None:
                return os.pread(fd, size, at + HEADER.size)
            start = min(offset, size)
            return os.pread(fd, max(0, min(length, size - start)), at + HEADER.size + start)
        raise OSError(errno.EAGAIN, f"block {hash_.hex()} keeps moving between packs")

    def get(self, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
        """The data of the packed ones among `hashes`."""
        rows = self.lookup(hashes)
        fds: dict[int, int] = {}
        found = {}
        try:
            for h, row in rows.items():
                data = self._read_record(h, fds, row)
                if data is not None:
                    found[h] = data
        finally:
            for fd in fds.values():
                os.close(fd)
        return found

    def read(self, hash_: bytes, offset: int, length: int) -> bytes | None:
        fds: dict[int, int] = {}
        try:
            return self._read_record(hash_, fds, self.lookup([hash_]).get(hash_),
                                     offset, length)
        finally:
            for fd in fds.values():
                os.close(fd)

    def locate(self, hash_: bytes) -> Location | None:
        """Where the packed block's bytes are (for tools that damage or inspect them)."""
        row = self.lookup([hash_]).get(hash_)
        if row is None:
            return None
        return Location(self.pack_path(row[0]), row[1] + HEADER.size, row[2])

    def delete(self, hashes: Sequence[bytes], cutoff: float | None = None) -> list[bytes]:
        """Remove the rows of `hashes` (only those stamped before `cutoff`, if given);
        returns the hashes removed.  Durable on return (the commit)."""
        if not hashes:
            return []
        gone: list[bytes] = []
        self._kept.removing()
        with self._write() as db:
            for h in dict.fromkeys(hashes):
                if cutoff is None:
                    cursor = db.execute("DELETE FROM blocks WHERE hash = ?", (h,))
                else:
                    cursor = db.execute("DELETE FROM blocks WHERE hash = ? AND stamp < ?",
                                        (h, cutoff))
                if cursor.rowcount:
                    gone.append(h)
        self._kept.removing()
        return gone

    def quarantine(self, hash_: bytes, seen: bytes | None, size: int = 0) -> bool | None:
        """Move the packed block aside into quarantine/ if its record is the damaged one (its
        bytes are `seen`, or, `seen` None, its length is not `size`); whether it was moved,
        None if it has no row."""
        self._kept.removing()
        with self._write() as db:
            row = self._rows(db, [hash_]).get(hash_)
            if row is None:
                return None
            fds: dict[int, int] = {}
            try:
                data = self._read_record(hash_, fds, row)
            finally:
                for fd in fds.values():
                    os.close(fd)
            if data is None:
                return None
            if seen is None:
                if len(data) == size:
                    return False
            elif data != seen:
                return False  # stored afresh (or moved intact) since it was read
            self._keep_quarantined(hash_, data)
            db.execute("DELETE FROM blocks WHERE hash = ?", (hash_,))
        self._kept.removing()
        return True

    def _keep_quarantined(self, hash_: bytes, data: bytes) -> None:
        """quarantine/<hex> holding `data`, durably (written under tmp/, then renamed)."""
        if not os.path.isdir(self._quarantine):
            os.makedirs(self._quarantine, exist_ok=True)
            fsync_dir(os.path.dirname(self._quarantine))
        fd, tmp = tmpfiles.create_locked(
            lambda: f"{self._tmp}/{hash_.hex()}.q.{os.getpid()}.{next(self._names)}", 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
            os.rename(tmp, f"{self._quarantine}/{hash_.hex()}")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        fsync_dir(self._quarantine)

    def iterate(self, start_after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """(hash, length) of every packed block in hash order, after `start_after`."""
        after = start_after or b""
        while True:
            with _sql_errors():
                rows = self._db().execute(
                    "SELECT hash, length FROM blocks WHERE hash > ? ORDER BY hash LIMIT 1000",
                    (after,)).fetchall()
            for h, length in rows:
                yield bytes(h), length
            if len(rows) < 1000:
                return
            after = bytes(rows[-1][0])

    # -- compaction --------------------------------------------------------------------------

    def usage(self) -> dict[int, tuple[int, int]]:
        """pack -> (live records, live bytes with headers)."""
        with _sql_errors():
            return {pack: (count, live) for pack, count, live in self._db().execute(
                "SELECT pack, COUNT(*), SUM(length) + COUNT(*) * ? FROM blocks GROUP BY pack",
                (HEADER.size,))}

    def compact(self, min_garbage: float = 0.25,
                progress: Callable[[str], None] | None = None) -> dict[str, int]:
        """Rewrite every sealed pack of which at least `min_garbage` (a share of its size)
        is dead bytes; a pack with no live record is unlinked.  Returns counts."""
        report = {"packs": 0, "compacted": 0, "removed": 0, "copied_bytes": 0,
                  "reclaimed_bytes": 0}
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return report
        for name in names:
            if not name.endswith(".pack"):
                continue
            report["packs"] += 1
            try:
                pack_id = int(name[:-5], 16)
            except ValueError:
                continue
            self._compact_one(pack_id, min_garbage, report)
        self._shrink_wal()
        return report

    def _shrink_wal(self) -> None:
        """Give the index's log back to the disk (what a sweep's deletes grew it by), unless
        another process is using it right now: then it stays, for a later checkpoint."""
        db = self._db()
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA busy_timeout=1000")
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.execute("PRAGMA busy_timeout=120000")

    def _compact_one(self, pack_id: int, min_garbage: float, report: dict[str, int]) -> None:
        path = self.pack_path(pack_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return  # being written (or compacted by another process)
                raise
            if not os.path.exists(path) or os.stat(path).st_ino != os.fstat(fd).st_ino:
                return  # compacted by another process before we held it
            size = os.fstat(fd).st_size
            # Held: no writer appends to it, so no new row can point into it from now on.
            count, live = self.usage().get(pack_id, (0, 0))
            if count and (size - live <= 0 or size - live < min_garbage * size):
                return
            if count:
                self._move_live(fd, pack_id, report)
            # Every row that pointed here has moved (or was deleted): the old pack can go.
            with self._write() as db:
                left = db.execute("SELECT COUNT(*) FROM blocks WHERE pack = ?",
                                  (pack_id,)).fetchone()[0]
                if left:
                    return  # (cannot happen: nothing appends here; kept safe regardless)
            os.unlink(path)
            fsync_dir(self.dir)
            report["compacted" if count else "removed"] += 1
            report["reclaimed_bytes"] += size - live
        finally:
            os.close(fd)

    def _move_live(self, fd: int, pack_id: int, report: dict[str, int]) -> None:
        """Copy the live records of the held pack `fd` into this process's pack and move
        their rows, batch by batch; a row changed meanwhile (deleted, stored anew) stays."""
        with _sql_errors():
            rows = self._db().execute("SELECT hash, offset, length FROM blocks WHERE pack = ? "
                              "ORDER BY offset", (pack_id,)).fetchall()
        i = 0
        while i < len(rows):
            batch: list[tuple[bytes, int, int]] = []
            total = 0
            while i < len(rows) and (not batch or total < _COMPACT_BATCH_BYTES):
                batch.append(rows[i])
                total += rows[i][2]
                i += 1
            records = [(bytes(h), os.pread(fd, length, offset + HEADER.size))
                       for h, offset, length in batch]
            new_pack, offsets = self.append(records)
            with self._write() as db:
                db.executemany(
                    "UPDATE blocks SET pack = ?, offset = ? "
                    "WHERE hash = ? AND pack = ? AND offset = ?",
                    [(new_pack, new_offset, h, pack_id, offset)
                     for (h, offset, _), new_offset in zip(batch, offsets, strict=True)])
            report["copied_bytes"] += total

    def close(self) -> None:
        with self._append_lock:
            active, self._active = self._active, None
            if active is not None and self._pid == os.getpid():
                if active.users == 0:
                    active.close()
                else:
                    active.sealed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        with self._reader_lock:
            reader, self._reader = self._reader, None
        with self._writer:
            writing, self._writing = self._writing, None
        mine = [c for c in (reader, writing) if c is not None and self._pid == os.getpid()]
        for db in conns + mine:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._kept.close()
        self._checkpoints.close()
        self._wal_sync.close()
        self._writer.close()

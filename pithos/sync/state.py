"""The sync state: one SQLite database beside the folder, `LOCAL_DIR/.pithos-sync/state.sqlite`
(never synced itself; the directory is 0700 and the database 0600, since it holds the key).

Tables:
- `config`: the remembered container, auth URL, user and key, and the remote cursor;
- `base`: per path, the last state both sides agreed on (size, md5 = the remote ETag, the
  local stat it had then); the "B" of the three-way decision;
- `files`: the files cache, per local path its (size, mtime_ns, inode) and what hashing
  found (md5, chunk list), so content is hashed again only when the stat changes;
- `chunk_refs`: the local chunk index, where a download looks first (any file in the folder
  may hold a chunk): per chunk of a cached file, the first 8 bytes of its hash and the
  file's row (`files.rowid`); the offset and length are found in that row's chunk list;
- `remote`: the mirror of the container, kept by the change feed;
- `journal`: intents of transfers in flight (what a killed run left undone).

One process per folder at a time: `lock()` takes an flock on `.pithos-sync/lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple, overload

from pithos.core.cdc import ENTRY

STATE_DIR = ".pithos-sync"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, md5 TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, chunks BLOB NOT NULL DEFAULT x'');
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, md5 TEXT NOT NULL, chunks BLOB NOT NULL,
    ctime_ns INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS chunk_refs (
    prefix INTEGER NOT NULL, file INTEGER NOT NULL, PRIMARY KEY (prefix, file)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS remote (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, md5 TEXT NOT NULL,
    content_type TEXT NOT NULL DEFAULT '', version TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS journal (
    path TEXT PRIMARY KEY, op TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL);
"""

_ENTRY = ENTRY  # chunk hash, length (u32 little-endian): the scan's chunk list entries
_PREFIX = struct.Struct("<q")  # a chunk_refs prefix: a hash's first 8 bytes, as SQLite keeps it
_OFFSETS_KEPT = 8  # files whose chunk offsets chunk_sources keeps (a download reads on)


class Chunk(NamedTuple):
    """One chunk of a file.  A tuple, not a frozen dataclass: a first sync makes one per
    16 KiB of the folder several times over (cut, cached, read back), and a frozen
    dataclass's __init__ cost several times a tuple's."""
    hash: bytes
    length: int


class ChunkList(Sequence[Chunk]):
    """A file's chunks as the scan cuts them and the files cache stores them: entries
    (pithos.core.cdc.ENTRY: hash, length) back to back in one bytes object, a `Chunk` made
    only for the one asked for.  A first sync cuts ~60,000 chunks a GB: as objects, each was
    made when cut, packed for the cache, and unpacked again when an upload read the list
    back.  Equal to any sequence of the same chunks (a tuple of them too), and hashes
    like that tuple."""

    __slots__ = ("packed",)

    def __init__(self, packed: bytes = b"") -> None:
        if len(packed) % _ENTRY.size:
            raise ValueError(f"a chunk list is {_ENTRY.size}-byte entries: {len(packed)} "
                             "bytes is not a whole number of them")
        self.packed = bytes(packed)

    def __len__(self) -> int:
        return len(self.packed) // _ENTRY.size

    @overload
    def __getitem__(self, i: int) -> Chunk: ...

    @overload
    def __getitem__(self, i: slice) -> ChunkList: ...

    def __getitem__(self, i: int | slice) -> Chunk | ChunkList:
        n = _ENTRY.size
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return ChunkList(self.packed[start * n:max(start, stop) * n])
            return ChunkList(b"".join(self.packed[j * n:(j + 1) * n]
                                      for j in range(start, stop, step)))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("chunk index out of range")
        return Chunk._make(_ENTRY.unpack_from(self.packed, i * n))

    def __iter__(self) -> Iterator[Chunk]:
        return map(Chunk._make, _ENTRY.iter_unpack(self.packed))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkList):
            return self.packed == other.packed
        if isinstance(other, (tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))

    def hashes(self) -> list[bytes]:
        return [h for h, _ in _ENTRY.iter_unpack(self.packed)]

    def lengths(self) -> list[int]:
        return [n for _, n in _ENTRY.iter_unpack(self.packed)]


def chunk_hashes(chunks: Sequence[Chunk]) -> list[bytes]:
    return chunks.hashes() if isinstance(chunks, ChunkList) else [c.hash for c in chunks]


def chunk_lengths(chunks: Sequence[Chunk]) -> list[int]:
    return chunks.lengths() if isinstance(chunks, ChunkList) else [c.length for c in chunks]


@dataclass(frozen=True)
class LocalFile:
    """A regular file of the folder as last hashed."""
    path: str
    size: int
    mtime_ns: int
    inode: int
    md5: str
    chunks: Sequence[Chunk]  # a ChunkList from the scan and the files cache
    # The inode's change time as hashed (0: unknown).  An edit that keeps the size and puts
    # the mtime back (cp -p, rsync -t, tar) changes nothing else the cache compares.
    ctime_ns: int = 0


@dataclass(frozen=True)
class BaseEntry:
    path: str
    size: int
    md5: str
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class RemoteEntry:
    path: str
    size: int
    md5: str
    content_type: str = ""
    version: str = ""


@dataclass(frozen=True)
class ChunkSource:
    path: str
    offset: int
    length: int


def pack_chunks(chunks: Iterable[Chunk]) -> bytes:
    if isinstance(chunks, ChunkList):
        return chunks.packed
    pack = _ENTRY.pack
    return b"".join([pack(h, n) for h, n in chunks])


def unpack_chunks(blob: bytes) -> ChunkList:
    return ChunkList(blob)


def _prefixes(packed: bytes) -> list[int]:
    """The chunk_refs prefix of each entry of a packed chunk list."""
    size = _ENTRY.size
    unpack = _PREFIX.unpack_from
    return [unpack(packed, i)[0] for i in range(0, len(packed), size)]


class State:
    """The state database of one folder.  Not thread-safe: one engine uses it."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.abspath(folder)
        self.dir = os.path.join(self.folder, STATE_DIR)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.tmp_dir = os.path.join(self.dir, "tmp")
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.dir, "state.sqlite")
        # Created 0600 before SQLite opens it: the key must never be readable by others,
        # not even for a moment.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints every 64 MiB of WAL rather than SQLite's 4 MiB: each one syncs, and the
        # scan's thread waited for them (a third of the files cache's writes on the sync
        # bench's first sync, ~0.3 s, with the chunk index's random keys rewriting most of
        # its pages at every batch); the last one is when the run closes the database.
        self.db.execute("PRAGMA wal_autocheckpoint=16384")
        self.db.executescript(_SCHEMA)
        if "chunks" not in [r[1] for r in self.db.execute("PRAGMA table_info(base)")]:
            # (a state made before base kept its chunk list)
            self.db.execute("ALTER TABLE base ADD COLUMN chunks BLOB NOT NULL DEFAULT x''")
        if "ctime_ns" not in [r[1] for r in self.db.execute("PRAGMA table_info(files)")]:
            # (a state made before the cache kept the change time: every file is hashed
            # once more, at the next scan, and the cache then has it)
            self.db.execute("ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0")
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks'").fetchone():
            self._upgrade_chunk_index()
        self._lock_fd: int | None = None
        # file rowid -> {chunk hash: (offset, length)} of the files chunk_sources read last
        self._offsets: dict[int, dict[bytes, tuple[int, int]]] = {}

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def lock(self) -> bool:
        """Take the folder's lock; False if another `pithos sync` holds it."""
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- config --------------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM config WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO config (key, value) VALUES (?, ?)",
                            (key, value))

    # -- base ----------------------------------------------------------------------------------

    def base(self) -> dict[str, BaseEntry]:
        return {r[0]: BaseEntry(*r) for r in
                self.db.execute("SELECT path, size, md5, mtime_ns, inode FROM base")}

    def set_base(self, entry: BaseEntry, chunks: Iterable[Chunk] = ()) -> None:
        """Record what both sides agree on; `chunks`, the content's chunk list if known
        (the server holds them and we may name them: an upload of an edit asks ?missing
        only about the others)."""
        self.db.execute("INSERT OR REPLACE INTO base VALUES (?, ?, ?, ?, ?, ?)",
                        (entry.path, entry.size, entry.md5, entry.mtime_ns, entry.inode,
                         pack_chunks(chunks)))

    def base_chunks(self, path: str) -> ChunkList:
        row = self.db.execute("SELECT chunks FROM base WHERE path = ?", (path,)).fetchone()
        return ChunkList() if row is None else unpack_chunks(row[0])

    def drop_base(self, path: str) -> None:
        self.db.execute("DELETE FROM base WHERE path = ?", (path,))

    # -- files cache and chunk index -----------------------------------------------------------

    def cached(self, path: str) -> LocalFile | None:
        row = self.db.execute("SELECT path, size, mtime_ns, inode, md5, chunks, ctime_ns "
                              "FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        return LocalFile(row[0], row[1], row[2], row[3], row[4], unpack_chunks(row[5]),
                         row[6])

    def cached_stat(self, path: str) -> LocalFile | None:
        """The cache's row without its chunk list (`chunks` empty): what a scan keeps in
        memory for every file, so a pass's memory does not grow with the folder's bytes."""
        row = self.db.execute("SELECT path, size, mtime_ns, inode, md5, ctime_ns FROM files "
                              "WHERE path = ?", (path,)).fetchone()
        return None if row is None else LocalFile(row[0], row[1], row[2], row[3], row[4], (),
                                                  row[5])

    def cached_paths(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT path FROM files")]

    def put_file(self, f: LocalFile) -> None:
        self.put_files([f])

    def put_files(self, files: Sequence[LocalFile]) -> None:
        """Files as hashed into the files cache and the chunk index (their rows replaced),
        all in one transaction: a commit per file, each rewriting the index pages its
        chunks' random hashes land on, was ~10% of a first sync's scan."""
        self._offsets.clear()
        with self.transaction() as db:
            for f in files:
                self._drop_refs(db, f.path)  # (before each: a path twice in `files` too)
                packed = pack_chunks(f.chunks)
                cur = db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (f.path, f.size, f.mtime_ns, f.inode, f.md5, packed,
                                  f.ctime_ns))
                assert cur.lastrowid is not None
                self._add_refs(db, cur.lastrowid, packed)

    def drop_file(self, path: str) -> None:
        self._offsets.clear()
        with self.transaction() as db:
            self._drop_refs(db, path)
            db.execute("DELETE FROM files WHERE path = ?", (path,))

    @staticmethod
    def _add_refs(db: sqlite3.Connection, rowid: int, packed: bytes) -> None:
        """The chunk index's rows of the cached file `rowid`, whose chunk list is `packed`."""
        db.executemany("INSERT OR IGNORE INTO chunk_refs VALUES (?, ?)",
                       zip(_prefixes(packed), repeat(rowid)))

    @staticmethod
    def _drop_refs(db: sqlite3.Connection, path: str) -> None:
        """The chunk index's rows of this path's cached file (found by its chunk list: the
        index keeps no path, so that a row costs ~12 bytes of a random page rather than a
        hash, a path and two numbers twice over, ~10% of the sync client's CPU on a first
        sync's scan)."""
        row = db.execute("SELECT rowid, chunks FROM files WHERE path = ?", (path,)).fetchone()
        if row is not None:
            db.executemany("DELETE FROM chunk_refs WHERE prefix = ? AND file = ?",
                           zip(_prefixes(row[1]), repeat(row[0])))

    def _upgrade_chunk_index(self) -> None:
        """A state made when the chunk index kept (hash, path, offset, length) rows: its
        rows made again from the files cache, the old table dropped."""
        with self.transaction() as db:
            for rowid, packed in db.execute("SELECT rowid, chunks FROM files").fetchall():
                self._add_refs(db, rowid, packed)
            db.execute("DROP TABLE chunks")

    def chunk_sources(self, chunk_hash: bytes, limit: int = 4) -> list[ChunkSource]:
        """Where the folder held this chunk when last hashed (to be verified before use)."""
        found: list[ChunkSource] = []
        for rowid, path in self.db.execute(
                "SELECT r.file, f.path FROM chunk_refs r JOIN files f ON f.rowid = r.file "
                "WHERE r.prefix = ?", _PREFIX.unpack_from(chunk_hash)).fetchall():
            at = self._chunk_offsets(rowid).get(chunk_hash)
            if at is not None:  # (else another hash with the same first 8 bytes)
                found.append(ChunkSource(path, *at))
                if len(found) >= limit:
                    break
        return found

    def _chunk_offsets(self, rowid: int) -> dict[bytes, tuple[int, int]]:
        """{hash: (offset, length)} of the first place of each chunk in this cached file,
        kept for the last few files asked about: a download asks about each of its chunks
        in turn, mostly from the same few files."""
        offsets = self._offsets.get(rowid)
        if offsets is None:
            row = self.db.execute("SELECT chunks FROM files WHERE rowid = ?",
                                  (rowid,)).fetchone()
            offsets = {}
            at = 0
            for h, n in _ENTRY.iter_unpack(row[0] if row is not None else b""):
                offsets.setdefault(h, (at, n))
                at += n
            if len(self._offsets) >= _OFFSETS_KEPT:
                self._offsets.pop(next(iter(self._offsets)))
            self._offsets[rowid] = offsets
        return offsets

    # -- the remote mirror ---------------------------------------------------------------------

    def remote(self) -> dict[str, RemoteEntry]:
        return {r[0]: RemoteEntry(*r) for r in self.db.execute(
            "SELECT path, size, md5, content_type, version FROM remote")}

    def put_remote(self, e: RemoteEntry) -> None:
        self.db.execute("INSERT OR REPLACE INTO remote VALUES (?, ?, ?, ?, ?)",
                        (e.path, e.size, e.md5, e.content_type, e.version))

    def drop_remote(self, path: str) -> None:
        self.db.execute("DELETE FROM remote WHERE path = ?", (path,))

    # -- the journal ---------------------------------------------------------------------------

    def intend(self, path: str, op: str, detail: str = "") -> None:
        import time

        self.db.execute("INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?)",
                        (path, op, detail, time.time()))

    def done(self, path: str) -> None:
        self.db.execute("DELETE FROM journal WHERE path = ?", (path,))

    def journal(self) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in
                self.db.execute("SELECT path, op, detail FROM journal ORDER BY started")]

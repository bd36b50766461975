"""The sync state: one SQLite database beside the folder, `LOCAL_DIR/.pithos-sync/state.sqlite`
(never synced itself; the directory is 0700 and the database 0600, since it holds the key).

Tables:
- `config`: the remembered container, auth URL, user and key, and the remote cursor;
- `base`: per path, the last state both sides agreed on (size, md5 = the remote ETag, the
  local stat it had then); the "B" of the three-way decision;
- `files`: the files cache, per local path its (size, mtime_ns, inode) and what hashing
  found (md5, chunk list), so content is hashed again only when the stat changes;
- `chunks`: the local chunk index, chunk hash -> (path, offset, length) of files in the
  cache, where a download looks first (any file in the folder may hold a chunk);
- `remote`: the mirror of the container, kept by the change feed;
- `journal`: intents of transfers in flight (what a killed run left undone).

One process per folder at a time: `lock()` takes an flock on `.pithos-sync/lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
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
    inode INTEGER NOT NULL, md5 TEXT NOT NULL, chunks BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    hash BLOB NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (hash, path, offset)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (path);
CREATE TABLE IF NOT EXISTS remote (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, md5 TEXT NOT NULL,
    content_type TEXT NOT NULL DEFAULT '', version TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS journal (
    path TEXT PRIMARY KEY, op TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL);
"""

_ENTRY = ENTRY  # chunk hash, length (u32 little-endian): the scan's chunk list entries


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
        self._lock_fd: int | None = None

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
        row = self.db.execute("SELECT path, size, mtime_ns, inode, md5, chunks FROM files "
                              "WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        return LocalFile(row[0], row[1], row[2], row[3], row[4], unpack_chunks(row[5]))

    def cached_stat(self, path: str) -> LocalFile | None:
        """The cache's row without its chunk list (`chunks` empty): what a scan keeps in
        memory for every file, so a pass's memory does not grow with the folder's bytes."""
        row = self.db.execute("SELECT path, size, mtime_ns, inode, md5 FROM files "
                              "WHERE path = ?", (path,)).fetchone()
        return None if row is None else LocalFile(row[0], row[1], row[2], row[3], row[4], ())

    def cached_paths(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT path FROM files")]

    def put_file(self, f: LocalFile) -> None:
        self.put_files([f])

    def put_files(self, files: Sequence[LocalFile]) -> None:
        """Files as hashed into the files cache and the chunk index (their rows replaced),
        all in one transaction: a commit per file, each rewriting the index pages its
        chunks' random hashes land on, was ~10% of a first sync's scan."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                           [(f.path, f.size, f.mtime_ns, f.inode, f.md5, pack_chunks(f.chunks))
                            for f in files])
            db.executemany("DELETE FROM chunks WHERE path = ?", [(f.path,) for f in files])
            for f in files:
                lengths = chunk_lengths(f.chunks)
                db.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)",
                               zip(chunk_hashes(f.chunks), repeat(f.path),
                                   accumulate(lengths, initial=0), lengths))

    def drop_file(self, path: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM files WHERE path = ?", (path,))
            db.execute("DELETE FROM chunks WHERE path = ?", (path,))

    def chunk_sources(self, chunk_hash: bytes, limit: int = 4) -> list[ChunkSource]:
        """Where the folder held this chunk when last hashed (to be verified before use)."""
        return [ChunkSource(*r) for r in self.db.execute(
            "SELECT path, offset, length FROM chunks WHERE hash = ? LIMIT ?",
            (chunk_hash, limit))]

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

"""The one WAL group commit (pithos/core/wal_sync.py) that the catalog and the packed blocks'
index share, as a contract: run with no executor (callers sync on their own threads, as the
packs' pool threads do) and with one (one sync in flight, as the catalog under a server).

The syscall is replaced by a recorder that first notes which rows are committed (a commit is
visible to a new reader once its frames are in the WAL), then syncs: a commit is covered by
a sync that saw its row and finished before `sync()` returned to its committer."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pithos.blocker import LocalBlockStore
from pithos.core.hashing import block_hash
from pithos.core.wal_sync import WalSync


class RecordingFsync:
    """fdatasync that records what each sync covered, and checks it syncs the live WAL."""

    def __init__(self, db_path: str, table: str, column: str, delay: float = 0.002) -> None:
        self.db_path = db_path
        self.query = f"SELECT {column} FROM {table}"
        self.delay = delay
        self.done: list[set] = []  # per finished sync: the rows it covered
        self.fail_next = False
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        wal = self.db_path + "-wal"
        assert os.fstat(fd).st_ino == os.stat(wal).st_ino, "synced a WAL that is gone"
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            seen = {row for (row,) in db.execute(self.query)}
        time.sleep(self.delay)  # (so that committers pile up behind a sync in flight)
        if self.fail_next:
            self.fail_next = False
            raise OSError(errno.EIO, "injected")
        os.fdatasync(fd)
        with self._lock:
            self.done.append(seen)

    def covered(self, row) -> bool:
        with self._lock:
            return any(row in seen for seen in self.done)


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@pytest.fixture(params=["caller", "executor"])
def executor(request):
    if request.param == "caller":
        yield None
        return
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


def _database(tmp_path, executor):
    path = str(tmp_path / "db.sqlite")
    with contextlib.closing(_connect(path)) as db:
        db.execute("CREATE TABLE t (name TEXT PRIMARY KEY)")
    recorder = RecordingFsync(path, "t", "name")
    wal_sync = WalSync(path + "-wal", executor, fsync=recorder)
    return path, wal_sync, recorder


def test_concurrent_committers_each_return_after_a_sync_that_covers_them(tmp_path, executor):
    path, wal_sync, recorder = _database(tmp_path, executor)
    uncovered: list[str] = []
    errors: list[BaseException] = []

    def committer(w: int) -> None:
        try:
            with contextlib.closing(_connect(path)) as db:
                for i in range(15):
                    name = f"{w}-{i}"
                    db.execute("INSERT INTO t VALUES (?)", (name,))
                    wal_sync.sync()
                    if not recorder.covered(name):
                        uncovered.append(name)
        except BaseException as exc:
            errors.append(exc)

    # One connection stays open throughout, so that the WAL is never deleted under them.
    with contextlib.closing(_connect(path)):
        threads = [threading.Thread(target=committer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a committer hung"
    assert errors == []
    assert uncovered == []
    # Shared: 120 commits by 8 concurrent committers took fewer syncs than commits.
    assert len(recorder.done) < 120, len(recorder.done)
    wal_sync.close()


def test_one_sync_covers_every_commit_made_before_it(tmp_path, executor):
    path, wal_sync, recorder = _database(tmp_path, executor)
    with contextlib.closing(_connect(path)) as db:
        for i in range(5):
            db.execute("INSERT INTO t VALUES (?)", (f"r{i}",))
        wal_sync.sync()
    assert len(recorder.done) == 1
    assert recorder.done[0] == {f"r{i}" for i in range(5)}
    wal_sync.close()


def test_a_failed_sync_fails_its_caller_and_the_next_call_syncs_again(tmp_path, executor):
    path, wal_sync, recorder = _database(tmp_path, executor)
    with contextlib.closing(_connect(path)) as db:
        db.execute("INSERT INTO t VALUES ('unsynced')")
        recorder.fail_next = True
        with pytest.raises(OSError, match="injected"):
            wal_sync.sync()
        db.execute("INSERT INTO t VALUES ('synced')")
        wal_sync.sync()
    assert recorder.covered("synced") and recorder.covered("unsynced")
    wal_sync.close()


def test_a_wal_replaced_under_it_is_synced_not_the_deleted_one(tmp_path, executor):
    path, wal_sync, recorder = _database(tmp_path, executor)
    wal = path + "-wal"
    with contextlib.closing(_connect(path)) as db:
        db.execute("INSERT INTO t VALUES ('first')")
        wal_sync.sync()
    # The last connection closing checkpoints (synced: NORMAL) and deletes the WAL.
    assert not os.path.exists(wal)
    wal_sync.sync()  # nothing to sync: no error, no sync of the deleted file
    with contextlib.closing(_connect(path)) as db:
        db.execute("INSERT INTO t VALUES ('second')")
        # A new WAL file (the recorder asserts each fd it syncs is of the current one).
        wal_sync.sync()
        assert recorder.covered("second")
    wal_sync.close()


def test_the_packed_index_acknowledges_a_put_after_a_sync_that_covers_it(tmp_path):
    """LocalBlockStore's packs commit through the same class: each put returns after an
    fdatasync of the index's WAL that saw its rows."""
    store = LocalBlockStore(str(tmp_path / "blocks"))
    first = [(block_hash(b"%d" % i * 100), b"%d" % i * 100) for i in range(8)]
    store.put_many(first)  # five or more small blocks: packed
    packs = store._packs
    assert packs is not None
    index = os.path.join(packs.dir, "index.sqlite")
    recorder = RecordingFsync(index, "blocks", "hash")
    packs._wal_sync.fsync = recorder
    uncovered: list[bytes] = []

    def writer(w: int) -> None:
        for i in range(6):
            batch = [(block_hash(d), d) for d in
                     (b"w%d-%d-%d" % (w, i, j) * 50 for j in range(6))]
            store.put_many(batch)
            uncovered.extend(h for h, _ in batch if not recorder.covered(h))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert recorder.done, "the packed puts never synced the index's WAL"
    assert uncovered == []
    store.close()

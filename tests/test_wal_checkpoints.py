"""The WALs of the packs index and of an SQLite catalog are checkpointed by a thread of each
process (pithos.core.wal_sync.WalCheckpoints), not by SQLite inside a COMMIT: there it ran
on a server worker's event loop (the catalog) or under the index's writer lock (the packs),
copying pages and syncing two files while every other request or writer waited.

SQLite's automatic checkpoint is off on their connections, so these checkpoints are all
there is: the WAL must stay bounded however much a writer that never pauses puts through
it, and what was written must reach the database file."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time

from pithos.blocker import LocalBlockStore
from pithos.catalog import Catalog
from pithos.catalog.engine import CATALOG_WAL_BOUND_BYTES
from pithos.core.hashing import block_hash
from pithos.core.wal_sync import WAL_BOUND_BYTES


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def test_the_packs_index_wal_stays_bounded_and_its_rows_reach_the_database(tmp_path):
    path = str(tmp_path / "b")
    rng = random.Random(7)
    wal = os.path.join(path, "packs", "index.sqlite-wal")
    largest = 0
    with LocalBlockStore(path) as store:
        for _ in range(60):
            batch = [rng.randbytes(rng.randint(64, 256)) for _ in range(1000)]
            store.put_many([(block_hash(d), d) for d in batch])
            largest = max(largest, _size(wal))
        database = os.path.getsize(os.path.join(path, "packs", "index.sqlite"))
        with sqlite3.connect(os.path.join(path, "packs", "index.sqlite")) as db:
            rows = db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
    # 60,000 random-key rows dirty ~110 MiB of pages across the batches (measured without
    # any checkpoint: the WAL ends at 113 MB).  The bound: 16 MiB and a batch's pages.
    assert largest < WAL_BOUND_BYTES + (8 << 20), largest
    assert database > 1 << 20  # the rows were copied into the database file
    assert rows == 60_000


def test_an_sqlite_catalog_s_wal_stays_bounded_and_no_commit_checkpoints(tmp_path):
    url = f"sqlite:///{tmp_path}/catalog.sqlite"
    wal = f"{tmp_path}/catalog.sqlite-wal"
    rng = random.Random(3)
    cat = Catalog(url)
    try:
        account = cat.ensure_account("acct")
        with cat.engine.connect() as conn:
            # (A COMMIT checkpoints only when this is above 0.)
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        largest = 0
        for _ in range(60):
            cat.grant_blocks(account, [rng.randbytes(32) for _ in range(1000)])
            largest = max(largest, _size(wal))
    finally:
        cat.close()
    # 60,000 grants of random hashes dirty far more pages than the bound (measured without
    # any checkpoint: the WAL ends at ~90 MB): the bound and a batch's pages.
    assert largest < CATALOG_WAL_BOUND_BYTES + (8 << 20), largest
    assert os.path.getsize(f"{tmp_path}/catalog.sqlite") > 2 << 20  # copied into the file
    with sqlite3.connect(f"{tmp_path}/catalog.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM account_blocks").fetchone()[0] == 60_000


def test_a_wal_started_over_wakes_no_checkpoint_until_it_holds_the_mark_again(tmp_path):
    """The WAL's file stays at 4 MiB once started over (journal_size_limit): what it holds
    is then small, and commits must not wake the checkpointing thread each time (measured
    before: 84 MB of catalog checkpoint writes on the sync bench's first sync, 27 MB with
    SQLite's own checkpoints)."""
    path = str(tmp_path / "b")
    rng = random.Random(11)
    with LocalBlockStore(path) as store:
        for _ in range(12):  # past the mark, checkpointed, started over
            batch = [rng.randbytes(200) for _ in range(1000)]
            store.put_many([(block_hash(d), d) for d in batch])
        packs = store._packs_rw()
        checkpoints = packs._checkpoints
        deadline = time.monotonic() + 30
        while checkpoints.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoints.runs > 0
        # One small commit starts the WAL over (after the thread's complete checkpoint).
        for _ in range(3):
            d = rng.randbytes(300)
            store.put_many([(block_hash(d), d)] * 1 + [
                (block_hash(x), x) for x in (rng.randbytes(100) for _ in range(5))])
        time.sleep(0.2)
        before = checkpoints.runs
        for _ in range(40):
            batch = [rng.randbytes(100) for _ in range(5)]
            store.put_many([(block_hash(d), d) for d in batch])
        time.sleep(0.2)
        assert checkpoints.runs - before <= 1


def test_close_returns_once_the_checkpoint_thread_has_closed_its_connection(tmp_path,
                                                                            monkeypatch):
    """The last connection's close removes the WAL file: a thread closing its own after
    `close` returned removed it under a caller already deleting the store's files (a test's
    rmtree failed on a vanished index.sqlite-wal).  The thread's close is slowed here, so a
    `close` that does not wait for it returns with the connection still open."""
    from pithos.core import wal_sync

    class SlowClose(sqlite3.Connection):
        def close(self) -> None:
            time.sleep(0.3)
            super().close()

    class Sqlite:
        Error = sqlite3.Error

        @staticmethod
        def connect(*args, **kwargs):
            return sqlite3.connect(*args, factory=SlowClose, **kwargs)

    monkeypatch.setattr(wal_sync, "sqlite3", Sqlite)
    path = str(tmp_path / "db.sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (x BLOB)")
    checkpoints = wal_sync.WalCheckpoints(path, mark=1024, bound=1 << 30)
    db.execute("INSERT INTO t VALUES (?)", (os.urandom(64 << 10),))
    assert checkpoints.after_commit() is False  # past the mark: the thread runs
    deadline = time.monotonic() + 30
    while checkpoints.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpoints.runs == 1
    db.close()
    checkpoints.close()

    def open_on_it() -> list[str]:
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # (the listing's own descriptor, closed)
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        return [t for t in targets if t.startswith(path)]

    assert open_on_it() == []
    assert not os.path.exists(path + "-wal")  # the last connection closed: WAL removed
    checkpoints.close()  # (twice is harmless)

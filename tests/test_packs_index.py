"""The packs' index (pithos.blocker.packs) as SQLite stores it: what a batch of rows keyed by
random hashes costs in writes.  A new index has 1 KiB pages (a 60-byte row dirties one
page, copied whole into the WAL); an index made before keeps its 4 KiB pages and serves as
before; a touch of many rows journals nothing beyond the WAL (no statement journal in a
temporary file)."""

from __future__ import annotations

import os
import random
import sqlite3

from pithos.blocker import LocalBlockStore
from pithos.core.hashing import block_hash


def small_blocks(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(100, 2000)) for _ in range(n)]


def items(datas: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [(block_hash(d), d) for d in datas]


def index_path(root) -> str:
    return os.path.join(root, "packs", "index.sqlite")


def page_size(root) -> int:
    with sqlite3.connect(index_path(root)) as db:
        return int(db.execute("PRAGMA page_size").fetchone()[0])


def wchar() -> int:
    """Bytes this process has written so far (every file, every thread)."""
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["wchar"])


def test_a_new_index_has_1k_pages_and_an_old_4k_one_keeps_its_own_and_serves(tmp_path):
    root = str(tmp_path / "store")
    first = small_blocks(40, 1)
    store = LocalBlockStore(root)
    store.put_many(items(first))
    store.close()
    assert page_size(root) == 1024

    # An index made before (4 KiB pages): rebuilt so here, as an old store has it.
    with sqlite3.connect(index_path(root), isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA page_size=4096")
        db.execute("VACUUM")
        db.execute("PRAGMA journal_mode=WAL")
    assert page_size(root) == 4096

    store = LocalBlockStore(root)
    try:
        second = small_blocks(40, 2)
        store.put_many(items(second))
        every = first + second
        assert store.get_many([block_hash(d) for d in every]) == every
        assert store.touch_sizes([block_hash(d) for d in every]) == [len(d) for d in every]
    finally:
        store.close()
    assert page_size(root) == 4096  # (kept: a page size changes only by a VACUUM)


def test_a_touch_of_many_rows_writes_each_page_once_to_the_wal_and_nothing_else(tmp_path):
    root = str(tmp_path / "store")
    store = LocalBlockStore(root)
    try:
        datas = small_blocks(6000, 3)
        for i in range(0, len(datas), 500):
            store.put_many(items(datas[i:i + 500]))
        with sqlite3.connect(index_path(root)) as db:
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        size = page_size(root)
        hashes = [block_hash(d) for d in datas]
        random.Random(4).shuffle(hashes)
        before = wchar()
        # One transaction, statements of 500 hashes each, touching most of the index's pages
        # (its WAL well under the checkpoint's mark: nothing else writes meanwhile).
        sizes = {block_hash(d): len(d) for d in datas}
        assert store.touch_sizes(hashes) == [sizes[h] for h in hashes]
        written = wchar() - before
    finally:
        store.close()
    # Each changed page once, as a WAL frame (24-byte header), and the WAL's own header.  A
    # statement journal spilled to a temporary file (past 64 KiB: ~300 pages a statement
    # here) would add a copy of every page each statement changed.
    assert written <= pages * (size + 24) + 4096, (written, pages, size)

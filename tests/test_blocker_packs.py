"""LocalBlockStore's packed layout (pithos.blocker.packs) where the contract suite cannot reach:
a writer or a compactor killed with SIGKILL loses nothing acknowledged and leaves no index row
pointing at bytes that are not its record; compaction under concurrent readers and writers
(another store on the same directory, as another process) never makes a live block vanish;
`pithos store compact` and `pithos gc` give dead records' space back."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from pithos.blocker import Blocker, LocalBlockStore
from pithos.blocker.packs import HEADER, MAGIC
from pithos.core.errors import NotFound
from pithos.core.hashing import block_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(n: int, seed: int, low: int = 1, high: int = 64 * 1024) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    datas = [rng.randbytes(rng.randint(low, high)) for _ in range(n)]
    return [(block_hash(d), d) for d in datas]


def index_rows(path) -> list[tuple[bytes, int, int, int]]:
    with sqlite3.connect(os.path.join(path, "packs", "index.sqlite")) as db:
        return [(bytes(h), p, o, n) for h, p, o, n in
                db.execute("SELECT hash, pack, offset, length FROM blocks")]


def assert_every_row_names_its_whole_record(path) -> None:
    """No row points at torn or foreign bytes: each record's header names the row's hash and
    length, and its data hashes to it."""
    for h, pack, offset, length in index_rows(path):
        with open(os.path.join(path, "packs", f"{pack:016x}.pack"), "rb") as f:
            f.seek(offset)
            record = f.read(HEADER.size + length)
        assert HEADER.unpack(record[:HEADER.size]) == (MAGIC, h, length)
        assert block_hash(record[HEADER.size:]) == h


def pack_bytes(path) -> int:
    packs = os.path.join(path, "packs")
    return sum(os.path.getsize(os.path.join(packs, n)) for n in os.listdir(packs)
               if n.endswith(".pack"))


def child(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


WRITER = """
import os, random, sys
from pithos.blocker import LocalBlockStore
from pithos.core.hashing import block_hash
store = LocalBlockStore(sys.argv[1], pack_roll_bytes=256 * 1024)
rng = random.Random(int(sys.argv[2]))
most = int(sys.argv[3])  # blocks per batch (past ~32, a batch is often written direct)
while True:
    batch = [rng.randbytes(rng.randint(1, 64 * 1024)) for _ in range(rng.randint(1, most))]
    store.put_many([(block_hash(d), d) for d in batch])
    # Acknowledged: the put returned.
    sys.stdout.write("".join(block_hash(d).hex() + "\\n" for d in batch))
    sys.stdout.flush()
"""


@pytest.mark.parametrize("most", [24, 96])  # batches under 1.5 MiB; up to 6 MiB (direct)
def test_a_writer_killed_mid_append_loses_nothing_acknowledged(tmp_path, most):
    path = str(tmp_path / "b")
    acked: list[bytes] = []
    for seed in range(3):
        proc = child(WRITER, path, str(seed), str(most))
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            want = len(acked) + 150 + 100 * seed
            while len(acked) < want:
                line = proc.stdout.readline()
                assert line and time.monotonic() < deadline, "the writer stopped"
                acked.append(bytes.fromhex(line.decode().strip()))
            proc.kill()  # SIGKILL, wherever it is: mid-append, mid-sync or mid-commit
        finally:
            proc.kill()
            proc.wait(timeout=30)
    with LocalBlockStore(path) as store:
        got = Blocker(store).get_many(acked)  # verified: every one whole and right
        assert len(got) == len(acked)
    assert_every_row_names_its_whole_record(path)


COMPACTOR = """
import sys
from pithos.blocker import LocalBlockStore
store = LocalBlockStore(sys.argv[1])
print("start", flush=True)
store.compact(0.0)
print("done", flush=True)
"""


def test_a_compaction_killed_anywhere_loses_nothing_and_a_later_one_finishes(tmp_path):
    path = str(tmp_path / "b")
    items = blocks(1200, seed=1, high=8 * 1024)
    with LocalBlockStore(path, pack_roll_bytes=64 * 1024) as store:
        for i in range(0, len(items), 100):
            store.put_many(items[i:i + 100])
        dead = [h for h, _ in items[::2]]
        assert store.delete_many(dead) == len(dead)
    live = items[1::2]
    before = pack_bytes(path)
    for delay in (0.0, 0.01, 0.03, 0.1, 0.3):
        proc = child(COMPACTOR, path)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"start\n"
            time.sleep(delay)  # (where it is killed varies; what must hold does not)
            proc.kill()
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert_every_row_names_its_whole_record(path)
        with LocalBlockStore(path) as store:
            assert Blocker(store).get_many([h for h, _ in live]) == [d for _, d in live]
    with LocalBlockStore(path) as store:
        store.compact(0.0)  # (what the killed ones left: copies no row names, old packs)
        assert Blocker(store).get_many([h for h, _ in live]) == [d for _, d in live]
        assert store.missing([h for h, _ in items]) == dead
    assert_every_row_names_its_whole_record(path)
    # The dead half is given back (the live records, framed, are what is left).
    live_bytes = sum(len(d) + HEADER.size for _, d in live)
    assert pack_bytes(path) < before
    assert pack_bytes(path) <= live_bytes * 1.05


def test_compaction_under_concurrent_readers_and_writers_keeps_every_live_block(tmp_path):
    path = str(tmp_path / "b")
    keep = blocks(300, seed=2, high=16 * 1024)
    writers_store = LocalBlockStore(path, pack_roll_bytes=32 * 1024)
    compactor_store = LocalBlockStore(path)  # another process would open its own
    errors: list[BaseException] = []
    stop = threading.Event()
    compacted = []

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                stop.set()
        return run

    @guarded
    def writer() -> None:
        for round_ in range(60):
            churn = blocks(20, seed=1000 + round_, high=16 * 1024)
            writers_store.put_many(churn)
            writers_store.put_many(keep[round_ * 5:(round_ + 1) * 5])  # re-put: refresh
            writers_store.delete_many([h for h, _ in churn[:15]])
            if stop.is_set():
                return

    @guarded
    def reader() -> None:
        hashes = [h for h, _ in keep]
        while not stop.is_set():
            for i in range(0, len(hashes), 37):
                part = keep[i:i + 37]
                assert writers_store.get_many([h for h, _ in part]) == [d for _, d in part]
                h, d = part[0]
                assert writers_store.read(h, 1, 100) == d[1:101]
            assert writers_store.missing(hashes) == []

    @guarded
    def compactor() -> None:
        while not stop.is_set():
            compacted.append(compactor_store.compact(0.0))

    writers_store.put_many(keep)
    threads = [threading.Thread(target=t) for t in (reader, reader, compactor)]
    for t in threads:
        t.start()
    guarded(writer)()
    stop.set()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
        assert sum(r["compacted"] + r["removed"] for r in compacted) > 0
        assert compactor_store.compact(0.0) is not None
        assert Blocker(writers_store).get_many([h for h, _ in keep]) == [d for _, d in keep]
    finally:
        writers_store.close()
        compactor_store.close()
    assert_every_row_names_its_whole_record(path)


def test_a_block_deleted_while_compaction_copies_it_stays_deleted(tmp_path):
    """The row of a record deleted between compaction's read and its move is not brought
    back: the move only updates rows that still point at the old place."""
    path = str(tmp_path / "b")
    items = blocks(40, seed=3, high=4096)
    with LocalBlockStore(path, pack_roll_bytes=1) as store:  # a pack per batch
        store.put_many(items[:20])
        store.put_many(items[20:])
        store.delete_many([h for h, _ in items[:10]])
        packs = store._packs_rw()
        original = packs.append

        def append_then_delete(records):
            placed = original(records)
            if any(h == items[10][0] for h, _ in records):
                store.delete_many([items[10][0]])  # between the copy and the move
            return placed

        packs.append = append_then_delete  # type: ignore[method-assign]
        assert store.compact(0.0)["compacted"] == 1
        with pytest.raises(NotFound):
            store.get_many([items[10][0]])
        assert store.missing([h for h, _ in items]) == [h for h, _ in items[:11]]
        assert store.get_many([h for h, _ in items[11:]]) == [d for _, d in items[11:]]


def test_pithos_store_compact_and_gc_give_back_dead_records(pithos_cli, tmp_path):
    pithos_cli("store", "stats")  # makes the data directory
    path = str(pithos_cli.data_dir / "blocks")
    items = blocks(200, seed=4, high=16 * 1024)
    with LocalBlockStore(path, pack_roll_bytes=64 * 1024) as store:
        store.put_many(items)
        store.delete_many([h for h, _ in items[:150]])
    before = pack_bytes(path)
    report = json.loads(pithos_cli("store", "compact", "--json").stdout)
    assert report["compacted"] + report["removed"] >= 1 and report["reclaimed_bytes"] > 0
    assert pack_bytes(path) == before - report["reclaimed_bytes"]
    # Nothing names the rest: gc sweeps them, then its compaction gives their packs back.
    gc = json.loads(pithos_cli("gc", "--json", "--clock-margin", "0").stdout)
    assert gc["reclaimed_blocks"] == 50
    assert gc["compaction"]["reclaimed_bytes"] > 0
    assert pack_bytes(path) == 0
    assert json.loads(pithos_cli("store", "stats", "--json").stdout)["blocks"] == 0
    bad = pithos_cli("store", "compact", "--min-garbage", "2", check=False)
    assert bad.returncode == 1 and b"between 0 and 1" in bad.stderr


def test_a_touch_leaves_rows_stamped_since_fresh_since_unwritten(tmp_path):
    """A hashmap upload's touch of the chunks it sent a moment before (stamped at or after
    the time its lease pins) reads their rows and writes none of them: their stamps stay,
    nothing is appended to the index's WAL, and only the older rows are stamped anew."""
    store = LocalBlockStore(str(tmp_path / "s"), io_threads=2, pack_min_batch=1)
    try:
        old = blocks(20, seed=7)
        store.put_many(old)
        time.sleep(0.05)
        since = time.time()
        time.sleep(0.05)
        new = blocks(50, seed=8)
        store.put_many(new)
        db = sqlite3.connect(str(tmp_path / "s" / "packs" / "index.sqlite"))

        def stamps() -> dict[bytes, float]:
            return {bytes(h): s for h, s in db.execute("SELECT hash, stamp FROM blocks")}

        wal = tmp_path / "s" / "packs" / "index.sqlite-wal"
        before, wal_before = stamps(), wal.stat().st_size
        assert store.touch_sizes([h for h, _ in new], fresh_since=since) == \
            [len(d) for _, d in new]
        assert stamps() == before  # only read
        assert wal.stat().st_size == wal_before
        assert store.touch_many([h for h, _ in old + new], fresh_since=since) == []
        after = stamps()
        assert all(after[h] > before[h] for h, _ in old)  # the older ones stamped anew
        assert all(after[h] == before[h] for h, _ in new)
        db.close()
    finally:
        store.close()

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import CountingPool

from pithos.blocker import LocalBlockStore
from pithos.blocker.local import _LOOKUPS_PER_TASK, _MAP_TASKS, PACK_MAX, PACK_MIN_BATCH
from pithos.core.offload import Offload
from tests.blocker_contract import PartsStoreContract, blob, cutoff_between


class TestLocalBlockStore(PartsStoreContract):
    @pytest.fixture(params=["syncfs", "file", "syncfs-cooperative", "file-cooperative",
                            "syncfs-files", "file-files", "syncfs-packed"])
    def store(self, request, tmp_path):
        # Under a cooperative offload (as under the server), small syncfs puts run in one
        # pool task: those paths, driven from plain threads.  Blocks up to 64 KiB are packed
        # by default (in puts of 5 or more); "files" packs none (the layout before packs),
        # "packed" every block put whole without an outboard, whatever its size or number.
        sync, _, mode = request.param.partition("-")
        pool = ThreadPoolExecutor(max_workers=4) if mode == "cooperative" else None
        offload = Offload(pool, cooperative=True, spawner=pool) if pool is not None else None
        pack_max = {"files": 0, "packed": 1 << 30}.get(mode, PACK_MAX)
        s = LocalBlockStore(tmp_path / "blocks", sync=sync, offload=offload, pack_max=pack_max,
                            pack_min_batch=1 if mode == "packed" else PACK_MIN_BATCH)
        yield s
        s.close()
        if pool is not None:
            pool.shutdown(wait=True)


@pytest.mark.parametrize("pack_max", [0, PACK_MAX])
def test_many_files_looked_for_under_a_loop_take_a_few_pool_tasks(tmp_path, pack_max):
    """Under a loop every file look-up leaves its thread, but a call over many files (a CDC
    upload's touch of its chunks, absent from the index: ~250 for 4 MiB) hands the pool a few
    tasks, not one per file (a hand-off costs more than the look-up), and answers each file
    in its place.  Up to _LOOKUPS_PER_TASK files left after the index's answer are looked for
    in the index's own task: one hand-off for a small upload's chunks."""
    pool = CountingPool(4)
    offload = Offload(pool, cooperative=True, spawner=pool)
    with LocalBlockStore(tmp_path / "b", offload=offload, pack_max=pack_max) as store:
        present = [blob(100 + i) for i in range(3)]  # (3: files, never packed)
        store.put_many(present)
        packed = [blob(2000 + i) for i in range(6)]  # (6: packed, where packs are)
        store.put_many(packed)
        sizes = {h: len(d) for h, d in present + packed}
        absent = [blob(100 + i)[0] for i in range(50)]
        hashes = absent[:20] + [present[0][0]] + absent[20:40] + [h for h, _ in present[1:]] \
            + [h for h, _ in packed] + absent[40:]
        assert len(hashes) <= _LOOKUPS_PER_TASK
        pool.tasks = 0
        assert store.touch_sizes(hashes) == [sizes.get(h) for h in hashes]
        assert pool.tasks == 1
        pool.tasks = 0
        assert store.missing(hashes) == absent
        assert pool.tasks == 1
        many = [blob(5000 + i)[0] for i in range(10 * _LOOKUPS_PER_TASK)]
        pool.tasks = 0
        assert store.touch_sizes(many + hashes) == [None] * len(many) + \
            [sizes.get(h) for h in hashes]
        assert pool.tasks <= _MAP_TASKS + 1  # (+1: the packs index's refresh)
        pool.tasks = 0
        assert store.missing(many + hashes) == many + absent
        assert pool.tasks <= _MAP_TASKS + 1
    pool.shutdown(wait=True)


def test_blocks_survive_reopening(tmp_path):
    items = [blob(n) for n in (10, 5000)]
    with LocalBlockStore(tmp_path / "b") as store:
        store.put_many(items)
    with LocalBlockStore(tmp_path / "b") as store:
        assert store.get_many([h for h, _ in items]) == [d for _, d in items]


def test_temporary_files_are_never_listed_as_blocks(tmp_path):
    with LocalBlockStore(tmp_path / "b") as store:
        h, data = blob()
        (tmp_path / "b" / "tmp" / f"{h.hex()}.123.0").write_bytes(data[:10])
        (tmp_path / "b" / "ab" / "not-a-block").write_bytes(b"x")
        assert list(store.iterate()) == []
        assert store.missing([h]) == [h]
        assert store.stale_tmp_files() == [f"{h.hex()}.123.0"]


def test_only_dead_writers_temporary_files_are_leftovers(tmp_path):
    import fcntl

    store = LocalBlockStore(tmp_path / "b")
    stale = tmp_path / "b" / "tmp" / "dead.1.0"
    stale.write_bytes(b"partial")  # nobody holds it: its writer is gone
    live = tmp_path / "b" / "tmp" / "live.2.0"
    live.write_bytes(b"being written")
    os.utime(live, (0, 0))  # however old: its writer holds it
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert store.leftovers() == ["tmp/dead.1.0"]
        LocalBlockStore(tmp_path / "b").close()  # opening a store removes nothing
        assert stale.exists()
        assert store.remove_leftovers() == ["tmp/dead.1.0"]
        assert not stale.exists() and live.exists()
        assert store.remove_leftovers() == []
    assert store.remove_leftovers() == ["tmp/live.2.0"]  # its writer let go without renaming
    store.close()


def test_streamed_block_leaves_no_temporary_file(tmp_path):
    with LocalBlockStore(tmp_path / "b") as store:
        h, data = blob(100_000)
        writer = store.open_writer()
        writer.write(data)
        assert len(store.stale_tmp_files()) == 1  # written while it arrives
        writer.commit(h)
        dropped = store.open_writer()
        dropped.write(data)
        dropped.abort()
        again = store.open_writer()
        again.write(data)
        again.commit(h)  # present: the new copy is dropped
        assert store.stale_tmp_files() == []
    with LocalBlockStore(tmp_path / "b") as store:
        assert store.get_many([h]) == [data]


def test_a_store_made_before_the_quarantine_gains_it_at_its_first_quarantine(tmp_path):
    (h, good), (_, bad) = blob(3000, seed=1), blob(3000, seed=2)
    with LocalBlockStore(tmp_path / "b") as store:
        store.put_many([(h, bad)])
    os.rmdir(tmp_path / "b" / "quarantine")
    with LocalBlockStore(tmp_path / "b") as store:
        assert not (tmp_path / "b" / "quarantine").exists()  # opening creates nothing
        assert store.quarantined() == [] and store.quarantined([h]) == []
        assert store.quarantine_many([(h, bad)]) == [h]
        assert store.quarantined() == [h]
        store.put_many([(h, good)])
        assert store.get_many([h]) == [good]


def test_an_interrupted_quarantine_is_undone_when_a_store_is_opened(tmp_path):
    h, data = blob(3000)
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:  # (a file of its own)
        store.put_many([(h, data)])
        path = store._path(h)
    # Killed between its two renames: the block sits under an undecided name.
    os.rename(path, tmp_path / "b" / "quarantine" / f"{h.hex()}.123.0")
    with LocalBlockStore(tmp_path / "b") as store:
        assert store.get_many([h]) == [data]  # put back, for the next read to judge
        assert store.quarantined() == []
        assert os.listdir(tmp_path / "b" / "quarantine") == []


def test_a_block_stored_as_a_file_and_sent_again_in_a_batch_is_one_block(tmp_path):
    # A packed put does not look for a file of each new block (a failed look-up per chunk):
    # a block that is a file already (a small object's, a map page's) and comes again in a
    # batch is packed beside it.  The pair is one block: listed once, read whole, as young
    # as the put, still there after a sweep whose cutoff falls between the two puts (the
    # record is young), and gone, both copies, after a delete.
    with LocalBlockStore(tmp_path / "b") as store:
        old = blob(3000)
        store.put_many([old])  # alone: a file
        assert os.path.exists(store.locate(old[0]).path)
        cutoff = cutoff_between()
        batch = [old] + [blob(3000) for _ in range(PACK_MIN_BATCH)]
        store.put_many(batch)
        packs = store._packs_ro()
        assert packs is not None and old[0] in packs.lookup([old[0]])  # beside its file
        assert store.get_many([h for h, _ in batch]) == [d for _, d in batch]
        assert [h for h, _ in store.iterate()].count(old[0]) == 1
        (age,) = store.age_s([old[0]])
        assert age is not None and age < time.time() - cutoff
        store.delete_if_put_before([old[0]], cutoff)
        assert store.get_many([old[0]]) == [old[1]]
        assert store.missing([old[0]]) == []
        store.delete_many([old[0]])
        assert store.missing([old[0]]) == [old[0]]
        assert [h for h, _ in store.iterate()].count(old[0]) == 0

"""The garbage collector: it removes exactly the blocks no root reaches that are older than
its mark, and nothing a concurrent writer needs."""

import io
import os
import time
from functools import partial

import pytest

from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore
from pithos.mapper import Mapper, gc
from pithos.mapper.gc import UnsafeToSweep

# File timestamps are coarse (a few ms): a small margin, and waits longer than it.
collect = partial(gc.collect, clock_margin_s=0.05)


@pytest.fixture(params=["memory", "local"])
def mapper(request, tmp_path):
    store = MemoryBlockStore() if request.param == "memory" else LocalBlockStore(tmp_path / "b")
    m = Mapper(Blocker(store), block_size=1024, fanout=4)
    yield m
    m.blocker.close()


def stored(mapper):
    return {h for h, _ in mapper.blocker.iterate()}


def reachable(mapper, root):
    return set(mapper.page_hashes(root)) | {h for h, _ in mapper.entries(root)}


def test_sweeps_exactly_the_unreachable(mapper):
    keep, _ = mapper.build(io.BytesIO(os.urandom(20_000)))
    drop, _ = mapper.build(io.BytesIO(os.urandom(20_000)))
    shared = mapper.write(keep, 5000, b"x" * 10)  # shares most blocks with keep
    dropped = reachable(mapper, drop) - reachable(mapper, keep) - reachable(mapper, shared)
    before = stored(mapper)
    time.sleep(0.1)  # older than the mark by more than the margin
    dry = collect(mapper.blocker, [keep, shared], dry_run=True)
    assert stored(mapper) == before  # a dry run deletes nothing
    report = collect(mapper.blocker, [keep, shared])
    assert stored(mapper) == reachable(mapper, keep) | reachable(mapper, shared)
    assert report.reclaimed_blocks == dry.garbage_blocks == len(before - stored(mapper))
    assert dropped and not dropped & stored(mapper)
    assert mapper.read_all(keep) and mapper.read_all(shared)
    again = collect(mapper.blocker, [keep, shared])  # restartable: a second run is a no-op
    assert again.reclaimed_blocks == 0


def test_blocks_put_after_the_mark_or_during_an_upload_are_spared(mapper):
    keep, _ = mapper.build(io.BytesIO(os.urandom(5000)))
    upload_started = time.time()
    orphan, _ = mapper.build(io.BytesIO(os.urandom(5000)))  # an upload not yet committed
    orphan_blocks = reachable(mapper, orphan)
    time.sleep(0.1)
    report = collect(mapper.blocker, [keep], oldest_upload=upload_started)
    assert orphan_blocks <= stored(mapper)
    assert report.spared_young_blocks >= len(orphan_blocks)
    time.sleep(0.1)
    report = collect(mapper.blocker, [keep])  # the upload is over (never committed)
    assert not orphan_blocks & stored(mapper)


def test_late_roots_are_marked_before_sweeping(mapper):
    keep, _ = mapper.build(io.BytesIO(os.urandom(5000)))
    late, _ = mapper.build(io.BytesIO(os.urandom(5000)))
    time.sleep(0.1)
    calls = []

    def late_roots():
        calls.append(1)
        return [late] if len(calls) == 1 else []

    collect(mapper.blocker, [keep], late_roots=late_roots)
    assert calls and mapper.read_all(late)


def test_an_unwalkable_map_stops_the_sweep(mapper):
    keep, _ = mapper.build(io.BytesIO(os.urandom(30_000)))
    garbage, _ = mapper.build(io.BytesIO(os.urandom(3000)))
    time.sleep(0.1)
    pages = mapper.page_hashes(keep)
    assert len(pages) > 1
    mapper.blocker.delete_many([pages[1]])  # an interior page lost: its children are unknown
    before = stored(mapper)
    with pytest.raises(UnsafeToSweep):
        collect(mapper.blocker, [keep])
    assert stored(mapper) == before
    forced = collect(mapper.blocker, [keep], force=True)
    assert forced.unwalkable_roots and garbage not in stored(mapper)

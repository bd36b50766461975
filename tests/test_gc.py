"""The garbage collector: it removes exactly the blocks no root reaches that are older than
its mark, and nothing a concurrent writer needs."""

import io
import os
import threading
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


def test_a_block_re_put_between_the_scan_and_the_delete_is_kept(mapper):
    # An upload re-puts the blocks of an old unreferenced map and commits a version naming it
    # after the collector's last look at the roots, just before the sweep's delete: the
    # delete must see them young.  (The collector used to read the ages, then delete the old
    # ones: a re-put in between was lost.)
    keep, _ = mapper.build(io.BytesIO(os.urandom(5000)))
    data = os.urandom(5000)
    revived, _ = mapper.build(io.BytesIO(data))
    dropped, _ = mapper.build(io.BytesIO(os.urandom(5000)))
    garbage = reachable(mapper, dropped) - reachable(mapper, revived) - reachable(mapper, keep)
    time.sleep(0.1)
    store = mapper.blocker.store
    committed = []

    def racing(delete):
        def run(hashes, *args):
            if not committed:  # the upload, between the collector's scan and its delete
                assert mapper.build(io.BytesIO(data))[0] == revived
                committed.append(revived)
            return delete(hashes, *args)
        return run

    for name in ("delete_many", "delete_if_put_before"):
        setattr(store, name, racing(getattr(store, name)))
    report = collect(mapper.blocker, [keep], late_roots=lambda: [])
    assert committed == [revived]
    assert mapper.read_all(revived) == data
    assert reachable(mapper, revived) <= stored(mapper)
    assert garbage and not garbage & stored(mapper)
    assert report.spared_young_blocks >= len(reachable(mapper, revived) - reachable(mapper, keep))
    assert report.reclaimed_blocks == report.garbage_blocks == len(garbage)


def test_uploads_reviving_old_garbage_while_collectors_run(mapper):
    # An uploader keeps re-putting the blocks of old unreferenced maps and committing them,
    # while collectors sweep one after another, each told the roots committed (before and
    # during its run) and the start of the upload in flight, as `pithos gc` is by the catalog
    # and the upload leases.  Every committed map stays readable.
    contents = [os.urandom(3000) for _ in range(40)]
    for data in contents:
        mapper.build(io.BytesIO(data))
    # A wider clock margin than the other tests': the collector's thread may stall between
    # reading the upload in flight and starting its mark (as the margin allows in production).
    margin = 0.3
    time.sleep(margin + 0.1)
    lock = threading.Lock()
    committed = []
    in_flight = []  # the start of the upload in flight, if any
    errors = []

    def upload():
        try:
            for data in contents:
                with lock:
                    in_flight.append(time.time())
                root, _ = mapper.build(io.BytesIO(data))
                with lock:
                    committed.append((root, data))
                    in_flight.clear()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=upload)
    writer.start()
    sweeps = 0
    while writer.is_alive() or sweeps == 0:
        with lock:
            seen = len(committed)
            roots = [root for root, _ in committed]
            oldest = in_flight[0] if in_flight else None

        def late_roots():
            nonlocal seen
            with lock:
                new, seen = committed[seen:], len(committed)
            return [root for root, _ in new]

        gc.collect(mapper.blocker, roots, oldest_upload=oldest, late_roots=late_roots,
                   clock_margin_s=margin)
        sweeps += 1
    writer.join()
    assert errors == []
    assert len(committed) == len(contents)
    for root, data in committed:
        assert mapper.read_all(root) == data

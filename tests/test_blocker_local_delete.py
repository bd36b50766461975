"""LocalBlockStore's conditional delete (`delete_if_put_before`): it moves a block to trash/,
reads the time of the file it moved, then unlinks it or puts it back; a refresh checks that the
name is still there after its utime; a store opened puts back what a killed delete left in the
trash.  The contract suite (tests/blocker_contract.py) tests the behaviour every store shares;
these force the interleavings particular to files.
Blocks of their own files here (pack_max=0): small blocks are packed by default
(pithos.blocker.packs)."""

import os
import threading
import time
from functools import partial

import pytest

from pithos.blocker import LocalBlockStore
from pithos.core.errors import NotFound
from tests.blocker_contract import blob


def _cutoff_after_put(store, items):
    store.put_many(items)
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    return cutoff


def test_a_block_left_in_the_trash_by_a_crash_is_put_back_on_open(tmp_path):
    a, b = blob(), blob()
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        store.put_many([a, b])
        # Killed between moving the blocks to the trash and deciding: b was also stored anew
        # by a writer meanwhile (the trash holds an older copy).
        os.rename(store._path(a[0]), f"{store._trash}/{a[0].hex()}.999.0")
        os.rename(store._path(b[0]), f"{store._trash}/{b[0].hex()}.999.1")
        store.put_many([b])
        (tmp_path / "b" / "trash" / "not-a-block").write_bytes(b"x")
        assert store.missing([a[0], b[0]]) == [a[0]]
        assert [h for h, _ in store.iterate()] == [b[0]]  # the trash is not listed
        assert len(store.trash_files()) == 3
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        assert store.get_many([a[0], b[0]]) == [a[1], b[1]]
        assert store.trash_files() == ["not-a-block"]  # only block names are put back
        assert sorted(h for h, _ in store.iterate()) == sorted([a[0], b[0]])


def test_a_refresh_just_before_the_move_to_trash_keeps_the_block(tmp_path, monkeypatch):
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        touched, reput = blob(), blob()
        cutoff = _cutoff_after_put(store, [touched, reput])
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            # The delete has read the block as old; a writer refreshes it before the move.
            if str(dst).startswith(store._trash):
                h = bytes.fromhex(os.path.basename(str(src)))
                if h == touched[0]:
                    assert store.touch_many([h]) == []
                else:
                    store.put_many([reput])
            return real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "rename", rename)
        assert store.delete_if_put_before([touched[0], reput[0]], cutoff) == []
        monkeypatch.undo()
        assert store.get_many([touched[0], reput[0]]) == [touched[1], reput[1]]
        assert store.trash_files() == []


@pytest.mark.parametrize("refresh", ["touch", "put", "writer"])
def test_a_refresh_landing_after_the_delete_decided_counts_the_block_absent(
        tmp_path, monkeypatch, refresh):
    # utime looks the path up, then sets the time: a delete may move the file and decide
    # (old: unlink) in between, so the new time lands on a file that is gone.  The refresh
    # must not report the block present: a touch says absent, a put stores it anew.
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        h, data = blob()
        cutoff = _cutoff_after_put(store, [(h, data)])
        real_utime = os.utime
        removed = []

        def utime(path, *args, **kwargs):
            if str(path) == store._path(h) and not removed:
                fd = os.open(path, os.O_RDONLY)  # the lookup, before the delete
                try:
                    removed.extend(store.delete_if_put_before([h], cutoff))
                    return real_utime(fd, *args, **kwargs)  # the change, after it
                finally:
                    os.close(fd)
            return real_utime(path, *args, **kwargs)

        monkeypatch.setattr(os, "utime", utime)
        if refresh == "touch":
            assert store.touch_many([h]) == [h]
        elif refresh == "put":
            store.put_many([(h, data)])
        else:
            writer = store.open_writer()
            writer.write(data)
            writer.commit(h)
        monkeypatch.undo()
        assert removed == [h]
        if refresh == "touch":
            assert store.missing([h]) == [h]
        else:
            assert store.get_many([h]) == [data]
        assert store.trash_files() == []


def test_puts_racing_conditional_deletes_in_threads(tmp_path):
    # Many writers re-put old blocks while deleters sweep them: every block a put returned
    # for is whole and readable at the end, and the trash is empty.
    with LocalBlockStore(tmp_path / "b", sync="file", pack_max=0) as store:
        items = [blob(1000) for _ in range(200)]
        cutoff = _cutoff_after_put(store, items)
        errors = []

        def run(fn):
            try:
                fn()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def writer(part):
            for item in items[part::3]:
                store.put_many([item])

        def deleter(step):
            for i in range(0, len(items), step):
                store.delete_if_put_before([h for h, _ in items[i:i + step]], cutoff)

        threads = [threading.Thread(target=run, args=(partial(writer, p),)) for p in range(3)]
        threads += [threading.Thread(target=run, args=(partial(deleter, s),)) for s in (1, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.get_many([h for h, _ in items]) == [d for _, d in items]
        assert store.trash_files() == []


def test_a_reader_puts_back_a_block_it_finds_in_the_trash(tmp_path):
    # A block refreshed just before a delete moved it, and named by a version committed at
    # once, may be read before the delete links it back: the reader links it back itself.
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        a, b, c = blob(), blob(5000), blob()
        store.put_many([a, b])
        os.rename(store._path(a[0]), f"{store._trash}/{a[0].hex()}.999.0")
        os.rename(store._path(b[0]), f"{store._trash}/{b[0].hex()}.999.1")
        with pytest.raises(NotFound) as info:
            store.get_many([a[0], c[0]])
        assert info.value.hashes == [c[0]]  # a was put back, c is absent
        assert store.get_many([a[0]]) == [a[1]]
        assert store.read(b[0], 100, 10) == b[1][100:110]
        assert store.trash_files() == []
        with pytest.raises(NotFound):
            store.read(c[0], 0, 1)

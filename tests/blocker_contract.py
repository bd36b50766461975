"""The BlockStore contract suite.  Every backend's test module subclasses `BlockStoreContract`
and provides a `store` fixture; nothing else (see test_blockstore_*.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pithos.blocker import BlockStore
from pithos.blocker.store import PartsStore, PartsWriter
from pithos.core.errors import InvalidArgument, NotFound
from pithos.core.hashing import block_hash


def blob(n: int = 1000, seed: int | None = None) -> tuple[bytes, bytes]:
    data = os.urandom(n) if seed is None else bytes((seed + i) % 251 for i in range(n))
    return block_hash(data), data


def cutoff_between() -> float:
    """A cutoff after every put so far and before every put to come.  The pauses exceed the
    granularity of every store's timestamps (a file's mtime comes from the kernel's clock
    tick, a few ms behind time.time())."""
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    return cutoff


class BlockStoreContract:
    """Subclasses define the `store` fixture yielding an empty BlockStore."""

    def test_put_then_get(self, store: BlockStore) -> None:
        items = [blob(n) for n in (0, 1, 4096, 100_000)]
        store.put_many(items)
        assert store.get_many([h for h, _ in items]) == [d for _, d in items]

    def test_sizes_give_each_blobs_length_or_none(self, store: BlockStore) -> None:
        items = [blob(n) for n in (0, 1, 4096, 100_000)]
        store.put_many(items)
        absent = blob(7)[0]
        hashes = [h for h, _ in items]
        assert store.sizes([*hashes, absent, hashes[2]]) == [0, 1, 4096, 100_000, None, 4096]
        assert store.sizes([]) == []
        # The default (reading the blobs) agrees with the store's own look-up.
        assert BlockStore.sizes(store, [*hashes, absent]) == [0, 1, 4096, 100_000, None]

    def test_put_takes_any_bytes_like_data(self, store: BlockStore) -> None:
        items = [blob(5000), blob(7000), blob(100)]
        store.put_many([(items[0][0], bytearray(items[0][1])),
                        (items[1][0], memoryview(items[1][1])), items[2]])
        assert store.get_many([h for h, _ in items]) == [d for _, d in items]
        assert all(type(d) is bytes for d in store.get_many([h for h, _ in items]))

    def test_get_many_keeps_order_and_duplicates(self, store: BlockStore) -> None:
        a, b = blob(), blob()
        store.put_many([a, b])
        assert store.get_many([b[0], a[0], b[0]]) == [b[1], a[1], b[1]]

    def test_get_missing_raises_listing_every_absent(self, store: BlockStore) -> None:
        a, b, c = blob(), blob(), blob()
        store.put_many([a])
        with pytest.raises(NotFound) as info:
            store.get_many([a[0], b[0], c[0]])
        assert sorted(info.value.hashes) == sorted([b[0], c[0]])

    def test_put_existing_is_a_noop_keeping_bytes(self, store: BlockStore) -> None:
        h, data = blob()
        store.put_many([(h, data)])
        store.put_many([(h, data)])
        store.put_many([(h, data), (h, data)])
        assert store.get_many([h]) == [data]
        assert [x for x, _ in store.iterate()] == [h]

    def test_put_refreshes_age(self, store: BlockStore) -> None:
        h, data = blob()
        store.put_many([(h, data)])
        (first,) = store.age_s([h])
        assert first is not None and first >= 0
        store.put_many([(h, data)])
        (second,) = store.age_s([h])
        assert second is not None and second <= first + 0.5
        assert store.age_s([blob()[0]]) == [None]

    def test_touch_refreshes_and_reports_absent(self, store: BlockStore) -> None:
        import time

        a, b = blob(), blob()
        store.put_many([a])
        time.sleep(1.1)
        (old,) = store.age_s([a[0]])
        assert old is not None and old >= 1.0
        assert store.touch_many([b[0], a[0], b[0]]) == [b[0]]
        (fresh,) = store.age_s([a[0]])
        assert fresh is not None and fresh < old
        assert store.get_many([a[0]]) == [a[1]]  # bytes untouched
        assert store.missing([b[0]]) == [b[0]]  # touching never creates

    def test_touch_sizes(self, store: BlockStore) -> None:
        """touch_sizes refreshes as touch_many does and gives each size (None: absent), in
        the order asked, for blocks put in a batch of small ones (packed where a store packs
        them) and for a large one."""
        small = [blob(1000 + i) for i in range(8)]
        big = blob(70_000)
        store.put_many([*small, big])
        time.sleep(1.1)
        (old,) = store.age_s([small[3][0]])
        assert old is not None and old >= 1.0
        absent = blob()[0]
        asked = [absent, small[3][0], big[0], small[0][0], small[3][0]]
        assert store.touch_sizes(asked) == [None, 1003, 70_000, 1000, 1003]
        (fresh,) = store.age_s([small[3][0]])
        assert fresh is not None and fresh < old
        assert store.missing([absent]) == [absent]  # touching never creates
        assert store.touch_sizes([]) == []

    def test_touch_fresh_since(self, store: BlockStore) -> None:
        """With `fresh_since`, a block put before it is refreshed, one put at or after it
        may be left as it is; either way every present block is then one a sweep with that
        cutoff spares, and each size (None: absent) comes back in the order asked."""
        small = [blob(2000 + i) for i in range(6)]
        store.put_many(small)
        time.sleep(1.1)
        since = cutoff_between()
        late = [blob(3000 + i) for i in range(6)]
        store.put_many(late)
        absent = blob()[0]
        asked = [late[1][0], absent, small[2][0], late[4][0], small[2][0]]
        assert store.touch_sizes(asked, fresh_since=since) == [3001, None, 2002, 3004, 2002]
        assert store.touch_many([small[0][0], absent, late[0][0]], fresh_since=since) \
            == [absent]
        named = [small[0][0], small[2][0], late[0][0], late[1][0], late[4][0]]
        assert store.delete_if_put_before(named, since) == []
        assert store.missing([absent]) == [absent]  # touching never creates
        assert store.delete_if_put_before([small[1][0]], since) == [small[1][0]]  # not named

    def test_missing(self, store: BlockStore) -> None:
        a, b, c = blob(), blob(), blob()
        store.put_many([a, c])
        assert store.missing([]) == []
        assert store.missing([a[0], b[0], c[0], b[0]]) == [b[0]]

    def test_read_ranges(self, store: BlockStore) -> None:
        h, data = blob(10_000)
        store.put_many([(h, data)])
        assert store.read(h, 0, 10) == data[:10]
        assert store.read(h, 5000, 100) == data[5000:5100]
        assert store.read(h, 9990, 100) == data[9990:]  # short at the end
        assert store.read(h, 10_000, 5) == b""
        assert store.read(h, 20_000, 5) == b""
        assert store.read(h, 3, 0) == b""
        with pytest.raises(InvalidArgument):
            store.read(h, -1, 5)
        with pytest.raises(InvalidArgument):
            store.read(h, 0, -5)
        with pytest.raises(NotFound):
            store.read(blob()[0], 0, 1)

    def test_delete(self, store: BlockStore) -> None:
        a, b = blob(), blob()
        store.put_many([a, b])
        assert store.delete_many([a[0], a[0]]) == 1
        assert store.delete_many([a[0]]) == 0  # repeat-safe
        assert store.missing([a[0], b[0]]) == [a[0]]
        assert store.get_many([b[0]]) == [b[1]]
        store.put_many([a])  # a deleted block can come back
        assert store.get_many([a[0]]) == [a[1]]

    # -- conditional delete (the garbage collector's) -------------------------------------------

    def test_delete_if_put_before_removes_only_older_blocks(self, store: BlockStore) -> None:
        a, b, c = blob(), blob(), blob()
        store.put_many([a, b])
        cutoff = cutoff_between()
        store.put_many([c])
        absent = blob()[0]
        assert store.delete_if_put_before([a[0], c[0], absent, a[0]], cutoff) == [a[0]]
        assert store.missing([a[0], b[0], c[0]]) == [a[0]]
        assert store.get_many([b[0], c[0]]) == [b[1], c[1]]
        assert store.delete_if_put_before([a[0]], cutoff) == []  # repeat-safe
        assert store.delete_if_put_before([], cutoff) == []
        # Everything was put before a cutoff in the future (order kept, each once).
        later = time.time() + 60
        assert store.delete_if_put_before([c[0], b[0], c[0]], later) == [c[0], b[0]]
        assert list(store.iterate()) == []
        store.put_many([a])  # a removed block can come back
        assert store.get_many([a[0]]) == [a[1]]

    def test_delete_if_put_before_spares_blocks_re_put_or_touched_since(
            self, store: BlockStore) -> None:
        a, b, c = blob(), blob(), blob(3000)
        store.put_many([a, b, c])
        cutoff = cutoff_between()
        store.put_many([a])  # re-put: the bytes are not written again, the age is refreshed
        assert store.touch_many([b[0]]) == []  # referenced without its bytes
        writer = store.open_writer()  # a streamed upload of a block already present
        writer.write(c[1])
        writer.commit(c[0])
        assert store.delete_if_put_before([a[0], b[0], c[0]], cutoff) == []
        assert store.get_many([a[0], b[0], c[0]]) == [a[1], b[1], c[1]]

    def test_a_block_re_put_between_age_and_delete_is_kept(self, store: BlockStore) -> None:
        # The sweep the old collector did: read the ages, pick the old blocks, delete them.  A
        # writer re-puts one of them in between (and would then commit a version naming it).
        keep, drop = blob(), blob()
        store.put_many([keep, drop])
        cutoff = cutoff_between()
        ages = store.age_s([keep[0], drop[0]])
        now = time.time()
        assert all(age is not None and now - age < cutoff for age in ages)  # both old
        store.put_many([keep])
        assert store.delete_if_put_before([keep[0], drop[0]], cutoff) == [drop[0]]
        assert store.get_many([keep[0]]) == [keep[1]]
        assert store.missing([drop[0]]) == [drop[0]]

    def test_puts_and_touches_racing_conditional_deletes_keep_their_blocks(
            self, store: BlockStore) -> None:
        # Every block is old; one thread re-puts or touches them while another deletes the old
        # ones.  A block whose put returned, or whose touch said present, must then be there.
        rounds, n = 3, 60
        for _ in range(rounds):
            items = [blob(2000) for _ in range(n)]
            store.put_many(items)
            cutoff = cutoff_between()
            touched_present: list[tuple[bytes, bytes]] = []
            errors: list[BaseException] = []

            def writer(items: list[tuple[bytes, bytes]] = items,
                       touched_present: list[tuple[bytes, bytes]] = touched_present,
                       errors: list[BaseException] = errors) -> None:
                try:
                    for i, item in enumerate(items):
                        if i % 2:
                            store.put_many([item])
                        elif store.touch_many([item[0]]) == []:
                            touched_present.append(item)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            def deleter(items: list[tuple[bytes, bytes]] = items, cutoff: float = cutoff,
                        errors: list[BaseException] = errors) -> None:
                try:
                    for i in range(0, len(items), 4):
                        store.delete_if_put_before([h for h, _ in items[i:i + 4]], cutoff)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=writer), threading.Thread(target=deleter)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            must_have = items[1::2] + touched_present
            assert store.missing([h for h, _ in must_have]) == []
            assert store.get_many([h for h, _ in must_have]) == [d for _, d in must_have]
            # and nothing else is left half there: the rest is absent or whole
            present = set(h for h, _ in store.iterate())
            assert store.get_many([h for h, _ in items if h in present]) == [
                d for h, d in items if h in present]
            store.delete_many([h for h, _ in items])

    def test_iterate_sorted_with_sizes(self, store: BlockStore) -> None:
        items = [blob(n) for n in range(1, 300, 7)]
        store.put_many(items)
        listed = list(store.iterate())
        assert listed == sorted((h, len(d)) for h, d in items)

    def test_iterate_resumes_after_a_hash(self, store: BlockStore) -> None:
        items = [blob(50) for _ in range(40)]
        store.put_many(items)
        everything = [h for h, _ in store.iterate()]
        for cut in (0, 1, 17, 38, 39):
            resumed = [h for h, _ in store.iterate(start_after=everything[cut])]
            assert resumed == everything[cut + 1:]
        assert [h for h, _ in store.iterate(start_after=b"\xff" * 32)] == []
        assert [h for h, _ in store.iterate(start_after=b"\x00" * 32)] == everything

    def test_empty_store(self, store: BlockStore) -> None:
        assert list(store.iterate()) == []
        assert store.get_many([]) == []
        assert store.delete_many([]) == 0

    def test_large_batch(self, store: BlockStore) -> None:
        items = [blob(4096) for _ in range(200)]
        store.put_many(items)
        assert store.missing([h for h, _ in items]) == []
        assert store.get_many([h for h, _ in items]) == [d for _, d in items]

    def test_concurrent_puts_of_the_same_blocks(self, store: BlockStore) -> None:
        items = [blob(20_000, seed=i) for i in range(20)]
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(5):
                    store.put_many(items)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.get_many([h for h, _ in items]) == [d for _, d in items]
        assert len(list(store.iterate())) == len(items)

    # -- streamed writes (open_writer) ---------------------------------------------------------

    def test_writer_stores_the_pieces_under_the_hash_at_commit(self, store: BlockStore) -> None:
        h, data = blob(300_000)
        writer = store.open_writer()
        for i in range(0, len(data), 65_536):
            writer.write(data[i:i + 65_536])
        if isinstance(writer, PartsWriter):
            writer.keep_outboard(os.urandom(64))  # an aid: no store may refuse the blob for it
        assert store.missing([h]) == [h]  # nothing visible before the commit
        writer.commit(h)
        assert store.get_many([h]) == [data]
        assert [x for x, _ in store.iterate()] == [h]

    def test_writer_commit_of_a_present_hash_keeps_bytes_and_refreshes(
            self, store: BlockStore) -> None:
        import time

        h, data = blob()
        store.put_many([(h, data)])
        time.sleep(1.1)
        writer = store.open_writer()
        writer.write(data)
        writer.commit(h)
        (age,) = store.age_s([h])
        assert age is not None and age < 1.0
        assert store.get_many([h]) == [data]
        assert [x for x, _ in store.iterate()] == [h]

    def test_writer_abort_leaves_nothing(self, store: BlockStore) -> None:
        h, data = blob()
        writer = store.open_writer()
        writer.write(data)
        writer.abort()
        writer.abort()
        assert store.missing([h]) == [h]
        assert list(store.iterate()) == []

    def test_writer_of_an_empty_blob(self, store: BlockStore) -> None:
        h, _ = blob(0)
        writer = store.open_writer()
        writer.commit(h)
        assert store.get_many([h]) == [b""]

    # -- quarantine (blocks heal) ----------------------------------------------------------------

    def test_quarantine_moves_the_damaged_bytes_aside_and_a_put_stores_afresh(
            self, store: BlockStore) -> None:
        (h, good), (_, bad) = blob(5000, seed=1), blob(5000, seed=2)
        other = blob(300)
        store.put_many([(h, bad), other])  # the store never checks: damage stands in for rot
        assert store.quarantined() == [] and store.quarantined([h]) == []
        assert store.quarantine_many([(h, bad), (h, bad)]) == [h]
        assert store.missing([h, other[0]]) == [h]
        with pytest.raises(NotFound):
            store.get_many([h])
        assert [x for x, _ in store.iterate()] == [other[0]]
        assert store.quarantined() == [h]
        assert store.quarantined([other[0], h, h]) == [h]
        assert store.quarantine_many([(h, bad)]) == []  # repeat: absent now
        store.put_many([(h, good)])  # heals
        assert store.get_many([h]) == [good]
        assert store.quarantined([h]) == [h]  # the damaged copy is kept for the operator
        assert store.get_many([other[0]]) == [other[1]]

    def test_quarantine_never_moves_a_copy_stored_since_the_read(self, store: BlockStore) -> None:
        (h, good), (_, bad) = blob(4000, seed=3), blob(4000, seed=4)
        store.put_many([(h, bad)])
        assert store.quarantine_many([(h, bad)]) == [h]
        store.put_many([(h, good)])
        # A second reader that saw the same damage before the heal: the new copy stays.
        assert store.quarantine_many([(h, bad)]) == []
        assert store.get_many([h]) == [good]
        # Bytes other than the stored ones (another read, another damage): nothing moves.
        assert store.quarantine_many([(h, good[:-1] + b"?")]) == []
        assert store.quarantine_many([(blob()[0], b"absent")]) == []
        assert store.get_many([h]) == [good]

    def test_a_present_blob_of_another_size_is_quarantined_and_replaced_by_a_put(
            self, store: BlockStore) -> None:
        (h, good), (g, streamed) = blob(6000, seed=5), blob(70_000, seed=6)
        store.put_many([(h, good[:1000]), (g, streamed + b"tail")])  # truncated, and longer
        store.put_many([(h, good)])
        writer = store.open_writer()
        writer.write(streamed)
        writer.commit(g)
        assert store.get_many([h, g]) == [good, streamed]
        assert store.quarantined([h, g]) == [h, g]
        assert sorted(x for x, _ in store.iterate()) == sorted([h, g])

    def test_quarantines_racing_a_heal_move_only_the_damaged_copy(
            self, store: BlockStore) -> None:
        # Readers that all found the same damage quarantine it at once while a writer stores
        # the block again until it reads back whole: the damaged copy is moved once, and the
        # copy stored afresh never.
        for round_ in range(10):
            (h, good), (_, bad) = blob(20_000, seed=round_), blob(20_000, seed=100 + round_)
            store.put_many([(h, bad)])
            start = threading.Barrier(5)
            moved: list[bytes] = []
            errors: list[BaseException] = []

            def reader(h: bytes = h, bad: bytes = bad, start: threading.Barrier = start,
                       moved: list[bytes] = moved, errors: list[BaseException] = errors) -> None:
                try:
                    start.wait()
                    moved.extend(store.quarantine_many([(h, bad)]))
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            def writer(h: bytes = h, good: bytes = good, start: threading.Barrier = start,
                       errors: list[BaseException] = errors) -> None:
                try:
                    start.wait()
                    while True:
                        store.put_many([(h, good)])
                        try:
                            if store.get_many([h]) == [good]:
                                return
                        except NotFound:
                            pass
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=reader) for _ in range(4)]
            threads.append(threading.Thread(target=writer))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            assert moved == [h]
            assert store.get_many([h]) == [good]


class PartsStoreContract(BlockStoreContract):
    """For stores that offer verified part reads (PartsStore): the `store` fixture yields
    one."""

    def test_put_with_outboards_stores_the_blobs_and_keeps_them_only_as_given(
            self, store: PartsStore) -> None:
        """Outboards are an aid the store may keep or ignore, never checked: a store that
        keeps one hands back exactly it (with the blob's bytes); the blob reads the same."""
        items = [blob(3 * 1024 * 1024, seed=1), blob(2000)]
        given = {items[0][0]: os.urandom(64)}
        store.put_many(items, given)
        assert store.get_many([h for h, _ in items]) == [d for _, d in items]
        reader = store.open_parts(items[0][0])
        if reader is not None:
            try:
                assert reader.outboard == given[items[0][0]]
                assert reader.size == len(items[0][1])
                assert reader.read(1000, 5000) == items[0][1][1000:6000]
            finally:
                reader.close()
        # A blob stored without one keeps none.
        plain = store.open_parts(items[1][0])
        if plain is not None:
            try:
                assert plain.outboard == b""
            finally:
                plain.close()

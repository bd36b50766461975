"""The mapper against a plain bytes model: builds, range reads, copy-on-write updates, and old
roots that keep reading old content."""

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pithos.blocker import Blocker, MemoryBlockStore
from pithos.core.errors import IntegrityError, InvalidArgument, NotFound
from pithos.core.hashing import block_hash, merkle_root
from pithos.mapper import Mapper, codec
from pithos.mapper.mapper import PAGE_UNITS

BS = 16  # tiny blocks and pages so that small data makes deep trees


def make_mapper(block_size=BS, fanout=3, batch_bytes=40):
    return Mapper(Blocker(MemoryBlockStore()), block_size=block_size, fanout=fanout,
                  batch_bytes=batch_bytes)


def blocks_in(mapper):
    return {h for h, _ in mapper.blocker.iterate()}


def assert_cached_pages_are_stored(mapper):
    """Pages the mapper caches as it builds (not read back) are exactly what it stored."""
    for h, page in list(mapper._cache.items()):
        assert tuple(page) == codec.decode_page(mapper.blocker.get(h)), h.hex()


payload = st.binary(max_size=200) | st.builds(lambda n: bytes(n), st.integers(0, 100))


class MapMachine(RuleBasedStateMachine):
    """One current map and every earlier root with the content it had."""

    @initialize(data=payload, fanout=st.integers(2, 5))
    def start(self, data, fanout):
        self.mapper = make_mapper(fanout=fanout)
        self.root, size = self.mapper.build(io.BytesIO(data))
        assert size == len(data)
        self.model = bytes(data)
        self.history = [(self.root, self.model)]

    def _commit(self, root, model):
        self.root, self.model = root, bytes(model)
        self.history.append((root, self.model))

    @rule(offset=st.integers(0, 300), data=payload)
    def write(self, offset, data):
        root = self.mapper.write(self.root, offset, data)
        model = bytearray(self.model)
        if offset > len(model):
            model += bytes(offset - len(model))
        model[offset:offset + len(data)] = data
        self._commit(root, model)

    @rule(data=payload)
    def append(self, data):
        self._commit(self.mapper.append(self.root, data), self.model + data)

    @rule(data=payload)
    def append_stream(self, data):
        self._commit(self.mapper.append(self.root, io.BytesIO(data)), self.model + data)

    @rule(size=st.integers(0, 400))
    def truncate(self, size):
        model = self.model[:size] + bytes(max(0, size - len(self.model)))
        self._commit(self.mapper.truncate(self.root, size), model)

    @rule(offset=st.integers(0, 450), length=st.integers(0, 450) | st.none())
    def read_range(self, offset, length):
        got = self.mapper.read_all(self.root, offset, length)
        want = self.model[offset:] if length is None else self.model[offset:offset + length]
        assert got == want

    @precondition(lambda self: len(self.history) > 1)
    @rule(pick=st.integers(0, 1000))
    def old_root_reads_old_content(self, pick):
        root, content = self.history[pick % len(self.history)]
        assert self.mapper.read_all(root) == content

    @invariant()
    def size_and_canonical_shape(self):
        if not hasattr(self, "root"):
            return
        assert_cached_pages_are_stored(self.mapper)
        stat = self.mapper.stat(self.root)
        assert stat.size == len(self.model)
        # Every entry but the last is a full block, and the root depends only on the content.
        lengths = [n for _, n in self.mapper.entries(self.root)]
        assert all(n == BS for n in lengths[:-1])
        assert stat.entries == len(lengths)
        rebuilt, _ = self.mapper.build(io.BytesIO(self.model))
        assert rebuilt == self.root


MapMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestMapMachine = MapMachine.TestCase


def test_build_many_keeps_order_and_sizes():
    mapper = make_mapper()
    contents = [os.urandom(n) for n in (0, 1, 15, 16, 17, 100, 1000, 3)] + [bytes(64)]
    results = list(mapper.build_many(io.BytesIO(c) for c in contents))
    assert [size for _, size in results] == [len(c) for c in contents]
    for (root, _), content in zip(results, contents, strict=True):
        assert mapper.read_all(root) == content


def test_same_content_same_root_and_no_new_blocks():
    mapper = make_mapper()
    data = os.urandom(500)
    root, _ = mapper.build(io.BytesIO(data))
    before = blocks_in(mapper)
    again, _ = mapper.build(io.BytesIO(data))
    assert again == root
    assert blocks_in(mapper) == before


def test_copy_is_the_same_root():
    mapper = make_mapper()
    root, _ = mapper.build(io.BytesIO(b"x" * 100))
    assert mapper.read_all(root) == b"x" * 100  # a copy is just the root, read again


def test_overwrite_shares_untouched_pages_and_blocks():
    mapper = make_mapper(fanout=4)
    data = os.urandom(BS * 64)  # 64 entries: 16 leaves, 4 level-1 pages, 1 root
    root, _ = mapper.build(io.BytesIO(data))
    old_pages = set(mapper.page_hashes(root))
    before = blocks_in(mapper)
    at = BS * 10 + 3
    new_root = mapper.write(root, at, bytes([data[at] ^ 0xFF]))  # (never the byte it was)
    new_blocks = blocks_in(mapper) - before
    new_pages = set(mapper.page_hashes(new_root)) - old_pages
    # One data block, and one page per level on the path to the root (leaf, level 1, root).
    assert len(new_pages) == 3
    assert new_blocks == new_pages | {h for h, _ in mapper.entries(new_root, 10, 11)}
    assert len(set(mapper.page_hashes(new_root)) & old_pages) == len(old_pages) - 3


def test_append_touches_only_the_tail():
    mapper = make_mapper(fanout=4)
    root, _ = mapper.build(io.BytesIO(os.urandom(BS * 64 + 5)))
    before = blocks_in(mapper)
    new_root = mapper.append(root, b"tail")
    assert len(blocks_in(mapper) - before) <= 1 + 4  # the refilled last block + its path
    assert mapper.read_all(new_root)[-9:-4] == mapper.read_all(root)[-5:]


def test_zero_blocks_are_stored_once_and_read_without_io():
    mapper = make_mapper()
    root, size = mapper.build(io.BytesIO(bytes(BS * 40)))
    assert size == BS * 40
    zero = block_hash(bytes(BS))
    assert {h for h, _ in mapper.entries(root)} == {zero}
    assert zero in blocks_in(mapper)  # stored once, so maps never name an absent block
    mapper.blocker.store.delete_many([zero])
    assert mapper.read_all(root, 5, 100) == bytes(100)


def test_object_hash_is_merkle_of_entries():
    mapper = make_mapper()
    root, _ = mapper.build(io.BytesIO(os.urandom(100)))
    assert mapper.object_hash(root) == merkle_root([h for h, _ in mapper.entries(root)])


def test_unknown_root_and_non_map_block():
    mapper = make_mapper()
    with pytest.raises(NotFound):
        mapper.read_all(block_hash(b"nothing"))
    data_block = mapper.blocker.put(b"just some data, not a map page")
    with pytest.raises(IntegrityError):
        mapper.stat(data_block)


def test_bad_arguments():
    mapper = make_mapper()
    root = mapper.empty()
    with pytest.raises(InvalidArgument):
        mapper.write(root, -1, b"x")
    with pytest.raises(InvalidArgument):
        mapper.truncate(root, -1)
    with pytest.raises(InvalidArgument):
        list(mapper.read(root, -1, 3))
    with pytest.raises(InvalidArgument):
        Mapper(mapper.blocker, block_size=mapper.blocker.block_size + 1)


def test_corrupt_block_fails_the_read():
    mapper = make_mapper()
    root, _ = mapper.build(io.BytesIO(os.urandom(100)))
    h, _ = next(mapper.entries(root, 2, 3))
    store = mapper.blocker.store
    store._blobs[h] = b"?" * len(store._blobs[h])
    with pytest.raises(IntegrityError):
        mapper.read_all(root)
    assert mapper.read_all(root, 0, 2 * BS) is not None  # blocks before it still read


@pytest.mark.parametrize("fanout", [2, 1024])
def test_streams_of_awkward_reads(fanout):
    class Trickle(io.RawIOBase):
        """Returns at most 7 bytes per read, like a slow socket."""

        def __init__(self, data):
            self.data = memoryview(data)

        def readable(self):
            return True

        def read(self, n=-1):
            out, self.data = self.data[:min(7, n if n >= 0 else 7)], self.data[min(7, n):]
            return bytes(out)

    mapper = make_mapper(fanout=fanout)
    data = os.urandom(1000)
    root, size = mapper.build(Trickle(data))
    assert size == 1000 and mapper.read_all(root) == data


@given(st.lists(st.binary(max_size=120), min_size=1, max_size=4), st.data())
@settings(max_examples=60, deadline=None)
def test_concat_of_ranges(contents, data):
    mapper = make_mapper()
    roots = [mapper.build(io.BytesIO(c))[0] for c in contents]
    parts, want = [], b""
    for _ in range(data.draw(st.integers(0, 5))):
        k = data.draw(st.integers(0, len(contents) - 1))
        off = data.draw(st.integers(0, len(contents[k])))
        length = data.draw(st.none() | st.integers(0, len(contents[k]) - off))
        parts.append((roots[k], off, length))
        want += contents[k][off:] if length is None else contents[k][off:off + length]
    root, size = mapper.concat(parts)
    assert size == len(want)
    assert mapper.read_all(root) == want
    # Whole maps are named again entry for entry, not copied.
    if all(p[1] == 0 and p[2] is None for p in parts):
        assert list(mapper.entries(root)) == [e for r, _, _ in parts for e in mapper.entries(r)]


def test_read_ahead_gives_the_same_bytes():
    from concurrent.futures import ThreadPoolExecutor

    mapper = make_mapper()
    data = os.urandom(BS * 50 + 7)
    root, _ = mapper.build(io.BytesIO(data))
    with ThreadPoolExecutor(2) as pool:
        for offset, length in ((0, None), (5, 300), (BS * 3, BS * 20 + 1)):
            got = b"".join(mapper.read(root, offset, length, batch_blocks=3, prefetch=pool))
            want = data[offset:] if length is None else data[offset:offset + length]
            assert got == want
        pieces = list(mapper.pieces(root, 0, 40)) + list(mapper.pieces(root, 100, 40))
        assert b"".join(mapper.read_pieces(pieces, 2, pool)) == data[:40] + data[100:140]


# Contents made of whole blocks of data or zeros and ragged ends, so that streamed builds meet
# every case: blocks of several pieces, zero blocks, zero pieces before data, short last blocks.
_block_kinds = st.sampled_from(["data", "zero", "zero-then-data", "short"])


@given(st.lists(_block_kinds, max_size=6), st.sampled_from([1, 3, 4, 16]),
       st.sampled_from(["local", "memory"]))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
def test_build_stream_gives_the_canonical_map(tmp_path_factory, kinds, piece, backend):
    """A streamed build names the same root as `build` (the canonical tree), stores exactly
    the blocks `build` stores, and reads back the content."""
    from pithos.blocker import LocalBlockStore

    content = bytearray()
    for kind in kinds:
        if kind == "data":
            content += os.urandom(BS)
        elif kind == "zero":
            content += bytes(BS)
        elif kind == "zero-then-data":
            content += bytes(BS // 2) + os.urandom(BS // 2)
        else:
            content += os.urandom(BS // 3)
    if backend == "local":
        store = LocalBlockStore(tmp_path_factory.mktemp("blocks"), sync="file")
    else:
        store = MemoryBlockStore()
    streamed = Mapper(Blocker(store), block_size=BS, fanout=3)
    reference = make_mapper(fanout=3)
    try:
        root, size = streamed.build_stream(io.BytesIO(bytes(content)), piece_size=piece)
        want_root, want_size = reference.build(io.BytesIO(bytes(content)))
        assert (root, size) == (want_root, want_size)
        assert root in streamed._cache  # (the grant reads the map straight back)
        assert_cached_pages_are_stored(streamed)
        assert streamed.read_all(root) == bytes(content)
        assert blocks_in(streamed) == blocks_in(reference)
        if backend == "local":
            assert store.stale_tmp_files() == []
    finally:
        streamed.blocker.close()


class _RecordingPool:
    """A read-ahead executor that runs each task at once and keeps the batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def submit(self, fn, batch):
        from concurrent.futures import Future

        self.batches.append(list(batch))
        future: Future = Future()
        future.set_result(fn(batch))
        return future


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=400), st.integers(1, 3),
       st.integers(0, 2**32))
def test_reads_of_small_blocks_go_in_batches_of_full_blocks_bytes(lengths, batch_blocks,
                                                                   seed):
    """Content-defined chunks far under the block size: a read fetches them hundreds at a
    time, within the bytes of `batch_blocks` full blocks, the first batch `batch_blocks` of
    them (the reader waits for it); the bytes are the map's either way."""
    import random

    from pithos.mapper.mapper import READ_BATCH_MAX

    bs = 4096
    mapper = make_mapper(block_size=bs, fanout=64)
    rng = random.Random(seed)
    datas = [rng.randbytes(n) for n in lengths]
    hashes = mapper.blocker.put_many(datas)
    root = mapper.store_entries(hashes, lengths)
    data = b"".join(datas)
    pool = _RecordingPool()
    assert b"".join(mapper.read(root, batch_blocks=batch_blocks, prefetch=pool)) == data
    assert b"".join(mapper.read(root, batch_blocks=batch_blocks)) == data
    first, *rest = pool.batches
    assert len(first) == min(batch_blocks, len(lengths))
    for batch in rest:
        assert 1 <= len(batch) <= READ_BATCH_MAX
        assert len(batch) == 1 or sum(p.block_length for p in batch) <= batch_blocks * bs
    # Hundreds at a time: as many batches as the bytes need, not one per `batch_blocks`.
    assert len(rest) <= 2 * (-(-sum(lengths) // (batch_blocks * bs))) + 1


def test_build_stream_leaves_what_read_returned_as_it_was():
    """A stream's read() may return a bytearray in short pieces (the body reader hands each to
    the MD5 queue as it goes): building must join them into new objects, never grow a piece
    it was given."""
    block_size = 4096
    data = os.urandom(3 * block_size + 123)

    class ShortReads(io.RawIOBase):
        def __init__(self):
            self.at = 0
            self.given = []

        def read(self, n=-1):
            n = min(777, len(data) - self.at if n < 0 else n)
            piece = bytearray(data[self.at:self.at + n])
            self.at += n
            self.given.append((piece, bytes(piece)))
            return piece

    stream = ShortReads()
    mapper = make_mapper(block_size=block_size)
    root, size = mapper.build_stream(stream, piece_size=block_size // 2)
    assert size == len(data) and mapper.read_all(root) == data
    assert all(piece == as_given for piece, as_given in stream.given)


def test_build_stream_of_a_failing_stream_leaves_no_partial_block(tmp_path):
    from pithos.blocker import LocalBlockStore

    class Broken(io.RawIOBase):
        def __init__(self):
            self.sent = 0

        def readable(self):
            return True

        def read(self, n=-1):
            if self.sent >= BS + 5:
                raise ConnectionResetError("client went away")
            self.sent += 5
            return os.urandom(5)

    store = LocalBlockStore(tmp_path / "b", sync="file")
    mapper = Mapper(Blocker(store), block_size=BS, fanout=3)
    with pytest.raises(ConnectionResetError):
        mapper.build_stream(Broken(), piece_size=4)
    # The first whole block may be stored (it is garbage for the collector); the one that was
    # arriving is not, and no temporary file is left.
    assert store.stale_tmp_files() == []
    assert len(list(store.iterate())) <= 1
    mapper.blocker.close()


def test_block_stream_names_and_caps(tmp_path):
    blocker = Blocker(MemoryBlockStore(), block_size=BS)
    stream = blocker.open_stream()
    stream.write(b"a" * 10)
    stream.write(memoryview(b"b" * 6))
    h = stream.finish()
    assert h == block_hash(b"a" * 10 + b"b" * 6) and blocker.get(h) == b"a" * 10 + b"b" * 6
    over = blocker.open_stream()
    over.write(b"x" * BS)
    with pytest.raises(InvalidArgument):
        over.write(b"y")
    over.abort()
    assert blocker.missing([block_hash(b"x" * BS)]) == [block_hash(b"x" * BS)]
    blocker.close()


def test_the_page_cache_is_bounded_by_entries_not_pages():
    """A one-entry page weighs 1 + PAGE_UNITS: a bound of 40 such pages keeps the last 40
    maps' pages (readable with their pages gone from the store), not the first.  (Uploads
    build with build_stream, which keeps the pages it stores.)"""
    store = MemoryBlockStore()
    mapper = Mapper(Blocker(store), block_size=BS, fanout=3, page_cache=40 * (1 + PAGE_UNITS))
    roots = [mapper.build_stream(io.BytesIO(os.urandom(BS)))[0] for _ in range(60)]
    Blocker(store).delete_many(roots)  # the pages only: the data blocks stay
    for root in roots[-40:]:
        assert len(mapper.read_all(root)) == BS
    with pytest.raises(NotFound):
        mapper.read_all(roots[0])
    assert mapper._cache_units == sum(len(p.hashes) + PAGE_UNITS
                                      for p in mapper._cache.values())
    assert mapper._cache_units <= 40 * (1 + PAGE_UNITS)


def test_the_default_page_cache_keeps_thousands_of_small_maps():
    """4 MiB objects' maps are one page of one entry each: thousands are kept (on RADOS each
    page not kept costs a GET a read from the OSD), where 256 pages were."""
    store = MemoryBlockStore()
    mapper = Mapper(Blocker(store), block_size=BS)
    roots = [mapper.build_stream(io.BytesIO(os.urandom(BS)))[0] for _ in range(3000)]
    Blocker(store).delete_many(roots)
    assert all(len(mapper.read_all(root)) == BS for root in roots)


def test_the_page_cache_keeps_the_pages_read_lately():
    """Least recently used first out: a map read again and again keeps its page while more
    than the bound of others are stored after it."""
    store = MemoryBlockStore()
    mapper = Mapper(Blocker(store), block_size=BS, fanout=3, page_cache=10 * (1 + PAGE_UNITS))
    hot, _ = mapper.build_stream(io.BytesIO(os.urandom(BS)))
    Blocker(store).delete_many([hot])  # its page only in the cache from now on
    others = []
    for _ in range(30):
        others.append(mapper.build_stream(io.BytesIO(os.urandom(BS)))[0])
        assert len(mapper.read_all(hot)) == BS
    Blocker(store).delete_many(others)
    with pytest.raises(NotFound):
        mapper.read_all(others[0])

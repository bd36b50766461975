"""LocalBlockStore and the page cache: large written blocks leave it once durable, cold blocks
are read past it (O_DIRECT) and let in when read cold again; every path returns the bytes.
Blocks of their own files here (pack_max=0): small blocks are packed by default
(pithos.blocker.packs)."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.api.body import PieceBuffers
from pithos.blocker import LocalBlockStore, pagecache
from pithos.core.hashing import block_hash
from pithos.core.offload import Offload

LARGE = 1 << 20
SMALL = 4096
PIECE = 512 * 1024


def cached(store: LocalBlockStore, hash_: bytes) -> int:
    fd = os.open(store._path(hash_), os.O_RDONLY)
    try:
        pages = pagecache.cached_pages(fd)
    finally:
        os.close(fd)
    assert pages is not None, "cachestat(2) is missing: this kernel is older than 6.5"
    return pages


def pages(size: int) -> int:
    return -(-size // os.sysconf("SC_PAGESIZE"))


def block(size: int, seed: int = 0) -> tuple[bytes, bytes]:
    data = (seed.to_bytes(4, "little") + os.urandom(16)) * (size // 20 + 1)
    data = data[:size]
    return block_hash(data), data


def evict(store: LocalBlockStore, hash_: bytes) -> None:
    fd = os.open(store._path(hash_), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(params=["syncfs", "file", "syncfs-cooperative", "file-cooperative", "streamed"])
def put(request, tmp_path):
    """A store, and a function that stores one block the way the parameter says
    ("cooperative": the store's paths for an event loop, driven from plain threads)."""
    mode, _, cooperative = request.param.partition("-")
    pool = ThreadPoolExecutor(max_workers=4) if cooperative else None
    offload = Offload(pool, cooperative=True, spawner=pool) if pool is not None else None
    store = LocalBlockStore(tmp_path / "blocks", sync="syncfs" if mode == "streamed" else mode,
                            offload=offload, pack_max=0)

    def put_one(hash_: bytes, data: bytes) -> None:
        if mode == "streamed":
            writer = store.open_writer()
            for at in range(0, len(data), 512 * 1024):
                writer.write(data[at:at + 512 * 1024])
            writer.commit(hash_)
        else:
            store.put_many([(hash_, data)])

    yield store, put_one
    store.close()
    if pool is not None:
        pool.shutdown(wait=True)


def test_large_blocks_leave_the_page_cache_small_ones_stay(put):
    store, put_one = put
    large, small = block(LARGE, 1), block(SMALL, 2)
    put_one(*large)
    put_one(*small)
    assert cached(store, large[0]) == 0
    assert cached(store, small[0]) == pages(SMALL)  # map pages and small objects stay
    assert store.get_many([large[0], small[0]]) == [large[1], small[1]]


def test_a_block_put_again_keeps_its_cached_pages(put):
    """Only what a put writes leaves the cache: a block found present may be one that is
    read (a hot block uploaded again)."""
    store, put_one = put
    h, data = block(LARGE, 3)
    put_one(h, data)
    with open(store._path(h), "rb") as f:
        f.read()
    assert cached(store, h) == pages(LARGE)
    put_one(h, data)
    assert cached(store, h) == pages(LARGE)


def test_a_cold_block_is_read_past_the_cache_and_let_in_when_read_cold_again(tmp_path):
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        h, data = block(LARGE + 123)
        store.put_many([(h, data)])
        assert cached(store, h) == 0
        assert store.get_many([h]) == [data]
        assert cached(store, h) == 0  # read with O_DIRECT: nothing cached
        assert store.get_many([h]) == [data]
        assert cached(store, h) == pages(LARGE + 123)  # read again: now through the cache
        assert store.get_many([h]) == [data]  # and served from it


def test_a_cached_block_is_read_through_the_cache(tmp_path):
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        h, data = block(LARGE)
        store.put_many([(h, data)])
        with open(store._path(h), "rb") as f:  # something else read it: cached
            f.read()
        assert store.get_many([h]) == [data]
        assert store.get_many([h]) == [data]
        assert cached(store, h) == pages(LARGE)


def test_cold_reads_remember_a_bounded_number_of_blocks(tmp_path):
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        store._reads = pagecache.ReadPolicy(remembered=2)
        blocks = [block(LARGE, i) for i in range(3)]
        store.put_many(blocks)
        for h, data in blocks:  # the first is forgotten when the third is read
            assert store.get_many([h]) == [data]
        assert store.get_many([blocks[0][0]]) == [blocks[0][1]]
        assert cached(store, blocks[0][0]) == 0
        assert store.get_many([blocks[2][0]]) == [blocks[2][1]]
        assert cached(store, blocks[2][0]) == pages(LARGE)


@settings(max_examples=25, deadline=None)
@given(size=st.one_of(
    st.sampled_from([1, 511, 512, 4095, 4096, 4097, pagecache.DROP_MIN_BYTES - 1,
                     pagecache.DROP_MIN_BYTES, 4 << 20, (4 << 20) + 1]),
    st.integers(1, 5 << 20)))
def test_every_size_reads_back_whatever_path_it_takes(tmp_path_factory, size):
    """Unaligned sizes, sizes past the pooled buffer: cold (O_DIRECT), cold again (through the
    cache) and cached reads all return the block."""
    with LocalBlockStore(tmp_path_factory.mktemp("b"), pack_max=0) as store:
        h, data = block(size, size)
        store.put_many([(h, data)])
        for _ in range(2):
            evict(store, h)
            assert store.get_many([h]) == [data]
        assert store.get_many([h]) == [data]


def stream_in_pieces(store, data, others=0):
    """Stream `data` as a block in pieces held in page-aligned receive buffers (the server's),
    with `others` more writers open meanwhile; returns the pages cached after each piece."""
    busy = [store.open_writer() for _ in range(others)]
    writer = store.open_writer()
    after = []
    for at in range(0, len(data), PIECE):
        piece = PieceBuffers(PIECE, 1).take()
        n = len(data[at:at + PIECE])
        piece[:n] = data[at:at + PIECE]
        writer.write(memoryview(piece)[:n])
        after.append(pagecache.cached_pages(writer._fd))
    writer.commit(block_hash(data))
    for other in busy:
        other.abort()
    return after


def test_under_load_aligned_pieces_are_written_past_the_cache(tmp_path):
    """With three blocks streaming at once, pieces in aligned buffers go to the disk with
    O_DIRECT; an unaligned tail goes through the cache; the block reads back whole."""
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        data = block(3 * PIECE + 1000)[1]
        assert stream_in_pieces(store, data, others=2) == [0, 0, 0, 1]
        assert store.get_many([block_hash(data)]) == [data]
        assert store._writing == set()  # every writer is done


@pytest.mark.parametrize("others", [0, 1])
def test_one_or_two_streams_write_through_the_cache(tmp_path, others):
    """Without load a direct write would put the disk's latency on the upload's path."""
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        data = block(2 * PIECE)[1]
        assert stream_in_pieces(store, data, others) == [pages(PIECE), pages(2 * PIECE)]
        assert cached(store, block_hash(data)) == 0  # and left it once durable
        assert store.get_many([block_hash(data)]) == [data]


def test_unaligned_pieces_are_written_through_the_cache(tmp_path):
    with LocalBlockStore(tmp_path / "b", pack_max=0) as store:
        busy = [store.open_writer() for _ in range(2)]
        h, data = block(2 * PIECE)
        writer = store.open_writer()
        writer.write(data[:PIECE])  # bytes: read-only, its address cannot be told
        assert pagecache.cached_pages(writer._fd) == pages(PIECE)
        writer.write(data[PIECE:])
        writer.commit(h)
        for other in busy:
            other.abort()
        assert cached(store, h) == 0
        assert store.get_many([h]) == [data]

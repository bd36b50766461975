"""Blocks read part by part (Blocker.read_parts over LocalBlockStore.open_parts): a streamed
block keeps its tree outboard beside it, its parts come out verified and in order, a missing
or wrong outboard costs only the whole-block read, and corrupt bytes are never handed out."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
from conftest import native_module
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore, pagecache
from pithos.core import treehash
from pithos.core.errors import IntegrityError, NotFound
from pithos.mapper import Mapper

_, pytestmark = native_module("pithos.core._treehash")

MIB = 1 << 20
XATTR = "user.b3"


@pytest.fixture
def blocker(tmp_path):
    b = Blocker(LocalBlockStore(tmp_path / "blocks"))
    yield b
    b.close()


def stream(blocker: Blocker, data: bytes, piece: int = 256 * 1024) -> bytes:
    s = blocker.open_stream()
    for i in range(0, len(data), piece):
        s.write(data[i:i + piece])
    return s.finish()


def path_of(blocker: Blocker, hash_: bytes) -> str:
    return blocker.store._path(hash_)


def overwrite(blocker: Blocker, hash_: bytes, offset: int, data: bytes) -> None:
    path = path_of(blocker, hash_)
    os.chmod(path, 0o644)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def evict(blocker: Blocker, hash_: bytes) -> None:
    fd = os.open(path_of(blocker, hash_), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_streamed_block_keeps_its_outboard_and_reads_in_verified_parts(blocker):
    data = os.urandom(4 * MIB)
    hash_ = stream(blocker, data)
    assert len(os.getxattr(path_of(blocker, hash_), XATTR)) == 64
    assert oct(os.stat(path_of(blocker, hash_)).st_mode & 0o777) == "0o444"
    parts = list(blocker.read_parts(hash_))
    assert [len(p) for p in parts] == [MIB, MIB, MIB, MIB]
    assert b"".join(parts) == data


def test_cold_and_cached_blocks_read_the_same_parts(blocker):
    data = os.urandom(3 * MIB + 12345)
    hash_ = stream(blocker, data, piece=100_000)
    for evicted in (True, True, False):  # past the cache, through it (cold twice), cached
        if evicted:
            evict(blocker, hash_)
        assert b"".join(blocker.read_parts(hash_)) == data
    fd = os.open(path_of(blocker, hash_), os.O_RDONLY)
    try:  # the second cold read let the block into the cache, as a whole read would
        assert pagecache.cached_pages(fd) == -(-len(data) // os.sysconf("SC_PAGESIZE"))
    finally:
        os.close(fd)


@settings(max_examples=15, deadline=None)
@given(size=st.integers(0, 4 * MIB), piece=st.sampled_from([4096, 65536, 1 << 20, 3 << 20]))
def test_any_size_reads_back_whole(tmp_path_factory, size, piece):
    b = Blocker(LocalBlockStore(tmp_path_factory.mktemp("blocks")))
    try:
        data = os.urandom(size)
        hash_ = stream(b, data, piece)
        parts = list(b.read_parts(hash_))
        assert b"".join(parts) == data
        assert len(parts) == (len(treehash.pieces(size)) if size > treehash.PART else 1)
    finally:
        b.close()


@pytest.mark.parametrize("count", [1, 3])
def test_blocks_put_whole_keep_their_outboards_and_read_in_parts(blocker, count):
    """Hashmap uploads, cut SLO blocks and volume snapshots put whole blocks: those larger
    than a part are named as their tree (one alone: its parts on the pool side by side), so
    they keep an outboard as streamed blocks do.  Blocks up to a part have none."""
    datas = [os.urandom(4 * MIB - 1000 * i) for i in range(count)]
    hashes = blocker.put_many(datas)  # one alone: its parts on the pool; several: a block each
    for data, hash_ in zip(datas, hashes, strict=True):
        assert hash_ == blake3.blake3(data).digest()
        assert len(os.getxattr(path_of(blocker, hash_), XATTR)) == 64
        assert oct(os.stat(path_of(blocker, hash_)).st_mode & 0o777) == "0o444"
        evict(blocker, hash_)
        parts = list(blocker.read_parts(hash_))
        assert len(parts) == 4 and b"".join(parts) == data
    small = os.urandom(MIB)
    (hash_,) = blocker.put_many([small])
    assert XATTR not in os.listxattr(path_of(blocker, hash_))
    assert list(blocker.read_parts(hash_)) == [small]


def test_a_staged_block_keeps_its_outboard(blocker):
    data = os.urandom(2 * MIB + 5)
    staged = blocker.stage(data)
    assert staged.hash == blake3.blake3(data).digest() and len(staged.outboard) == 64
    blocker.put_staged([staged])
    assert [len(p) for p in blocker.read_parts(staged.hash)] == [MIB, MIB, 5]


def test_a_memory_store_hands_out_whole_blocks():
    b = Blocker(MemoryBlockStore())
    data = os.urandom(2 * MIB)
    assert list(b.read_parts(stream(b, data))) == [data]


def test_a_wrong_outboard_costs_only_the_whole_read(blocker):
    data = os.urandom(4 * MIB)
    hash_ = stream(blocker, data)
    os.chmod(path_of(blocker, hash_), 0o644)
    os.setxattr(path_of(blocker, hash_), XATTR, os.urandom(64))
    assert list(blocker.read_parts(hash_)) == [data]
    os.setxattr(path_of(blocker, hash_), XATTR, b"short")
    assert list(blocker.read_parts(hash_)) == [data]


def test_corrupt_first_part_hands_out_nothing(blocker):
    data = os.urandom(4 * MIB)
    hash_ = stream(blocker, data)
    overwrite(blocker, hash_, 1000, b"\xff" * 10)
    got = []
    with pytest.raises(IntegrityError) as err:
        got.extend(blocker.read_parts(hash_))
    assert got == []
    assert err.value.hashes == [hash_]


@pytest.mark.parametrize("cold", [False, True])
def test_corrupt_later_part_stops_after_the_verified_parts(blocker, cold):
    data = os.urandom(4 * MIB)
    hash_ = stream(blocker, data)
    overwrite(blocker, hash_, 3 * MIB, b"\x00" * 4096)
    if cold:
        evict(blocker, hash_)
    got = []
    with pytest.raises(IntegrityError):
        got.extend(blocker.read_parts(hash_))
    assert got == [data[:MIB], data[MIB:2 * MIB]]


def test_truncated_block_is_refused(blocker):
    data = os.urandom(4 * MIB)
    hash_ = stream(blocker, data)
    os.chmod(path_of(blocker, hash_), 0o644)
    os.truncate(path_of(blocker, hash_), 4 * MIB - 1024)
    with pytest.raises(IntegrityError):
        b"".join(blocker.read_parts(hash_))


def test_a_missing_block_is_not_found(blocker):
    with pytest.raises(NotFound):
        list(blocker.read_parts(b"\x01" * 32))


def test_a_reader_that_stops_early_leaves_nothing_open(blocker):
    data = os.urandom(4 * MIB)
    hash_ = stream(blocker, data)
    path = os.path.realpath(path_of(blocker, hash_))
    parts = blocker.read_parts(hash_)
    assert next(parts) == data[:MIB]
    assert path in open_files()  # the reader holds the block's file while it reads
    parts.close()
    # Which files are open, not how many: other threads of a test worker (pytest-xdist's
    # channel) open and close descriptors of their own meanwhile.
    assert path not in open_files()


def open_files() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed between the listing and the readlink
    return found


def test_an_object_of_streamed_blocks_reads_whole_with_read_ahead(blocker):
    mapper = Mapper(blocker)
    blocks = [os.urandom(4 * MIB), os.urandom(4 * MIB), os.urandom(MIB + 7)]
    hashes = [stream(blocker, b) for b in blocks]
    root = mapper.store_entries(hashes, [len(b) for b in blocks])
    with ThreadPoolExecutor(2) as prefetch:
        whole = b"".join(mapper.read_pieces(mapper.pieces(root), 1, prefetch))
        assert whole == b"".join(blocks)
        # A range that starts inside the first block reads it as before, whole.
        assert b"".join(mapper.read_pieces(mapper.pieces(root, 5, 5 * MIB), 8, prefetch)) \
            == whole[5:5 + 5 * MIB]
        overwrite(blocker, hashes[0], 2 * MIB, b"\x00")
        with pytest.raises(IntegrityError):
            b"".join(mapper.read_pieces(mapper.pieces(root), 8, prefetch))

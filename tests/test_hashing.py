import random
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
from conftest import CountingPool, native_module
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.core import hashing
from pithos.core.errors import InvalidArgument
from pithos.core.hashing import block_hash, from_hex, hash_many, merkle_root, to_hex

cdchash, cdchash_mark = native_module("pithos.core._cdchash")


def test_block_hash_is_blake3_256():
    assert block_hash(b"abc") == blake3.blake3(b"abc").digest()
    assert len(block_hash(b"")) == 32


@given(st.lists(st.binary(max_size=3000), max_size=40))
def test_hash_many_matches_one_by_one(blocks):
    with ThreadPoolExecutor(2) as pool:
        assert hash_many(blocks, pool) == [block_hash(b) for b in blocks]


@settings(max_examples=40)
@given(st.lists(st.integers(0, 40_000), min_size=9, max_size=60), st.integers(0, 2**32))
def test_many_small_blocks_hash_as_one_by_one(sizes, seed):
    """A batch of content-defined chunks (views of one buffer, as a POST ?blocks body is
    cut), past the size worth the pool."""
    buf = bytearray(random.Random(seed).randbytes(sum(sizes) + 300_000))
    view, blocks, at = memoryview(buf), [], 0
    for n in sizes:
        blocks.append(view[at:at + n])
        at += n
    blocks.append(view[at:])  # (the batch is past _PARALLEL_MIN_BYTES whatever was drawn)
    with CountingPool() as pool:
        assert hash_many(blocks, pool) == [blake3.blake3(b).digest() for b in blocks]
        # Natively: one task for all of them (not a task per eighth, each taking the GIL
        # back after every block).
        if hashing._cdchash is not None:
            assert pool.tasks == 1
        else:
            assert pool.tasks > 1  # (the pure build's groups)


def test_many_large_blocks_still_spread_over_the_pool():
    blocks = [bytes([i]) * (1 << 20) for i in range(2 * hashing._GROUPS)]
    with CountingPool() as pool:
        assert hash_many(blocks, pool) == [block_hash(b) for b in blocks]
        assert pool.tasks == hashing._GROUPS


@cdchash_mark
@given(st.lists(st.binary(max_size=5000), max_size=30))
def test_native_hash_each_is_blake3_of_each(blocks):
    kinds = [bytes, bytearray, lambda b: memoryview(b"." + b + b".")[1:-1]]
    mixed = [kinds[i % 3](b) for i, b in enumerate(blocks)]
    assert cdchash.hash_each(mixed) == [blake3.blake3(b).digest() for b in blocks]


@cdchash_mark
def test_native_hash_each_refuses_what_is_not_bytes_and_lets_every_buffer_go():
    grown = bytearray(b"abc")
    with pytest.raises(TypeError):
        cdchash.hash_each([grown, b"x", 3])
    grown.extend(b"d")  # (BufferError if hash_each still held its buffer)
    with pytest.raises(BufferError):
        cdchash.hash_each([memoryview(b"abcdef")[::2]])
    assert cdchash.hash_each([]) == []


def test_hash_many_uses_the_pool_for_big_batches():
    blocks = [bytes([i]) * (1 << 20) for i in range(4)]
    with ThreadPoolExecutor(2) as pool:
        assert hash_many(blocks, pool) == [block_hash(b) for b in blocks]


@pytest.mark.parametrize("size", [(1 << 20) - 1, 1 << 20, (4 << 20) + 7])
def test_one_large_block_is_hashed_on_blake3s_threads_to_the_same_hash(size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with ThreadPoolExecutor(2) as pool:
        assert hash_many([data], pool) == [blake3.blake3(data).digest()]


def _pithos_merkle(hashes):
    """Pithos+' reference algorithm, written independently of the implementation."""
    if not hashes:
        return blake3.blake3(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    size = 1 << (len(hashes) - 1).bit_length()
    level = hashes + [b"\x00" * 32] * (size - len(hashes))
    while len(level) > 1:
        level = [blake3.blake3(level[i] + level[i + 1]).digest()
                 for i in range(0, len(level), 2)]
    return level[0]


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70))
def test_merkle_root_matches_pithos(hashes):
    assert merkle_root(hashes) == _pithos_merkle(hashes)


def test_merkle_known_shapes():
    a, b, c = (block_hash(bytes([i])) for i in range(3))
    assert merkle_root([a]) == a
    assert merkle_root([a, b]) == block_hash(a + b)
    assert merkle_root([a, b, c]) == block_hash(block_hash(a + b) + block_hash(c + bytes(32)))


def test_hex_round_trip_and_errors():
    h = block_hash(b"x")
    assert from_hex(to_hex(h)) == h
    assert to_hex(h) == h.hex() and to_hex(h).islower()
    for bad in ("", "00", "zz" * 32, "0" * 63, "0" * 66):
        with pytest.raises(InvalidArgument):
            from_hex(bad)

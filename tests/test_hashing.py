from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pithos.core.errors import InvalidArgument
from pithos.core.hashing import block_hash, from_hex, hash_many, merkle_root, to_hex


def test_block_hash_is_blake3_256():
    assert block_hash(b"abc") == blake3.blake3(b"abc").digest()
    assert len(block_hash(b"")) == 32


@given(st.lists(st.binary(max_size=3000), max_size=40))
def test_hash_many_matches_one_by_one(blocks):
    with ThreadPoolExecutor(2) as pool:
        assert hash_many(blocks, pool) == [block_hash(b) for b in blocks]


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

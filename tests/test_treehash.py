"""pithos.core.treehash and its native part against the blake3 package: every hash, chaining
value and outboard must agree with BLAKE3 itself, and every check must refuse what it should."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest
from conftest import native_module
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.core import treehash

native, pytestmark = native_module("pithos.core._treehash")

PART = treehash.PART
MIB = 1 << 20


def _data(size: int, seed: int) -> bytes:
    # Random bytes are slow to draw through hypothesis at MiB sizes: a seeded stream instead.
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=size)


def first_part_matches(name: bytes, size: int, first: bytes, outboard: bytes) -> bool:
    """The first part's check as read_parts makes it (a short part has no value)."""
    return len(first) == PART and treehash.first_value_matches(
        name, size, treehash.subtree_value(first, 0), outboard)


def sibling_matches(outboard: bytes, index: int, data: bytes, offset: int) -> bool:
    """A sibling's check as read_parts makes it, from its pieces' values."""
    values = [treehash.subtree_value(data[i:i + PART], offset + i)
              for i in range(0, len(data), PART)]
    return treehash.sibling_values_match(outboard, index, values)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 9 * MIB), cuts=st.lists(st.integers(0, 9 * MIB), max_size=4),
       seed=st.integers(0, 2**32))
def test_tree_hasher_gives_blake3s_hash_for_any_split(size, cuts, seed):
    data = _data(size, seed)
    hasher = treehash.TreeHasher()
    last = 0
    for cut in sorted(c % (size + 1) for c in cuts):
        hasher.update(data[last:cut])
        last = cut
    hasher.update(data[last:])
    name, outboard = hasher.finish()
    assert name == blake3.blake3(data).digest()
    assert len(outboard) == 32 * len(treehash.spine(size))


@settings(max_examples=30, deadline=None)
@given(size=st.integers(PART + 1, 9 * MIB), seed=st.integers(0, 2**32))
def test_outboard_verifies_every_part_and_covers_the_block(size, seed):
    data = _data(size, seed)
    hasher = treehash.TreeHasher()
    hasher.update(data)
    name, outboard = hasher.finish()
    assert first_part_matches(name, size, data[:PART], outboard)
    covered = 0
    for index, (start, end) in enumerate(treehash.spine(size)):
        assert start == covered or (index == 0 and start == PART)
        assert sibling_matches(outboard, index, data[start:end], start)
        covered = end
    assert covered == size


@settings(max_examples=30, deadline=None)
@given(size=st.integers(PART + 1, 9 * MIB), seed=st.integers(0, 2**32),
       flip=st.integers(0, 9 * MIB))
def test_pieces_hashed_apart_verify_each_sibling_and_refuse_a_changed_byte(size, seed, flip):
    """The piece values (each `PART` hashed on its own, as read_parts does on the pool)
    join up to each sibling's value; a changed byte fails exactly the part it is in."""
    data = bytearray(_data(size, seed))
    hasher = treehash.TreeHasher()
    hasher.update(data)
    name, outboard = hasher.finish()
    pieces = treehash.pieces(size)
    assert pieces[0] == (0, PART) and pieces[-1][1] == size
    assert all(end - start == PART for start, end in pieces[:-1])
    flip %= size
    data[flip] ^= 0x01
    values = {start: treehash.subtree_value(data[start:end], start) for start, end in pieces}
    assert treehash.first_value_matches(name, size, values[0], outboard) == (flip >= PART)
    for index, (start, end) in enumerate(treehash.spine(size)):
        group = [values[s] for s, _ in pieces if start <= s < end]
        assert treehash.sibling_values_match(outboard, index, group) \
            == (not start <= flip < end)
    assert not treehash.sibling_values_match(outboard, 0, [])


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 9 * MIB), seed=st.integers(0, 2**32), pooled=st.booleans())
def test_name_of_a_whole_block_is_the_tree_hashers(size, seed, pooled):
    """`name` (blocks put whole) gives what TreeHasher (streamed blocks) gives, alone or
    with its parts hashed on a pool."""
    data = _data(size, seed)
    hasher = treehash.TreeHasher()
    hasher.update(data)
    if pooled:
        with ThreadPoolExecutor(2) as pool:
            got = treehash.name(data, pool)
    else:
        got = treehash.name(bytearray(data))
    assert got == hasher.finish()
    assert got[0] == blake3.blake3(data).digest()


def test_spine_of_a_4_mib_block():
    assert treehash.spine(4 * MIB) == [(MIB, 2 * MIB), (2 * MIB, 4 * MIB)]
    assert treehash.spine(PART) == []
    assert treehash.spine(PART + 1) == [(PART, PART + 1)]


def test_checks_refuse_a_changed_byte_a_wrong_outboard_or_a_wrong_size():
    size = 4 * MIB
    data = bytearray(os.urandom(size))
    hasher = treehash.TreeHasher()
    hasher.update(data)
    name, outboard = hasher.finish()
    assert first_part_matches(name, size, data[:PART], outboard)

    first = bytearray(data[:PART])
    first[12345] ^= 1
    assert not first_part_matches(name, size, first, outboard)
    bad = bytearray(outboard)
    bad[40] ^= 1
    assert not first_part_matches(name, size, data[:PART], bytes(bad))
    assert not first_part_matches(name, size, data[:PART], outboard[:32])
    assert not first_part_matches(name, 2 * MIB, data[:PART], outboard)
    # A size that keeps the tree's shape passes the first check; the short sibling fails.
    assert treehash.spine(size - 1024)[1] == (2 * MIB, size - 1024)
    assert not sibling_matches(outboard, 1, data[2 * MIB:size - 1024], 2 * MIB)
    assert not first_part_matches(name, size, data[:PART - 1], outboard)

    sibling = bytearray(data[2 * MIB:])
    sibling[-1] ^= 0x80
    assert not sibling_matches(outboard, 1, sibling, 2 * MIB)
    # The same bytes at another place in the tree have another value.
    assert not sibling_matches(outboard, 0, data[MIB:2 * MIB], 0)


def test_a_subtree_starts_at_a_chunk_boundary():
    with pytest.raises(ValueError):
        native.Subtree(1000)
    with pytest.raises(ValueError):
        native.parent(b"x" * 31, b"y" * 32, False)

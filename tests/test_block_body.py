"""The body of a POST ?blocks (pithos/objects/block_body.py) and the hashing of a batch of
small blocks (pithos.core.hashing.hash_many): blocks cut from large reads come out exactly as
sent, never reading past the lengths (what follows is the caller's to refuse), a short or
oversized body is refused, and a batch hashed in groups on a pool gives each block's own
hash in order."""

from __future__ import annotations

import io
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from pithos.core.errors import IncompleteBody, InvalidArgument, TooLarge
from pithos.core.hashing import block_hash, hash_many
from pithos.objects.block_body import READ_PIECE, BlockBody


def test_cut_gives_each_block_and_reads_nothing_past_the_lengths():
    rng = random.Random(1)
    blocks = [rng.randbytes(rng.randint(1, 70_000)) for _ in range(300)]
    blocks.append(rng.randbytes(3 * READ_PIECE))  # one longer than a read
    stream = io.BytesIO(b"".join(blocks) + b"TRAILING")
    body = BlockBody(stream, None, 1 << 40)
    assert list(body.cut([len(b) for b in blocks])) == blocks
    assert stream.read() == b"TRAILING"  # left for the caller to refuse
    body.finish()


def test_blocks_of_a_size_and_the_last_shorter():
    data = random.Random(2).randbytes(10 * 1000 + 7)
    body = BlockBody(io.BytesIO(data), len(data), 1 << 40)
    got = list(body.blocks(1000))
    assert got == [data[i:i + 1000] for i in range(0, len(data), 1000)]
    assert len(got[-1]) == 7
    body.finish()


def test_a_short_body_an_oversized_one_and_a_missing_tail_are_refused():
    with pytest.raises(InvalidArgument):
        list(BlockBody(io.BytesIO(b"x" * 10), None, 1 << 40).cut([4, 4, 4]))
    with pytest.raises(TooLarge):
        list(BlockBody(io.BytesIO(b"x" * 100), None, 50).blocks(10))
    short = BlockBody(io.BytesIO(b"x" * 10), 20, 1 << 40)
    assert b"".join(short.blocks(4)) == b"x" * 10
    with pytest.raises(IncompleteBody):
        short.finish()


def test_a_batch_of_small_blocks_hashed_in_groups_keeps_each_hash_in_order():
    rng = random.Random(3)
    blocks = [rng.randbytes(rng.randint(1, 40_000)) for _ in range(333)]
    with ThreadPoolExecutor(4) as pool:
        assert hash_many(blocks, pool) == [block_hash(b) for b in blocks]

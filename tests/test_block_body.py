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


def test_batches_are_views_of_the_reads_and_never_read_past_the_lengths():
    rng = random.Random(4)
    blocks = [rng.randbytes(rng.randint(1, 70_000)) for _ in range(300)]
    blocks.append(rng.randbytes(3 * READ_PIECE))  # longer than a batch's bytes: alone
    stream = io.BytesIO(b"".join(blocks) + b"TRAILING")
    body = BlockBody(stream, None, 1 << 40)
    batches = list(body.batches([len(b) for b in blocks], 64, READ_PIECE))
    assert [bytes(v) for batch in batches for v in batch] == blocks
    assert all(len(batch) <= 64 for batch in batches)
    assert all(sum(map(len, batch)) <= READ_PIECE or len(batch) == 1 for batch in batches)
    assert len(batches) < len(blocks) // 10  # batched, not a read per block
    # A block is a view of the piece it lies in (what the stream's read returned, a bytes
    # object here); only one across two pieces is copied together, at most one a piece.
    views = [v for batch in batches for v in batch]
    gathered = [v for v in views if not isinstance(v.obj, bytes)]
    assert len(gathered) <= sum(map(len, blocks)) // READ_PIECE + 1
    assert len(views) - len(gathered) > 250
    assert stream.read() == b"TRAILING"  # left for the caller to refuse
    body.finish()


class _Trickle(io.RawIOBase):
    """A stream that gives at most 1000 bytes a read (a socket's, an inflater's)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._data.read(min(n, 1000) if n >= 0 else 1000)


class _Asked(io.BytesIO):
    """A stream that records the size of each read asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, n: int | None = -1) -> bytes:
        self.asked.append(-1 if n is None else n)
        return super().read(n)


def test_a_batch_is_read_a_piece_at_a_time_not_allocated_whole():
    # The request's stream (SocketBody) allocates what a read asks before any byte arrives:
    # asking a whole 32 MiB batch at once let a client that declares its lengths and sends
    # nothing pin 32 MiB per connection.  Each block a view of its piece (none copied).
    blocks = [bytes([i]) * READ_PIECE for i in range(8)]
    stream = _Asked(b"".join(blocks))
    batches = list(BlockBody(stream, None, 1 << 40).batches(
        [len(b) for b in blocks], 64, 8 * READ_PIECE))
    assert len(batches) == 1 and [bytes(v) for v in batches[0]] == blocks
    assert all(isinstance(v.obj, bytes) for v in batches[0])
    assert max(stream.asked) <= READ_PIECE, stream.asked


def test_blocks_across_pieces_come_out_whole():
    # Pieces that end inside blocks, blocks longer than a piece, one ending exactly at a
    # piece's end, and batches that end inside a piece: every block exactly as sent.
    rng = random.Random(6)
    sizes = [READ_PIECE - 7, 14, 2 * READ_PIECE + 3, 1, READ_PIECE - 11, 10, 300_000, 5]
    blocks = [rng.randbytes(n) for n in sizes]
    for max_blocks in (1, 2, 3, 64):
        stream = _Asked(b"".join(blocks) + b"TRAILING")
        batches = list(BlockBody(stream, None, 1 << 40).batches(sizes, max_blocks, READ_PIECE))
        assert [bytes(v) for batch in batches for v in batch] == blocks
        assert all(len(batch) <= max_blocks for batch in batches)
        assert max(stream.asked) <= READ_PIECE and stream.read() == b"TRAILING"


def test_batches_of_a_trickling_stream_and_of_a_short_body():
    rng = random.Random(5)
    blocks = [rng.randbytes(rng.randint(1, 5000)) for _ in range(50)]
    body = BlockBody(_Trickle(b"".join(blocks)), None, 1 << 40)
    got = [bytes(v) for batch in body.batches([len(b) for b in blocks], 8, 1 << 20)
           for v in batch]
    assert got == blocks
    with pytest.raises(InvalidArgument):
        list(BlockBody(_Trickle(b"x" * 10), None, 1 << 40).batches([4, 4, 4], 8, 100))
    with pytest.raises(TooLarge):
        list(BlockBody(io.BytesIO(b"x" * 100), None, 50).batches([40, 40], 1, 100))


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

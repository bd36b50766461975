"""Chunks cut and named in one call (pithos.core.cdc.cut_hash, Chunker.update_hashed): the
native module (native/cdchash.pyx) against its pure twin (pithos/core/_cdc_py.py), both
against the cut points and BLAKE3 of each chunk taken apart, a golden chunk list that must
never change, and streaming in pieces of any size.

Under PITHOS_PURE=1 (scripts/test) cdc.cut_hash is the pure twin; the twin comparison runs
either way."""

import hashlib
import itertools

import pytest
from conftest import native_module, twins_agree
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.core import _cdc_py as pure
from pithos.core import cdc
from pithos.core.hashing import block_hash
from pithos.sync.chunks import PieceCutter
from pithos.sync.state import Chunk, ChunkList

native, native_mark = native_module("pithos.core._cdchash")

GOLDEN_INPUT = hashlib.shake_256(b"pithos cdc golden").digest(1 << 21)
DEFAULTS = (cdc.MIN_SIZE, cdc.AVG_SIZE, cdc.MAX_SIZE, *cdc.masks(cdc.AVG_SIZE), cdc.GEAR)
SMALL = (64, 256, 1024)


def _apart(data: bytes, start: int, ends: list[int]) -> bytes:
    """The chunk list built the slow way: each chunk sliced out and hashed on its own."""
    out = b""
    for end in ends:
        out += block_hash(data[start:end]) + (end - start).to_bytes(4, "little")
        start = end
    return out


def _image_like(seed: int, extents: list[tuple[bool, int]]) -> bytes:
    out = bytearray()
    for i, (zero, n) in enumerate(extents):
        out += bytes(n) if zero else hashlib.shake_256(b"%d-%d" % (seed, i)).digest(n)
    return bytes(out)


def test_golden_chunk_list():
    # Stored maps name these chunks: cut points and hashes must never change.
    data = GOLDEN_INPUT[:1 << 20] + bytes(600_000) + GOLDEN_INPUT[:300_000]
    done, entries = cdc.cut_hash(data, 0, len(data), True, *DEFAULTS)
    assert done == len(data)
    assert len(entries) == 82 * cdc.ENTRY.size
    assert hashlib.sha256(entries).hexdigest() == \
        "cdc1927614fa9ab2f3fb6d334ca235d91839c7bf8322903c2b4f585d1279cf76"
    assert entries == _apart(data, 0, cdc.cut_points(data))


def _both(*args):
    return twins_agree(pure, native, "cut_hash", *args)


@native_mark
@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 3000)), max_size=12),
       st.integers(0, 2**32), st.data())
def test_native_equals_pure(extents, seed, draw):
    data = _image_like(seed, extents)
    avg = 1 << draw.draw(st.integers(8, 11))
    min_size = draw.draw(st.integers(64, avg - 1))
    max_size = draw.draw(st.integers(avg + 1, 8 * avg))
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))
    final = draw.draw(st.booleans())
    args = (data, start, end, final, min_size, avg, max_size, *cdc.masks(avg), cdc.GEAR)
    kind, (done, entries) = _both(*args)
    assert kind == "ok"
    ends = pure.cuts(*args)
    assert done == (ends[-1] if ends else start)
    assert entries == _apart(data, start, ends)


@native_mark
def test_native_equals_pure_default_sizes():
    data = GOLDEN_INPUT + bytes(300_000) + GOLDEN_INPUT[:100_000]
    for final in (True, False):
        kind, _ = _both(data, 0, len(data), final, *DEFAULTS)
        assert kind == "ok"


@native_mark
@pytest.mark.parametrize("args", [(-1, 10, True), (5, 3, True), (0, 99, False)])
def test_twins_refuse_bad_ranges_alike(args):
    kind, _ = _both(b"0123456789" * 5, *args, 64, 256, 1024, *cdc.masks(256), cdc.GEAR)
    assert kind == "error"


@native_mark
def test_twins_refuse_lengths_past_u32_alike():
    kind, _ = _both(b"x" * 100, 0, 100, True, 64, 256, 1 << 32, *cdc.masks(256), cdc.GEAR)
    assert kind == "error"


def test_composed_fallback_equals_twin():
    # Without pithos.core._cdchash the client composes the cuts and the blake3 package.
    data = GOLDEN_INPUT[:700_000] + bytes(100_000)
    for final in (True, False):
        assert cdc._cut_hash_composed(data, 0, len(data), final, *DEFAULTS) == \
            pure.cut_hash(data, 0, len(data), final, *DEFAULTS)


def _stream_hashed(data: bytes, pieces: list[int], sizes: tuple[int, int, int]) -> bytes:
    chunker = cdc.Chunker(*sizes)
    out = b""
    at = 0
    for n in pieces:
        out += chunker.update_hashed(memoryview(data)[at:at + n])
        at += n
    out += chunker.update_hashed(data[at:])
    out += chunker.finish_hashed()
    assert chunker.finish_hashed() == b""
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 3000)), max_size=12),
       st.integers(0, 2**32), st.lists(st.integers(0, 1500), max_size=30))
def test_streaming_hashed_as_whole(extents, seed, pieces):
    data = _image_like(seed, extents)
    entries = _stream_hashed(data, pieces, SMALL)
    assert entries == _apart(data, 0, cdc.cut_points(data, *SMALL))


def test_streaming_hashed_default_sizes():
    data = GOLDEN_INPUT[:600_000]
    pieces = [997] * 300 + [1 << 16] * 3
    assert _stream_hashed(data, pieces, (cdc.MIN_SIZE, cdc.AVG_SIZE, cdc.MAX_SIZE)) == \
        _apart(data, 0, cdc.cut_points(data))


def test_update_after_finish_refused():
    chunker = cdc.Chunker()
    chunker.finish_hashed()
    with pytest.raises(ValueError):
        chunker.update_hashed(b"more")


# -- the packed chunk list of the sync client ------------------------------------------------

def test_chunk_list_reads_as_its_chunks():
    data = GOLDEN_INPUT[:300_000]
    _, entries = cdc.cut_hash(data, 0, len(data), True, *DEFAULTS)
    ends = cdc.cut_points(data)
    chunks = tuple(Chunk(block_hash(data[a:b]), b - a)
                   for a, b in itertools.pairwise([0, *ends]))
    packed = ChunkList(entries)
    assert len(packed) == len(chunks) > 3
    assert tuple(packed) == chunks and packed == chunks and packed == list(chunks)
    assert hash(packed) == hash(chunks)
    assert packed[0] == chunks[0] and packed[-1] == chunks[-1]
    assert packed[1:3] == chunks[1:3] and packed[::2] == chunks[::2]
    assert packed.hashes() == [c.hash for c in chunks]
    assert packed.lengths() == [c.length for c in chunks]
    with pytest.raises(IndexError):
        packed[len(chunks)]
    assert ChunkList() == () and not ChunkList()
    with pytest.raises(ValueError):
        ChunkList(b"x" * 35)


# -- the sync scan's piece cutter --------------------------------------------------------------

class _Pieces:
    """A file's bytes read with readinto, at most `most` bytes a call (a short read)."""

    def __init__(self, data: bytes, most: int) -> None:
        self.data, self.at, self.most = data, 0, most

    def readinto(self, view: memoryview) -> int:
        n = min(len(view), self.most, len(self.data) - self.at)
        view[:n] = self.data[self.at:self.at + n]
        self.at += n
        return n


def _cut_file(data: bytes, piece: int, most: int, size_hint: int) -> tuple[bytes, bytes]:
    cutter = PieceCutter(piece, size_hint)
    f = _Pieces(data, most)
    entries, seen = b"", b""
    while True:
        with cutter.read(f) as view:
            seen += bytes(view)
            n = view.nbytes
        if not n:
            return entries + cutter.cut(final=True), seen
        entries += cutter.cut()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 70_000)), max_size=6),
       st.integers(0, 2**32), st.integers(1, 300_000), st.integers(1, 300_000),
       st.integers(0, 400_000))
def test_piece_cutter_cuts_as_the_chunker(extents, seed, piece, most, size_hint):
    # Any piece size, short reads, and a file larger or smaller than its stat said.
    data = _image_like(seed, extents)
    entries, seen = _cut_file(data, piece, most, size_hint)
    assert seen == data  # every byte handed out once, in order (for the MD5)
    assert entries == _apart(data, 0, cdc.cut_points(data))


def test_piece_cutter_default_pieces():
    data = GOLDEN_INPUT + bytes(300_000) + GOLDEN_INPUT[:100_000]
    entries, _ = _cut_file(data, 1 << 20, 1 << 20, len(data))
    assert entries == _apart(data, 0, cdc.cut_points(data))
    cutter = PieceCutter(1 << 20, 0)
    assert cutter.cut(final=True) == b"" and cutter.cut() == b""
    with pytest.raises(ValueError):
        cutter.read(_Pieces(b"late", 4))

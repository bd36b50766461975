"""Content-defined chunking: FastCDC (Xia et al., 2016) with normalized chunking and a gear
hash, the native twin when built (native/cdc.pyx), else the pure one (pithos/core/_cdc_py.py).

Cut points must be the same everywhere and forever: a sync client and the server cut the same
content into the same chunks, which is what makes an upload find its chunks already stored.
So the gear table is generated here from a fixed recipe (BLAKE2b of its index under a fixed
key), the masks from the sizes, and tests/test_cdc.py holds golden cut points of a fixed
input that fail if either ever changes.  Change nothing here without a new chunking name.

    Chunker(...).update(piece) -> chunks completed so far; .finish() -> the rest
    Chunker(...).update_hashed(piece), .finish_hashed() -> the same chunks as a chunk list:
        each its BLAKE3 and length (`ENTRY`), back to back, cut and hashed in one native call
        without the GIL (native/cdchash.pyx) when built
    cut_points(data) -> the end offsets of the chunks of `data` as one stream

The same cuts come out whatever the sizes of the pieces fed to `update`: a chunk is cut only
once `max_size + min_size` bytes from its start are known, by when no rule can depend on
bytes not yet fed.

Runs of zeros (at least `min_size` zero bytes) are cut apart from the data around them and
into max-size chunks counted from the run's start (pithos/core/_cdc_py.py says how): an
image's zero extents are then a few identical blocks, and a write into one changes the chunk
it lands in and two remainders, not every chunk after it up to the extent's end.  Data
without such runs (random, compressed, text) is cut exactly as plain FastCDC cuts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from types import ModuleType

from pithos.core import _cdc_py as pure
from pithos.core.native import load, native

impl: ModuleType
impl, IS_NATIVE = load("pithos.core._cdc", pure)

# A chunk list entry: the chunk's BLAKE3 (32 bytes) and its length (u32, little-endian).
ENTRY = pure.ENTRY

CutHash = Callable[..., tuple[int, bytes]]


def _cut_hash_composed(data: bytes | bytearray | memoryview, start: int, end: int,
                       final: bool, *sizes_masks_gear: object) -> tuple[int, bytes]:
    """cut_hash without pithos.core._cdchash (built only with BLAKE3's C sources): `impl`'s
    cuts (native when built), each chunk hashed by the blake3 package."""
    ends = impl.cuts(data, start, end, final, *sizes_masks_gear)
    return (ends[-1] if ends else start), pure.hash_cuts(data, start, ends)


_cdchash = native("pithos.core._cdchash")
# cut_hash(data, start, end, final, min, avg, max, mask_s, mask_l, gear): (where the last
# chunk cut ends, the chunk list of the chunks `cuts` gives for the same arguments).
cut_hash: CutHash = (_cdchash.cut_hash if _cdchash is not None else
                     pure.cut_hash if not IS_NATIVE else _cut_hash_composed)

# Chosen by measurement on the edit workload of issue 24 (benchmarks/README.md, "Chunk size"):
# an insert stores about one new chunk per edited file (and a 4 KiB write into an image one or
# two), so the edit's cost grows with the average (8 KiB: 0.14 MB on 265 MB with 15 files
# edited, 16 KiB: 0.27, 32 KiB: 0.49, 64 KiB: 0.99), while map entries (36 bytes each) and
# blocks to store grow as it shrinks (0.19% of the data at 16 KiB, 0.39% at 8 KiB).  16 KiB
# keeps the edit of issue 24's data set within its 3 MB target; 64 KiB would not.
MIN_SIZE = 4 * 1024
AVG_SIZE = 16 * 1024
MAX_SIZE = 64 * 1024

# Normalized chunking level 2 (the paper's NC-2): a mask 2 bits stricter than the average's
# before avg_size, 2 bits looser after, so chunk sizes bunch around the average.
NORMALIZATION = 2


def _gear_table() -> bytes:
    """256 little-endian u64: entry i is the first 8 bytes of BLAKE2b-64 of i (2 bytes,
    little-endian) keyed with b"pithos-fastcdc-gear"."""
    return b"".join(hashlib.blake2b(i.to_bytes(2, "little"), digest_size=8,
                                    key=b"pithos-fastcdc-gear").digest()
                    for i in range(256))


GEAR = _gear_table()


def _top_bits(count: int) -> int:
    """A mask of the `count` highest bits of a u64 (the bits of the gear hash that depend on
    the most recent 64 bytes, not on the last few only)."""
    return ((1 << count) - 1) << (64 - count)


def masks(avg_size: int) -> tuple[int, int]:
    """(mask_s, mask_l) for an average chunk of `avg_size` (a power of two)."""
    bits = avg_size.bit_length() - 1
    return _top_bits(bits + NORMALIZATION), _top_bits(bits - NORMALIZATION)


def check_sizes(min_size: int, avg_size: int, max_size: int) -> None:
    """Raise ValueError unless 64 <= min_size < avg_size < max_size and avg_size is a power
    of two (its log2 gives the masks)."""
    if avg_size < 256 or avg_size & (avg_size - 1):
        raise ValueError(f"avg_size {avg_size} is not a power of two of at least 256")
    if not 64 <= min_size < avg_size < max_size:
        raise ValueError(f"need 64 <= min_size < avg_size < max_size, got "
                         f"{min_size}, {avg_size}, {max_size}")


class Chunker:
    """Cuts one stream into chunks fed in pieces of any size; keeps at most about
    `max_size + min_size` bytes plus the last piece.  Not thread-safe; one stream per Chunker."""

    def __init__(self, min_size: int = MIN_SIZE, avg_size: int = AVG_SIZE,
                 max_size: int = MAX_SIZE) -> None:
        check_sizes(min_size, avg_size, max_size)
        self.min_size, self.avg_size, self.max_size = min_size, avg_size, max_size
        self._mask_s, self._mask_l = masks(avg_size)
        self._buf = bytearray()
        self._finished = False

    def _cut(self, final: bool) -> list[bytes]:
        buf = self._buf
        # Scanned only once max_size + min_size bytes are there (or at the end): no chunk is
        # scanned twice, whatever the sizes of the pieces.
        ends = impl.cuts(buf, 0, len(buf), final, self.min_size, self.avg_size,
                         self.max_size, self._mask_s, self._mask_l, GEAR)
        chunks: list[bytes] = []
        start = 0
        # Each chunk copied once, from a view (a slice of the bytearray would be a copy,
        # then bytes() another); the view is released before the prefix is dropped.
        with memoryview(buf) as view:
            for end in ends:
                chunks.append(bytes(view[start:end]))
                start = end
        # A bytearray drops a prefix without moving the rest (CPython moves its start).
        del buf[:start]
        return chunks

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add the next piece of the stream; the chunks it completed, in order (a chunk is
        complete once its cut is known, often before `max_size` bytes follow it)."""
        if self._finished:
            raise ValueError("update after finish")
        self._buf += data
        return self._cut(final=False)

    def finish(self) -> list[bytes]:
        """End the stream: the chunks of the bytes left (none if none; several when zero runs
        cut them).  Repeating it gives []."""
        if self._finished:
            return []
        self._finished = True
        return self._cut(final=True)

    def _cut_hashed(self, final: bool) -> bytes:
        buf = self._buf
        done, entries = cut_hash(buf, 0, len(buf), final, self.min_size, self.avg_size,
                                 self.max_size, self._mask_s, self._mask_l, GEAR)
        del buf[:done]
        return entries

    def update_hashed(self, data: bytes | bytearray | memoryview) -> bytes:
        """`update`, the chunks given as a chunk list (`ENTRY`s back to back: each chunk's
        BLAKE3 and length), not as bytes: no object per chunk."""
        if self._finished:
            raise ValueError("update after finish")
        self._buf += data
        return self._cut_hashed(final=False)

    def finish_hashed(self) -> bytes:
        """`finish`, the chunks given as a chunk list; b"" when repeated."""
        if self._finished:
            return b""
        self._finished = True
        return self._cut_hashed(final=True)


def cut_points(data: bytes | bytearray | memoryview, min_size: int = MIN_SIZE,
               avg_size: int = AVG_SIZE, max_size: int = MAX_SIZE) -> list[int]:
    """The end offsets of the chunks of `data` as one whole stream (the Chunker's cuts); []
    for empty data."""
    check_sizes(min_size, avg_size, max_size)
    mask_s, mask_l = masks(avg_size)
    view = memoryview(data).cast("B")
    return list(impl.cuts(view, 0, len(view), True, min_size, avg_size, max_size,
                          mask_s, mask_l, GEAR))

"""Pure-Python twin of native/cdc.pyx: FastCDC cut points (normalized chunking, gear hash)
with runs of zeros cut apart.

Both twins must give identical cuts for identical arguments; tests/test_cdc.py compares them
with hypothesis.  pithos.core.cdc holds the table, the masks and the streaming; this module
only scans, and names the chunks it cut (`cut_hash`, the twin of native/cdchash.pyx).

The scan, for one chunk starting at `pos`:
- A *zero run* is at least `min_size` zero bytes.  A chunk that starts with one is that run,
  up to `max_size` bytes: a long run becomes max-size chunks counted from its start (all the
  same block) and its remainder.
- Any other chunk ends at the first of: the start of a zero run (even before `min_size`); a
  gear-hash match, no earlier than `min_size` (the hash starts there from 0): up to
  `avg_size` where its top bits under the strict mask `mask_s` are all zero, then under the
  looser `mask_l`; `max_size`.
So a write into a zero extent of an image changes the chunk it lands in and the remainders
of the two runs it splits, not every chunk of the extent after it; and chunks of random or
text data (no zero runs) are plain FastCDC's.  The hash is `h = (h << 1) + gear[byte]`
modulo 2**64, whose bit k depends on the last k+1 bytes only, so the masks take the top bits
(bits that depend on the last 64 bytes), and a cut depends on nothing before the chunk's
start.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pithos.core.hashing import block_hash

_GEAR = struct.Struct("<256Q")
# A chunk list entry: the chunk's BLAKE3 and its length (u32, little-endian).
ENTRY = struct.Struct("<32sI")
_WORD = 0xFFFF_FFFF_FFFF_FFFF


def _zeros_end(view: memoryview, i: int, stop: int) -> int:
    """The first offset in [i, stop) holding a nonzero byte, else `stop`."""
    while i < stop and view[i] == 0:
        i += 1
    return i


def run_start(view: memoryview, lo: int, hi: int, end: int, z: int) -> int:
    """The first s in [lo, hi) where a zero run starts (view[s - 1] nonzero, view[s:s + z]
    all zero, s + z <= end); `hi` if none.  `lo` >= 1.  Runs are found by looking at one
    byte in every `z` (a run of `z` zeros holds one of them), so random data costs little."""
    stop = min(hi + z - 1, end)
    j = lo
    while j < stop:
        if view[j]:
            j += z
            continue
        r = j
        while r > lo and view[r - 1] == 0:
            r -= 1
        e = _zeros_end(view, j, min(r + z, end))
        if view[r - 1] and e - r >= z:
            return r if r < hi else hi
        # Not a run start (too short, or begun before lo): skip these zeros.  A run starting
        # after them still holds a later grid point.
        e = _zeros_end(view, e, stop)
        j += -(-(e - j) // z) * z if e > j else z
    return hi


def cuts(data: bytes | bytearray | memoryview, start: int, end: int, final: bool,
         min_size: int, avg_size: int, max_size: int, mask_s: int, mask_l: int,
         gear: bytes) -> list[int]:
    """The end offsets of the successive chunks of `data[start:end]` (offsets into `data`).

    When not `final`, a chunk is cut only once `max_size + min_size` bytes from its start are
    known (every cut rule is decided by then: a zero run starting just before `max_size` is
    seen whole), and the bytes after the last offset returned are the caller's to pass again
    with more data.  When `final` (`end` is the end of the stream), the rest is cut too, the
    last chunk ending at `end`."""
    table = _GEAR.unpack(gear)
    view = memoryview(data).cast("B")
    if not 0 <= start <= end <= len(view):
        raise ValueError("start and end out of range")
    z = min_size
    out: list[int] = []
    pos = start
    while True:
        remaining = end - pos
        if remaining <= 0 or (not final and remaining < max_size + z):
            return out
        limit = min(pos + max_size, end)
        if pos + z <= end and not any(view[pos:pos + z]):
            cut = _zeros_end(view, pos + z, limit)
        elif remaining <= min_size:
            cut = end
        else:
            stop = run_start(view, pos + 1, limit, end, z)
            center = min(pos + avg_size, stop)
            h = 0
            i = pos + min_size
            cut = -1
            while i < center:
                h = ((h << 1) + table[view[i]]) & _WORD
                i += 1
                if not h & mask_s:
                    cut = i
                    break
            if cut < 0:
                while i < stop:
                    h = ((h << 1) + table[view[i]]) & _WORD
                    i += 1
                    if not h & mask_l:
                        cut = i
                        break
            if cut < 0:
                cut = stop
        out.append(cut)
        pos = cut


def hash_cuts(data: bytes | bytearray | memoryview, start: int, ends: Sequence[int]) -> bytes:
    """The chunk list entries (`ENTRY`, back to back) of the chunks of `data` that end at
    `ends`, the first starting at `start`."""
    view = memoryview(data).cast("B")
    pack = ENTRY.pack
    out = []
    for end in ends:
        out.append(pack(block_hash(view[start:end]), end - start))
        start = end
    return b"".join(out)


def cut_hash(data: bytes | bytearray | memoryview, start: int, end: int, final: bool,
             min_size: int, avg_size: int, max_size: int, mask_s: int, mask_l: int,
             gear: bytes) -> tuple[int, bytes]:
    """(where the last chunk cut ends, the chunks' entries): `cuts` with each chunk named
    by its BLAKE3, as a chunk list (`ENTRY`s back to back); (`start`, b"") if none."""
    ends = cuts(data, start, end, final, min_size, avg_size, max_size, mask_s, mask_l, gear)
    if max_size > 0xFFFF_FFFF:
        raise ValueError("max_size does not fit a chunk list entry's u32 length")
    return (ends[-1] if ends else start), hash_cuts(data, start, ends)

"""Pure-Python twin of native/cdc.pyx: FastCDC cut points (normalized chunking, gear hash).

Both twins must give identical cuts for identical arguments; tests/test_cdc.py compares them
with hypothesis.  pithos.core.cdc holds the table, the masks and the streaming; this module
only scans.

The scan, for one chunk starting at `pos` with `remaining` bytes before the end of what is
known: no cut before `min_size` (the gear hash starts there from 0); up to `avg_size` a cut
where the hash's top bits under the strict mask `mask_s` are all zero, then under the looser
`mask_l`; a cut at `max_size` at the latest.  The hash is `h = (h << 1) + gear[byte]` modulo
2**64, whose bit k depends on the last k+1 bytes only, so the masks take the top bits (bits
that depend on the last 64 bytes), and a cut depends on nothing before the chunk's start.
"""

from __future__ import annotations

import struct

_GEAR = struct.Struct("<256Q")
_WORD = 0xFFFF_FFFF_FFFF_FFFF


def cuts(data: bytes | bytearray | memoryview, start: int, end: int, final: bool,
         scanned: int, min_size: int, avg_size: int, max_size: int, mask_s: int,
         mask_l: int, gear: bytes) -> list[int]:
    """The end offsets of the successive chunks of `data[start:end]` (offsets into `data`).

    A cut is made only where it cannot depend on bytes after `end`: where the hash matches
    (the scan stops at the first match), at `max_size`, or, when `final` (`end` is the end of
    the stream), at `end`.  When not `final`, the bytes after the last offset returned are
    the caller's to scan again with more data: it may pass `scanned`, the offset up to which
    the chunk starting at `start` was already scanned without a match (the scan resumes
    there, after hashing the 64 bytes before it again), or `start` for none."""
    table = _GEAR.unpack(gear)
    view = memoryview(data).cast("B")
    if not 0 <= start <= end <= len(view) or not start <= scanned <= end:
        raise ValueError("start, scanned and end out of range")
    out: list[int] = []
    pos = start
    while True:
        remaining = end - pos
        if remaining <= 0:
            return out
        if remaining <= min_size:
            if final:
                out.append(end)
            return out
        center = min(pos + avg_size, end)
        limit = min(pos + max_size, end)
        h = 0
        i = pos + min_size
        if pos == start and scanned > i:
            # Resume: the hash at `scanned` depends on its last 64 bytes only.
            for j in range(max(i, scanned - 64), scanned):
                h = ((h << 1) + table[view[j]]) & _WORD
            i = scanned
        cut = -1
        while i < center:
            h = ((h << 1) + table[view[i]]) & _WORD
            i += 1
            if not h & mask_s:
                cut = i
                break
        if cut < 0:
            while i < limit:
                h = ((h << 1) + table[view[i]]) & _WORD
                i += 1
                if not h & mask_l:
                    cut = i
                    break
        if cut < 0:
            if pos + max_size <= end:
                cut = pos + max_size
            elif final:
                cut = end
            else:
                return out
        out.append(cut)
        pos = cut

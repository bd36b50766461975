"""Reading a volume's base map: byte ranges of immutable blocks, every byte verified.

Ranges are verified by the Blocker (`Blocker.read_range_into`, pithos.blocker.ranges: a block
verified whole at its first read, later ranges piece by piece); zero blocks, which every
sparse image names many times, are served without I/O.
"""

from __future__ import annotations

import bisect
import itertools

from pithos.blocker import Blocker
from pithos.core.hashing import block_hash


class VerifiedBlocks:
    """Verified range reads of immutable blocks, shared by every volume of a process."""

    def __init__(self, blocker: Blocker) -> None:
        self.blocker = blocker
        self._zero: dict[bytes, int] = {}

    def note_zero(self, length: int) -> bytes:
        """Register the hash of a zero block of `length` bytes: served without I/O."""
        h = block_hash(bytes(length))
        self._zero[h] = length
        return h

    def is_zero(self, hash_: bytes) -> bool:
        return hash_ in self._zero

    def read_into(self, hash_: bytes, offset: int, buf: memoryview) -> None:
        """Fill `buf` with bytes `[offset, offset + len(buf))` of a block (zeros past its
        end).  Raises NotFound or IntegrityError."""
        if hash_ in self._zero:
            buf[:] = bytes(len(buf))
            return
        self.blocker.read_range_into(hash_, offset, buf)


class BaseView:
    """The content of one base map (or of none): entries located by offset."""

    def __init__(self, blocks: VerifiedBlocks, entries: list[tuple[bytes, int]],
                 size: int) -> None:
        self.blocks = blocks
        self.hashes = [h for h, _ in entries]
        self.lengths = [n for _, n in entries]
        self.size = size
        self.starts = list(itertools.accumulate(self.lengths, initial=0))[:-1]
        # Fixed-size blocks (every entry but the last the same length): locate by division.
        first = self.lengths[0] if self.lengths else 0
        self._fixed = first if all(n == first for n in self.lengths[:-1]) else 0

    def index(self, offset: int) -> int:
        if self._fixed:
            return min(offset // self._fixed, len(self.lengths) - 1)
        return bisect.bisect_right(self.starts, offset) - 1

    def read_into(self, buf: memoryview, offset: int) -> None:
        """Fill `buf` with the base content at `offset`; zeros past the base's end."""
        n = len(buf)
        end = offset + n
        if offset >= self.size or not self.hashes:
            buf[:] = bytes(n)
            return
        if end > self.size:
            buf[self.size - offset:] = bytes(end - self.size)
            end = self.size
        i = self.index(offset)
        pos = offset
        while pos < end:
            start = self.starts[i]
            stop = min(start + self.lengths[i], end)
            self.blocks.read_into(self.hashes[i], pos - start,
                                  buf[pos - offset:stop - offset])
            pos = stop
            i += 1

    def entry_span(self, index: int) -> tuple[int, int]:
        return self.starts[index], self.lengths[index]

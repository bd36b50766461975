"""Reading a volume's base map: byte ranges of immutable blocks, every byte verified.

The Blocker verifies a block by hashing all of it (4 MiB): doing that for every 4 KiB guest read
would cap a clone at about a thousand IOPS.  So the first read of a block verifies it whole
(through the Blocker) and remembers, for each 16 KiB piece of it, the BLAKE3 of the piece; later
ranges are read from the block store directly and checked against those piece hashes.  Every
served byte is thus checked against a hash derived from a verified block, at the cost of hashing
16 KiB instead of 4 MiB.  A mismatch is an IntegrityError (NBD EIO), never served data.

The last few blocks read are also kept whole (a sequential reader uses them next).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import OrderedDict

from pithos.blocker import Blocker
from pithos.core.errors import IntegrityError
from pithos.core.hashing import block_hash, to_hex

PIECE = 16 * 1024


class VerifiedBlocks:
    """Verified range reads of immutable blocks, shared by every volume of a process."""

    def __init__(self, blocker: Blocker, max_pieces_blocks: int = 16384,
                 max_whole_blocks: int = 8) -> None:
        self.blocker = blocker
        self._pieces: OrderedDict[bytes, list[bytes]] = OrderedDict()
        self._whole: OrderedDict[bytes, bytes] = OrderedDict()
        self._max_pieces = max_pieces_blocks
        self._max_whole = max_whole_blocks
        self._lock = threading.Lock()
        self._zero: dict[bytes, int] = {}

    def note_zero(self, length: int) -> bytes:
        """Register the hash of a zero block of `length` bytes: served without I/O."""
        h = block_hash(bytes(length))
        self._zero[h] = length
        return h

    def is_zero(self, hash_: bytes) -> bool:
        return hash_ in self._zero

    def _load(self, hash_: bytes) -> bytes:
        data = self.blocker.get(hash_)  # verified whole
        pieces = [block_hash(memoryview(data)[i:i + PIECE]) for i in range(0, len(data), PIECE)]
        with self._lock:
            self._pieces[hash_] = pieces
            while len(self._pieces) > self._max_pieces:
                self._pieces.popitem(last=False)
            self._whole[hash_] = data
            while len(self._whole) > self._max_whole:
                self._whole.popitem(last=False)
        return data

    def read_into(self, hash_: bytes, offset: int, buf: memoryview) -> None:
        """Fill `buf` with bytes `[offset, offset + len(buf))` of a block (zeros past its
        end).  Raises NotFound or IntegrityError."""
        n = len(buf)
        if hash_ in self._zero:
            buf[:] = bytes(n)
            return
        with self._lock:
            data = self._whole.get(hash_)
            pieces = self._pieces.get(hash_) if data is None else None
            if data is not None:
                self._whole.move_to_end(hash_)
            elif pieces is not None:
                self._pieces.move_to_end(hash_)
        if data is None and pieces is None:
            data = self._load(hash_)
        if data is not None:
            got = data[offset:offset + n]
            buf[:len(got)] = got
            if len(got) < n:
                buf[len(got):] = bytes(n - len(got))
            return
        assert pieces is not None
        first, last = offset // PIECE, (offset + n - 1) // PIECE
        last = min(last, len(pieces) - 1)
        start = first * PIECE
        raw = self.blocker.raw_read(hash_, start, (last - first + 1) * PIECE)
        for k, i in enumerate(range(first, last + 1)):
            if block_hash(memoryview(raw)[k * PIECE:(k + 1) * PIECE]) != pieces[i]:
                with self._lock:
                    self._pieces.pop(hash_, None)
                raise IntegrityError(f"corrupt block {to_hex(hash_)} (piece {i})", [hash_])
        got = raw[offset - start:offset - start + n]
        buf[:len(got)] = got
        if len(got) < n:
            buf[len(got):] = bytes(n - len(got))


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

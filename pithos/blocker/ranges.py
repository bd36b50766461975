"""Verified byte ranges of blocks: the one way to read part of a block and trust it.

Hashing a whole block (4 MiB) for every small range would cap a volume at about a thousand
4 KiB reads a second.  So the first range read of a block verifies it whole (through the
Blocker: hashed against its name, quarantined if damaged) and remembers, for each 16 KiB piece
of it, the BLAKE3 of the piece; later ranges are read from the store as stored and each piece
they touch is checked against those hashes.  Every byte handed out is thus checked against a
hash derived from a verified block, at the cost of hashing 16 KiB instead of 4 MiB.  A mismatch
is an IntegrityError naming the block, never served data.

The last few blocks read are also kept whole (a sequential reader uses them next).

(`Blocker.read_parts` is not a range read: it streams a *whole* block in 1 MiB parts checked
against the block's BLAKE3 tree, where the store keeps one, so a large read can start sending
before the whole block is hashed.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from pithos.core.errors import IntegrityError
from pithos.core.hashing import block_hash, to_hex
from pithos.core.locks import native_lock

PIECE = 16 * 1024


class VerifiedRanges:
    """Verified range reads of immutable blocks, with the piece hashes of the most recently
    read `max_pieces_blocks` blocks (~18 KiB of Python objects each for a 4 MiB block) and
    the bytes of the last `max_whole_blocks`.  Thread-safe.

    `get` returns a block verified whole (Blocker.get); `raw_read` a range as stored."""

    def __init__(self, get: Callable[[bytes], bytes],
                 raw_read: Callable[[bytes, int, int], bytes],
                 max_pieces_blocks: int = 16384, max_whole_blocks: int = 8) -> None:
        self._get = get
        self._raw_read = raw_read
        self._pieces: OrderedDict[bytes, list[bytes]] = OrderedDict()
        self._whole: OrderedDict[bytes, bytes] = OrderedDict()
        self._max_pieces = max_pieces_blocks
        self._max_whole = max_whole_blocks
        self._lock = native_lock()  # (dict moves only; greenlets and pool threads take it)

    def _load(self, hash_: bytes) -> bytes:
        data = self._get(hash_)  # verified whole
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
        raw = self._raw_read(hash_, start, (last - first + 1) * PIECE)
        for k, i in enumerate(range(first, last + 1)):
            if block_hash(memoryview(raw)[k * PIECE:(k + 1) * PIECE]) != pieces[i]:
                with self._lock:
                    self._pieces.pop(hash_, None)
                raise IntegrityError(f"corrupt block {to_hex(hash_)} (piece {i})", [hash_])
        got = raw[offset - start:offset - start + n]
        buf[:len(got)] = got
        if len(got) < n:
            buf[len(got):] = bytes(n - len(got))

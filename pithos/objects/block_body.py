"""The body of a `POST ?blocks`: raw blocks back to back, cut at given lengths or at the
block size.

Unlike an object's body it has no ETag, so nothing hashes it whole (an MD5 of every block
body cost as much as storing it: 3 of the 7 ms a MB a first sync spent here).  It is read
in large pieces and cut into blocks from them, not read a block at a time: a body of 8 MiB
of 16 KiB chunks was 500 reads through the request's stream.  Each block is then named
(BLAKE3) by the Blocker on its pool, which is where the server verifies what it received.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

from pithos.core.errors import IncompleteBody, InvalidArgument, TooLarge
from pithos.mapper.mapper import STREAM_PIECE

# Bytes asked of the request's stream at a time (at most what the lengths still need): the
# size of the upload buffers a server's worker keeps (pithos.api.body.PieceBuffers), so a
# read of a whole piece gets one of those back.
READ_PIECE = STREAM_PIECE


class BlockBody:
    """`length` bytes of `stream` (None: to its end), at most `max_size` (TooLarge past
    it), cut into blocks."""

    def __init__(self, stream: BinaryIO, length: int | None, max_size: int) -> None:
        self._stream = stream
        self._length = length
        self._max = max_size
        self.count = 0

    def _read(self, n: int) -> bytes:
        if self._length is not None:
            n = min(n, self._length - self.count)
            if n <= 0:
                return b""
        data = self._stream.read(n)
        self.count += len(data)
        if self.count > self._max:
            raise TooLarge(f"body larger than {self._max} bytes")
        return data

    def cut(self, lengths: Sequence[int]) -> Iterator[bytes]:
        """Blocks of the given lengths, in order; never reads past their sum (what follows
        is the caller's to refuse).  InvalidArgument if the body is shorter."""
        left = sum(lengths)
        buf = bytearray()
        pos = 0
        for n in lengths:
            if len(buf) - pos < n:
                del buf[:pos]
                pos = 0
                while len(buf) < n:
                    more = self._read(min(max(READ_PIECE, n - len(buf)), left - len(buf)))
                    if not more:
                        raise InvalidArgument("the body is shorter than the block lengths")
                    buf += more
            view = memoryview(buf)  # (one copy out, not a slice and a copy of it)
            block = bytes(view[pos:pos + n])
            view.release()  # (a view held would keep `del buf[...]` from resizing it)
            yield block
            pos += n
            left -= n

    def batches(self, lengths: Sequence[int], max_blocks: int, max_bytes: int
                ) -> Iterator[list[memoryview]]:
        """The blocks of the given lengths, in batches of at most `max_blocks` blocks and
        `max_bytes` bytes (a longer block alone), in order.  The body is read a piece
        (READ_PIECE) at a time, from the socket straight into the piece where the stream
        reads so, and each block is a view of the piece it lies in: no block is copied out
        of the body (`cut` makes a copy and a bytes object for every 16 KiB chunk of a sync
        client's batch), and nor is the body copied into a batch's buffer (that copy, and
        the buffer's growth, were as much as the body again).  Only a block across pieces
        is copied together (one a piece, at most).  Never reads past the lengths' sum;
        InvalidArgument if the body is shorter."""
        unread = sum(lengths)
        piece, at = memoryview(b""), 0

        def next_piece() -> memoryview:
            nonlocal unread
            # At most READ_PIECE asked at a time: the request's stream allocates what a read
            # asks before any byte of it comes (SocketBody), so one read of a whole batch
            # (32 MiB) let a client pin that much per connection by declaring lengths and
            # sending nothing.  Held so is only what came, plus one piece.
            data = self._read(min(unread, READ_PIECE))
            if not data:
                raise InvalidArgument("the body is shorter than the block lengths")
            unread -= len(data)
            return memoryview(data)

        i = 0
        while i < len(lengths):
            j, size = i, 0
            while j < len(lengths) and j - i < max_blocks and \
                    (j == i or size + lengths[j] <= max_bytes):
                size += lengths[j]
                j += 1
            batch = []
            for n in lengths[i:j]:
                if at == len(piece) and n:  # this piece used up: the next
                    piece, at = next_piece(), 0
                if len(piece) - at >= n:
                    batch.append(piece[at:at + n])
                    at += n
                    continue
                # Across pieces (or past this one's end): the block's bytes gathered, in a
                # buffer that grows only as they come.
                block = bytearray(piece[at:])
                while len(block) < n:
                    piece = next_piece()
                    at = min(n - len(block), len(piece))
                    block += piece[:at]
                batch.append(memoryview(block))
            yield batch
            i = j

    def blocks(self, size: int) -> Iterator[bytes]:
        """Blocks of `size` bytes (the last may be shorter) to the end of the body."""
        buf = bytearray()
        while True:
            while len(buf) < size:
                more = self._read(max(READ_PIECE, size - len(buf)))
                if not more:
                    break
                buf += more
            if not buf:
                return
            yield bytes(buf[:size])
            del buf[:size]

    def finish(self) -> None:
        """IncompleteBody if the body ended before its announced length."""
        if self._length is not None and self.count != self._length:
            raise IncompleteBody(f"got {self.count} of {self._length} bytes")

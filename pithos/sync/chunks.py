"""The chunker the sync client cuts files with: content-defined (FastCDC, `pithos.core.cdc`,
4/16/64 KiB), so an insert in the middle of a file changes only the chunks around it.  Each
chunk is a block named by its BLAKE3; the server stores it as one map entry of its own
length, so a hashmap PUT names exactly the chunks the client cut."""

from __future__ import annotations

from typing import Protocol

from pithos.core import cdc
from pithos.core.cdc import AVG_SIZE, GEAR, MAX_SIZE, MIN_SIZE

_MASK_S, _MASK_L = cdc.masks(AVG_SIZE)


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class PieceCutter:
    """Cuts one file read a piece at a time into a buffer of its own, each piece's chunks
    named (`cdc.cut_hash`) as a chunk list, the same as `cdc.Chunker().update_hashed`
    gives.  A piece is read straight into the buffer behind the bytes not cut yet (at most
    MAX_SIZE + MIN_SIZE, moved to its front when the room runs out): the Chunker copied
    every piece into its stream buffer (a 1 MiB copy and often a new buffer per piece,
    ~20% of the scan thread's time holding the GIL).  Not thread-safe."""

    def __init__(self, piece_size: int, file_size: int, buf: bytearray | None = None) -> None:
        """`buf`: a buffer to cut in (one `buffer_size(piece_size)` long, given back by a
        cutter done with it), rather than a new one zeroed for this file."""
        # (A small file's buffer is its size: read whole, then the read that finds its end.)
        self.piece_size = piece_size
        size = min(piece_size, file_size + 1) + MAX_SIZE + MIN_SIZE
        self.buf = buf if buf is not None and len(buf) >= size else bytearray(size)
        self.start = self.end = 0
        self.finished = False

    @staticmethod
    def buffer_size(piece_size: int) -> int:
        """The size of a large file's buffer: one any file can be cut in."""
        return piece_size + MAX_SIZE + MIN_SIZE

    def read(self, f: Readable) -> memoryview:
        """Read the next piece of `f` (up to piece_size bytes; fewer at its end); a view of
        the bytes read (empty at the end), to be released before `cut`."""
        if self.finished:
            raise ValueError("read after the end")
        room = len(self.buf) - self.end
        if room < self.piece_size and self.start:
            left = self.end - self.start
            self.buf[:left] = bytes(memoryview(self.buf)[self.start:self.end])
            self.start, self.end = 0, left
            room = len(self.buf) - left
        with memoryview(self.buf) as whole:
            view = whole[self.end:self.end + min(room, self.piece_size)]
        got = f.readinto(view) or 0
        self.end += got
        return view[:got]

    def cut(self, final: bool = False) -> bytes:
        """The chunk list of the chunks the bytes read so far complete (with `final`, the
        file ended: every chunk left; nothing more can be read)."""
        if self.finished:
            return b""
        self.finished = final
        done, entries = cdc.cut_hash(self.buf, self.start, self.end, final, MIN_SIZE,
                                     AVG_SIZE, MAX_SIZE, _MASK_S, _MASK_L, GEAR)
        self.start = done
        return entries

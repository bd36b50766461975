"""Byte-stream helpers of the mapper: reading a stream in whole chunks, checking announced
lengths, regrouping pieces."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from pithos.core.errors import InvalidArgument


def read_chunks(stream: BinaryIO, size: int) -> Iterator[bytes]:
    """Full `size`-byte chunks of a stream (the last may be shorter), whatever its read()s
    return."""
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        while len(chunk) < size:
            more = stream.read(size - len(chunk))
            if not more:
                break
            chunk += more
        yield chunk


def read_exactly(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes of a stream, fewer only at its end, whatever its read()s return."""
    data = stream.read(size)
    while data and len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data = data + more  # (never in place: the caller may hold what read() gave)
    return data


def exactly(chunks: Iterator[bytes], length: int) -> Iterator[bytes]:
    """The chunks, checked to add up to exactly `length` bytes."""
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > length:
            raise InvalidArgument(f"more than the {length} bytes announced")
        yield chunk
    if seen != length:
        raise InvalidArgument(f"got {seen} of the {length} bytes announced")


def zeros(n: int, piece: int = 1 << 20) -> Iterator[bytes]:
    while n > 0:
        k = min(n, piece)
        yield bytes(k)
        n -= k


def concat_chunks(parts: Iterable[Iterable[bytes]]) -> Iterator[bytes]:
    for part in parts:
        for chunk in part:
            if chunk:
                yield chunk


def rechunk(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Regroup a stream of byte strings into `size`-byte chunks (the last may be shorter)."""
    buf = bytearray()
    for piece in pieces:
        if not buf and len(piece) == size:
            yield piece
            continue
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)

"""Pure-Python twin of native/mapcodec.pyx: map page encoding and range resolution.

Both implementations must give identical results; tests/test_native_twins.py compares them.

Page layout (little-endian), 16-byte header then fixed-size entries:

    magic "PMP1" | level u8 | 3 bytes zero | count u32 | 4 bytes zero
    level 0 (leaf):      count x (block hash [32] | length u32)
    level > 0 (interior): count x (page hash [32] | bytes u64 | entries u64)
"""

from __future__ import annotations

import struct

MAGIC = b"PMP1"
HEADER = struct.Struct("<4sB3xI4x")
LEAF_ENTRY = struct.Struct("<32sI")
NODE_ENTRY = struct.Struct("<32sQQ")
MAX_LEAF_LENGTH = 0xFFFFFFFF


def encode_leaf(hashes: list[bytes], lengths: list[int]) -> bytes:
    if len(hashes) != len(lengths):
        raise ValueError("hashes and lengths differ in count")
    out = bytearray(HEADER.pack(MAGIC, 0, len(hashes)))
    for h, n in zip(hashes, lengths, strict=True):
        if len(h) != 32 or not 0 < n <= MAX_LEAF_LENGTH:
            raise ValueError("bad leaf entry")
        out += LEAF_ENTRY.pack(h, n)
    return bytes(out)


def encode_node(level: int, hashes: list[bytes], sizes: list[int], counts: list[int]) -> bytes:
    if not 0 < level < 256:
        raise ValueError(f"bad level {level}")
    if not len(hashes) == len(sizes) == len(counts):
        raise ValueError("hashes, sizes and counts differ in count")
    out = bytearray(HEADER.pack(MAGIC, level, len(hashes)))
    for h, n, c in zip(hashes, sizes, counts, strict=True):
        if len(h) != 32 or n < 0 or c <= 0:
            raise ValueError("bad node entry")
        out += NODE_ENTRY.pack(h, n, c)
    return bytes(out)


def decode_page(data: bytes) -> tuple[int, list[bytes], list[int], list[int]]:
    """(level, hashes, sizes, counts); counts is empty for a leaf.  ValueError if `data` is
    not a well-formed map page."""
    if len(data) < HEADER.size:
        raise ValueError("too short for a map page")
    magic, level, count = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a map page (bad magic)")
    entry = LEAF_ENTRY if level == 0 else NODE_ENTRY
    if len(data) != HEADER.size + count * entry.size:
        raise ValueError("map page length does not match its entry count")
    hashes: list[bytes] = []
    sizes: list[int] = []
    counts: list[int] = []
    if level == 0:
        for h, n in LEAF_ENTRY.iter_unpack(memoryview(data)[HEADER.size:]):
            if n == 0:
                raise ValueError("map page has an empty entry")
            hashes.append(h)
            sizes.append(n)
    else:
        for h, n, c in NODE_ENTRY.iter_unpack(memoryview(data)[HEADER.size:]):
            if c == 0:
                raise ValueError("map page names an empty child")
            hashes.append(h)
            sizes.append(n)
            counts.append(c)
    return level, hashes, sizes, counts


def locate(sizes: list[int], offset: int, length: int) -> list[tuple[int, int, int]]:
    """Pieces `(index, offset_in_entry, n)` covering bytes `[offset, offset + length)` of the
    concatenation of entries of the given sizes, clipped to their total."""
    pieces: list[tuple[int, int, int]] = []
    if length <= 0 or offset < 0:
        return pieces
    end = offset + length
    start = 0
    for i, n in enumerate(sizes):
        stop = start + n
        if stop > offset:
            if start >= end:
                break
            lo = max(offset, start)
            hi = min(end, stop)
            pieces.append((i, lo - start, hi - lo))
        start = stop
    return pieces


_zeros = b""


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True when every byte is zero."""
    global _zeros
    n = len(data)
    if n > len(_zeros):
        _zeros = bytes(n)
    if not isinstance(data, bytes | bytearray):
        data = bytes(data)
    # Comparing with a zero buffer is a memcmp; cheaper than counting bytes.
    return data == (_zeros if n == len(_zeros) else _zeros[:n])

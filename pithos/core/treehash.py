"""Verified reading of a large block part by part: its BLAKE3 tree outboard.

A block's name is the BLAKE3 hash of its bytes, the root of a binary tree over its 1 KiB
chunks.  To check a block against its name we had to hash all of it, so a GET could send no
byte of a 4 MiB block before the whole block was read.  The tree lets us do better: the first
part (`PART` bytes) is checked against the name with the chaining values of its siblings up
the tree's left edge, and each sibling is then checked against its own value.  Those values
(the *spine*, 32 bytes each, from the lowest up) are the block's outboard, stored beside it.
For a 4 MiB block the spine is the chaining values of [1, 2) MiB and [2, 4) MiB: 64 bytes.

The outboard needs no trust: a wrong one fails the first check, and the block is then read
and verified whole.  A block of `PART` bytes or less has no outboard.

Computing chaining values of parts needs BLAKE3 internals that the blake3 package does not
expose: native/b3subtree.c, built into pithos.core._treehash.  Without it (or under
`PITHOS_PURE=1`, see pithos.core.native), `AVAILABLE` is False and nothing here is used.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from pithos.core.hashing import HASH_SIZE, block_hash
from pithos.core.native import PURE, built

_native: Any = built("pithos.core._treehash")  # (scripts/setup checks that it is built)

# Whether the blocker uses outboards.  (Under PITHOS_PURE the functions below still work, for
# the tests that check them.)
AVAILABLE = _native is not None and not PURE

PART = 1 << 20  # the first part's size; every sibling is a power of two of it, or the tail
_CHUNK = 1024


def _left_len(length: int) -> int:
    """Where BLAKE3 cuts `length` bytes (more than a chunk) into its two subtrees: the largest
    power of two of whole chunks that leaves at least one byte on the right."""
    full_chunks = (length - 1) // _CHUNK
    return (1 << (full_chunks.bit_length() - 1)) * _CHUNK


def spine(size: int) -> list[tuple[int, int]]:
    """The byte ranges of the siblings up the left edge of a `size`-byte block's tree, from
    the lowest: [(1 MiB, 2 MiB), (2 MiB, 4 MiB)] for 4 MiB.  Empty up to `PART` bytes."""
    out = []
    end = size
    while end > PART:
        cut = _left_len(end)
        out.append((cut, end))
        end = cut
    out.reverse()
    return out


def subtree_value(data: bytes | bytearray | memoryview, offset: int) -> bytes:
    """The chaining value of the subtree `data`, which starts at `offset` of its block."""
    hasher = _native.Subtree(offset)
    hasher.update(data)
    return hasher.chaining_value()  # type: ignore[no-any-return]


def pieces(size: int) -> list[tuple[int, int]]:
    """The `PART`-sized byte ranges of a `size`-byte block (the last one short): each sibling
    of `spine` is a run of them, so they can be read and hashed apart, side by side."""
    return [(start, min(start + PART, size)) for start in range(0, size, PART)]


def first_value_matches(name: bytes, size: int, value: bytes, outboard: bytes) -> bool:
    """Whether the first part (`value`: the `subtree_value` of the block's first `PART`
    bytes) and `outboard` hash up to `name`.  When they do, every value of the outboard is
    the block's own."""
    ranges = spine(size)
    if not ranges or len(outboard) != HASH_SIZE * len(ranges):
        return False
    last = len(ranges) - 1
    for i in range(len(ranges)):
        value = _native.parent(value, outboard[i * HASH_SIZE:(i + 1) * HASH_SIZE], i == last)
    return value == name


def sibling_values_match(outboard: bytes, index: int, values: list[bytes]) -> bool:
    """Whether the sibling `index` of a checked outboard is the bytes whose `pieces` have
    these `subtree_value`s, in order."""
    if not values:
        return False
    value = _join(values, 0, len(values), False, [])
    return value == outboard[index * HASH_SIZE:(index + 1) * HASH_SIZE]


def name(data: bytes | bytearray | memoryview, executor: Executor | None = None
         ) -> tuple[bytes, bytes]:
    """A whole block's hash and its outboard (empty up to `PART` bytes), as `TreeHasher`
    gives them; with `executor`, the second half of its parts is hashed on it while this
    thread hashes the first (one hand-off: 4 MiB in ~0.4 ms instead of 0.7 on two cores)."""
    view = memoryview(data).cast("B")
    ranges = pieces(len(view))
    if len(ranges) <= 1:
        return block_hash(view), b""

    def values_of(some: list[tuple[int, int]]) -> list[bytes]:
        return [subtree_value(view[start:end], start) for start, end in some]

    half = len(ranges) // 2
    if executor is not None:
        later = executor.submit(values_of, ranges[half:])
        values = values_of(ranges[:half]) + later.result()
    else:
        values = values_of(ranges)
    return _root_and_outboard(values)


class TreeHasher:
    """Hashes a block as its pieces arrive, as blake3.blake3() does, and gives its outboard
    too, for the same work: each `PART` of the block is hashed as a subtree, then the parts'
    values are joined up the tree (a handful of compressions)."""

    def __init__(self) -> None:
        self._values: list[bytes] = []  # of the parts done
        self._part = _native.Subtree(0)
        self._part_len = 0
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            if self._part_len == PART:  # more follows: that part is not the whole block
                self._values.append(self._part.chaining_value())
                self._part = _native.Subtree(self.size)
                self._part_len = 0
            take = min(len(view), PART - self._part_len)
            self._part.update(view[:take])
            self._part_len += take
            self.size += take
            view = view[take:]

    def finish(self) -> tuple[bytes, bytes]:
        """The block's hash and its outboard (empty up to `PART` bytes)."""
        if not self._values:
            return self._part.root(), b""
        return _root_and_outboard([*self._values, self._part.chaining_value()])


def _root_and_outboard(values: list[bytes]) -> tuple[bytes, bytes]:
    """The hash and the outboard of a block of more than one part, from its parts' values."""
    siblings: list[bytes] = []
    root = _join(values, 0, len(values), True, siblings)
    return root, b"".join(siblings)


def _join(values: list[bytes], lo: int, hi: int, root: bool, siblings: list[bytes]) -> bytes:
    """The value of the subtree over parts [lo, hi): cut as BLAKE3 cuts bytes (parts are
    whole chunks, powers of two), recording the right siblings along the left edge."""
    if hi - lo == 1:
        return values[lo]
    mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))
    left = _join(values, lo, mid, False, siblings)
    right = _join(values, mid, hi, False, siblings)
    if lo == 0:
        siblings.append(right)  # the deeper left edge recorded its sibling first
    return _native.parent(left, right, root)  # type: ignore[no-any-return]


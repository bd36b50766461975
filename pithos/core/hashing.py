"""Block hashing (BLAKE3-256), batch hashing on a thread pool, and the Merkle object hash.

Hashes are raw 32-byte `bytes` everywhere inside the code; `to_hex` / `from_hex` convert at the
edges (HTTP, logs, file names, CLI output).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from concurrent.futures import Executor

import blake3

from pithos.core.errors import InvalidArgument
from pithos.core.native import native

# hash_each(blocks) -> [BLAKE3 of each]: native/cdchash.pyx's, one call and one release of
# the GIL for a whole batch; None without the native build (or under PITHOS_PURE=1).
_cdchash = native("pithos.core._cdchash")

HASH_SIZE = 32
HASH_NAME = "blake3"
# Below this many bytes in a batch, handing work to threads costs more than it saves.
_PARALLEL_MIN_BYTES = 256 * 1024
_SPLIT_MIN_BYTES = 1024 * 1024
# A batch of more blocks than this is hashed in this many tasks (a few per core).
_GROUPS = 8
# A batch of more than _GROUPS blocks averaging at most this many bytes (content-defined
# chunks: a sync client's 8 MiB of ~16 KiB ones) is hashed natively in one task.
_SMALL_AVERAGE = 256 * 1024


def block_hash(data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE3-256 of `data`: the name of a block."""
    return blake3.blake3(data).digest()  # type: ignore[no-any-return]


def hash_many(blocks: Sequence[bytes | bytearray | memoryview],
              executor: Executor | None = None) -> list[bytes]:
    """Hash many blocks, in order.  blake3 releases the GIL, so with an `executor` large
    batches are hashed on several cores at once, and so is one large block (blake3's own
    threads split its tree: 4 MiB in 0.9 ms instead of 1.3 on two cores; it is on the path
    of a read that waits for it)."""
    if executor is not None and len(blocks) == 1 and len(blocks[0]) >= _SPLIT_MIN_BYTES:
        return [blake3.blake3(blocks[0], max_threads=blake3.blake3.AUTO).digest()]
    total = sum(len(b) for b in blocks)
    if executor is None or len(blocks) < 2 or total < _PARALLEL_MIN_BYTES:
        return [block_hash(b) for b in blocks]
    if len(blocks) > _GROUPS and _cdchash is not None and total <= _SMALL_AVERAGE * len(blocks):
        # Many small blocks, one task hashing them all without the GIL: in eight tasks
        # (each taking the GIL back after every block) a sync client's first sync cost the
        # server a hand-off per task and GIL hand-offs per block, for hashing that has no
        # idle core to spread over there.
        return executor.submit(_cdchash.hash_each, blocks).result()  # type: ignore[no-any-return]
    if len(blocks) > _GROUPS:
        # Many small blocks (content-defined chunks): a task per group of them, not per
        # block, whose hand-off would cost more than hashing 16 KiB (~5 us).
        step = -(-len(blocks) // _GROUPS)
        groups = executor.map(_hash_list, [blocks[i:i + step]
                                           for i in range(0, len(blocks), step)])
        return [h for group in groups for h in group]
    return list(executor.map(block_hash, blocks))


def _hash_list(blocks: Sequence[bytes | bytearray | memoryview]) -> list[bytes]:
    return [block_hash(b) for b in blocks]


_ZERO_HASH_PAD = bytes(HASH_SIZE)


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """The object hash of a list of block hashes, as Pithos computes it.

    Pad the list with zero-hashes (32 zero bytes) to a power of two, then hash pairs level by
    level up to one root.  One hash is its own root; the empty list gives the hash of no bytes.
    """
    if not hashes:
        return block_hash(b"")
    level = list(hashes)
    if len(level) == 1:
        return level[0]
    width = 1
    while width < len(level):
        width *= 2
    level.extend([_ZERO_HASH_PAD] * (width - len(level)))
    while len(level) > 1:
        level = [block_hash(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def to_hex(digest: bytes) -> str:
    """A hash as lowercase hex, for the edges."""
    return digest.hex()


def from_hex(text: str) -> bytes:
    """Parse a hex hash from the edges; a malformed one is an InvalidArgument."""
    if len(text) != 2 * HASH_SIZE:
        raise InvalidArgument(f"not a {HASH_NAME} hash: {text[:80]!r} "
                              f"(expected {2 * HASH_SIZE} hex digits)")
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"not a {HASH_NAME} hash: {text[:80]!r}") from None

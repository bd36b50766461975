"""The Blocker: the only user of a BlockStore.

It names blocks (hashes them on put), caps their size, verifies every block it reads (a
content-addressed store checks itself: a mismatch is corruption, reported and never served) and
works in batches, hashing on a thread pool because blake3 releases the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from pithos.blocker.store import BlockStore
from pithos.core.errors import IntegrityError, InvalidArgument, NotFound
from pithos.core.hashing import hash_many, to_hex

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
# A batch is split into puts of at most this many blocks, so memory stays bounded.
MAX_BATCH_BLOCKS = 64


class Blocker:
    """Content addressing over a `BlockStore`.

    `block_size` is the largest block accepted; `hash_threads` the size of the hashing pool
    (default: one per core).
    """

    def __init__(self, store: BlockStore, block_size: int = DEFAULT_BLOCK_SIZE,
                 hash_threads: int | None = None) -> None:
        if block_size <= 0:
            raise InvalidArgument(f"block size must be positive, not {block_size}")
        self.store = store
        self.block_size = block_size
        self._pool = ThreadPoolExecutor(max_workers=hash_threads or os.cpu_count() or 2,
                                        thread_name_prefix="blockhash")

    def put_many(self, blocks: Sequence[bytes]) -> list[bytes]:
        """Store blocks; returns their hashes, in order.  Durable on return (the store's
        contract), repeat-safe (a known block is not written again).  Raises InvalidArgument for
        a block larger than the block size, before storing anything."""
        for data in blocks:
            if len(data) > self.block_size:
                raise InvalidArgument(
                    f"block of {len(data)} bytes exceeds the block size {self.block_size}")
        hashes = hash_many(blocks, self._pool)
        unique = dict(zip(hashes, blocks, strict=True))
        items = list(unique.items())
        for i in range(0, len(items), MAX_BATCH_BLOCKS):
            self.store.put_many(items[i:i + MAX_BATCH_BLOCKS])
        return hashes

    def put(self, data: bytes) -> bytes:
        """Store one block; returns its hash."""
        return self.put_many([data])[0]

    def _verify(self, hashes: Sequence[bytes], blocks: Sequence[bytes]) -> None:
        actual = hash_many(blocks, self._pool)
        bad = [h for h, a in zip(hashes, actual, strict=True) if h != a]
        if bad:
            raise IntegrityError(
                "corrupt block(s), hash mismatch: " + ", ".join(to_hex(h) for h in bad[:8]),
                bad)

    def get_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The verified data of each block, in order.  Raises NotFound (listing every absent
        hash) or IntegrityError (listing every corrupt one); a corrupt block is never
        returned."""
        blocks = self.store.get_many(hashes)
        self._verify(hashes, blocks)
        return blocks

    def get(self, hash_: bytes) -> bytes:
        return self.get_many([hash_])[0]

    def read(self, hash_: bytes, offset: int, length: int) -> bytes:
        """Bytes `[offset, offset + length)` of one block, short at its end.  The whole block
        is read and verified first: a range is never served from an unverified block."""
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        return self.get(hash_)[offset:offset + length]

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Which of these blocks are absent (each once, in the order given)."""
        return self.store.missing(hashes)

    def delete_many(self, hashes: Sequence[bytes]) -> int:
        """Remove blocks; absent ones are ignored.  Callers delete references first."""
        return self.store.delete_many(hashes)

    def iterate(self, start_after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """Every block as (hash, size), sorted, resumable after a hash."""
        return self.store.iterate(start_after)

    def check(self, hashes: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Verify blocks without serving them: returns (corrupt, missing) hashes."""
        absent = self.store.missing(hashes)
        gone = set(absent)
        present = [h for h in dict.fromkeys(hashes) if h not in gone]
        try:
            blocks = self.store.get_many(present)
        except NotFound as exc:  # deleted between the two calls
            absent.extend(exc.hashes)
            gone.update(exc.hashes)
            present = [h for h in present if h not in gone]
            blocks = self.store.get_many(present)
        actual = hash_many(blocks, self._pool)
        corrupt = [h for h, a in zip(present, actual, strict=True) if h != a]
        return corrupt, absent

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()

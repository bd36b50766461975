"""MemoryBlockStore: a BlockStore in a dict, for tests and as the reference behaviour."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence

from pithos.blocker.store import BlockStore
from pithos.core.errors import InvalidArgument, NotFound
from pithos.core.locks import native_lock


class MemoryBlockStore(BlockStore):
    """Volatile: everything is gone with the object.  "Durable" means "in the dict"."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, bytes] = {}
        # Put times on time.time()'s clock, the clock of `delete_if_put_before`'s cutoff.
        self._put_at: dict[bytes, float] = {}
        self._lock = native_lock()  # (dict moves only; greenlets and pool threads take it)
        # Damaged bytes moved aside by `quarantine_many`, by hash (the latest copy).
        self._quarantine: dict[bytes, bytes] = {}

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        now = time.time()
        with self._lock:
            for hash_, data in items:
                stored = self._blobs.get(hash_)
                if stored is not None and len(stored) != len(data):
                    self._quarantine[hash_] = stored  # damaged: replaced below
                    stored = None
                if stored is None:
                    self._blobs[hash_] = bytes(data)
                self._put_at[hash_] = now

    def quarantine_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        moved = []
        with self._lock:  # compare and move are one step
            for hash_, seen in items:
                stored = self._blobs.get(hash_)
                if stored is not None and stored == seen and hash_ not in moved:
                    self._quarantine[hash_] = stored
                    del self._blobs[hash_], self._put_at[hash_]
                    moved.append(hash_)
        return moved

    def quarantined(self, hashes: Sequence[bytes] | None = None) -> list[bytes]:
        with self._lock:
            if hashes is None:
                return sorted(self._quarantine)
            return [h for h in dict.fromkeys(hashes) if h in self._quarantine]

    def get_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        with self._lock:
            absent = [h for h in hashes if h not in self._blobs]
            if absent:
                raise NotFound(f"{len(absent)} block(s) not found", absent)
            return [self._blobs[h] for h in hashes]

    def read(self, hash_: bytes, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        with self._lock:
            data = self._blobs.get(hash_)
        if data is None:
            raise NotFound("block not found", [hash_])
        return data[offset:offset + length]

    def sizes(self, hashes: Sequence[bytes]) -> list[int | None]:
        with self._lock:
            return [len(self._blobs[h]) if h in self._blobs else None for h in hashes]

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        with self._lock:
            return list(dict.fromkeys(h for h in hashes if h not in self._blobs))

    def touch_many(self, hashes: Sequence[bytes], fresh_since: float | None = None
                   ) -> list[bytes]:
        now = time.time()
        with self._lock:
            for h in hashes:
                if h in self._blobs and (fresh_since is None or self._put_at[h] < fresh_since):
                    self._put_at[h] = now
            return list(dict.fromkeys(h for h in hashes if h not in self._blobs))

    def delete_many(self, hashes: Sequence[bytes]) -> int:
        removed = 0
        with self._lock:
            for h in hashes:
                if self._blobs.pop(h, None) is not None:
                    del self._put_at[h]
                    removed += 1
        return removed

    def delete_if_put_before(self, hashes: Sequence[bytes], cutoff: float) -> list[bytes]:
        removed = []
        with self._lock:  # puts and touches take it too: compare and remove are one step
            for h in dict.fromkeys(hashes):
                put_at = self._put_at.get(h)
                if put_at is not None and put_at < cutoff:
                    del self._blobs[h], self._put_at[h]
                    removed.append(h)
        return removed

    def iterate(self, start_after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        with self._lock:
            keys = sorted(self._blobs)
        start = 0 if start_after is None else bisect.bisect_right(keys, start_after)
        for h in keys[start:]:
            data = self._blobs.get(h)
            if data is not None:
                yield h, len(data)

    def age_s(self, hashes: Sequence[bytes]) -> list[float | None]:
        now = time.time()
        with self._lock:
            return [None if h not in self._put_at else max(0.0, now - self._put_at[h])
                    for h in hashes]

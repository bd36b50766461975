"""The block grants a server worker has written or read, kept for a while.

A hashmap upload asks which of its blocks the account may name (`SharingMixin.granted_blocks`)
moments after its `POST ?blocks` wrote those very grants, usually on the same connection and
so in the same worker: the sync bench's first sync read back every one of its ~45,000 grants
(~6% of the server's CPU).  A worker keeps the grants it wrote or found, per owner, and asks the
catalog only about the others.

Why a kept grant stays true: grants are never revoked.  One goes only with its account or user
(a cascade of the owner's delete), and a deleted owner can no longer authenticate to ask.  Its
id can come back only on SQLite (an INTEGER PRIMARY KEY reuses the largest id after a delete),
where every process of the one machine shares the info stamp (pithos/core/stamp.py):
such a delete bumps it, and the worker drops everything it kept.  PostgreSQL's ids come from
sequences and are never reused.  Entries go after GRANTS_TTL_S anyway, and all at once past
GRANTS_MAX (memory stays bounded).  Only found grants are kept: one another process writes
later is asked for again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from pithos.core.locks import native_lock

GRANTS_TTL_S = 60.0
# ~100 bytes a hash kept: ~25 MB a worker at most.
GRANTS_MAX = 250_000

Tag = tuple[int, int]  # (the machine's info stamp, this process's info generation)


class GrantCache:
    """Grants by (table, owner id): `tag()` before asking or writing the catalog, then
    `known` for what is kept and `keep` for what the catalog answered or committed."""

    def __init__(self, tag: Callable[[], Tag]) -> None:
        self._tag_now = tag
        self._owners: dict[tuple[str, int], set[bytes]] = {}
        self._size = 0
        self._tag: Tag | None = None
        self._expires = 0.0
        # (Plain dict and set work under it, never a yield: a native lock is right here,
        # whether a pool thread or a greenlet asks; pithos/core/locks.py.)
        self._lock = native_lock()

    def tag(self) -> Tag:
        return self._tag_now()

    def _valid_for(self, tag: Tag) -> None:
        """Drop everything unless it was kept under `tag` and is not too old."""
        now = time.monotonic()
        if tag != self._tag or now >= self._expires:
            self._owners.clear()
            self._size = 0
            self._tag = tag
            self._expires = now + GRANTS_TTL_S

    def known(self, table: str, owner: int, hashes: Sequence[bytes], tag: Tag) -> set[bytes]:
        """The hashes among `hashes` kept as granted to `owner` (with `tag` read now)."""
        with self._lock:
            self._valid_for(tag)
            kept = self._owners.get((table, owner))
            return {h for h in hashes if h in kept} if kept else set()

    def keep(self, table: str, owner: int, hashes: Iterable[bytes], tag: Tag) -> None:
        """Grants the catalog answered or committed; `tag` read before it was asked (a change
        meanwhile moved the tag on: the next `known` drops these)."""
        with self._lock:
            self._valid_for(tag)
            kept = self._owners.setdefault((table, owner), set())
            before = len(kept)
            kept.update(hashes)
            self._size += len(kept) - before
            if self._size > GRANTS_MAX:
                self._owners.clear()
                self._size = 0

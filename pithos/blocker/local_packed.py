"""LocalBlockStore's packed blocks (pithos.blocker.packs): opening the packs, a batch put as
records, and the look-ups and touches that ask the packs index before any file, so that a
batch of chunks costs one pool task, not one per chunk.  A mixin of
pithos.blocker.local.LocalBlockStore, whose state it uses."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pithos.blocker.local_files import _backend_error, _refresh
from pithos.blocker.packs import Packs
from pithos.core.offload import Offload

# Look-ups of files (stats, utimes) go LOOKUPS_PER_TASK to a pool task, in at most _MAP_TASKS
# tasks, not one per file: each hand-off is a thread woken and the loop woken back (~50-70 us
# of CPU on a virtual machine, more when the hub's thread waits for the GIL), more than the
# look-up of a cached file it carries; a few tasks still keep a few requests in flight to a
# disk.  (Reads, writes and syncs keep a task each: their latencies overlap.)
_MAP_TASKS = 8
_LOOKUPS_PER_TASK = 64


class PackedMixin:
    path: str
    _packs: Packs | None
    _quarantine: str
    _tmp: str
    _pack_roll_bytes: int
    _offload: Offload

    if TYPE_CHECKING:  # (LocalBlockStore's)
        def _path(self, hash_: bytes) -> str: ...
        def _check_room(self, size: int) -> None: ...

    def _packs_ro(self) -> Packs | None:
        """The packed blocks, if this store has any (opening a store creates nothing)."""
        if self._packs is None and os.path.exists(f"{self.path}/packs/index.sqlite"):
            return self._packs_rw()
        return self._packs

    def _packs_rw(self) -> Packs:
        # No lock: under a gevent worker a lock is gevent's, and pool threads waiting on one
        # another's were sometimes never woken (a first sync hung 120 s on the first packed
        # puts of a worker, three threads waiting here with nobody holding it).  Two threads
        # that both find none each open one: both work (each appends to a pack of its own),
        # and the one not kept seals its pack when it goes.
        packs = self._packs
        if packs is None:
            packs = Packs(self.path, self._quarantine, self._tmp, self._pack_roll_bytes)
            if self._packs is None:
                self._packs = packs
        return packs

    def compact(self, min_garbage: float = 0.25) -> dict[str, int]:
        """Rewrite the packs of which at least `min_garbage` is dead (see Packs.compact)."""
        packs = self._packs_ro()
        try:
            return packs.compact(min_garbage) if packs is not None else {}
        except OSError as exc:
            raise _backend_error(exc, "cannot compact packs") from exc

    def _put_packed(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """put_many of blocks to pack: a packed one is refreshed; one packed with another
        size is quarantined and replaced.  A block not in the index is packed without
        looking for a file of it: that look-up (a failed utime per block, ~3-4% of the
        workers' CPU on the sync bench's first sync, perf) found one only for a block
        stored as a file (a small object's or a map page's, or from before packs) and sent
        again in a batch, which is now packed beside its file.  The store holds such a pair
        already when a file put and a packed put race: listed once (iterate), read from the
        file (a damaged one quarantined on read, the record then serves), both deleted, and
        the record's stamp is the fresh age the put gives."""
        packs = self._packs_rw()
        given = dict(items)
        rows = packs.lookup(list(given))
        for h, row in rows.items():
            if row[2] != len(memoryview(given[h])):
                packs.quarantine(h, None, len(memoryview(given[h])))
        refreshed = set(packs.refresh([h for h, row in rows.items()
                                       if row[2] == len(memoryview(given[h]))]))
        write = [(h, data) for h, data in given.items() if h not in refreshed]
        self._check_room(sum(len(memoryview(d)) for _, d in write))
        packs.put(write)

    def _refresh_packed(self, hash_: bytes, size: int) -> bool:
        """Whether the block is packed with this size (then refreshed, as a put would);
        packed with another size, it is damaged: quarantined, for the caller to replace."""
        packs = self._packs_ro()
        if packs is None:
            return False
        row = packs.lookup([hash_]).get(hash_)
        if row is not None and row[2] != size:
            packs.quarantine(hash_, None, size)
            return False
        return row is not None and hash_ in packs.refresh([hash_])

    def _packed_get(self, hash_: bytes) -> bytes | None:
        packs = self._packs_ro()
        return packs.get([hash_]).get(hash_) if packs is not None else None

    def _packed_rows(self, hashes: Sequence[bytes]) -> dict[bytes, tuple[int, int, int, float]]:
        """The index rows of the packed ones among `hashes` (run where it may block)."""
        packs = self._packs_ro()
        if packs is None or not hashes:
            return {}
        # The rows this process keeps are answered here (a pool hand-off costs more than the
        # dict look-ups: pithos/blocker/pack_rows.py); the pool asks the index the rest.
        rows = packs.kept(hashes)
        if len(rows) < len(hashes):
            rows.update(self._offload.run(packs.lookup, [h for h in hashes if h not in rows]))
        return rows

    def _missing_here(self, packs: Packs | None, hashes: list[bytes]
                      ) -> tuple[list[bytes], set[bytes]]:
        """On this thread: (the hashes neither packed nor looked for as files yet, those
        found absent): the index's look-up, then the files of a few (more are left to
        `_map`'s tasks)."""
        rows = packs.lookup(hashes) if packs is not None else {}
        rest = [h for h in hashes if h not in rows]
        if len(rest) > _LOOKUPS_PER_TASK:
            return rest, set()
        return [], {h for h in rest if not os.path.exists(self._path(h))}

    def _touch_here(self, packs: Packs, hashes: list[bytes], fresh_since: float | None
                    ) -> dict[bytes, int | None]:
        """touch_sizes of `hashes` on this thread: the index's refresh, then, if only a few
        are not packed, their files too (a small upload's chunks: one pool task, not two);
        more are left out of the answer, for `_map`'s tasks."""
        found: dict[bytes, int | None] = dict(packs.refresh(hashes, fresh_since))
        rest = [h for h in hashes if h not in found]
        if len(rest) <= _LOOKUPS_PER_TASK:
            found.update((h, _refresh(self._path(h))) for h in rest)
        return found

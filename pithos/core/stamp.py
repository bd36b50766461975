"""A stamp shared by every process of one machine that drops the lookups they cache.

Two users.  A server worker keeps its account-and-container lookups for a moment
(pithos.catalog.engine.INFO_TTL_S) and drops them when it writes an account, container or
sharing row itself; the other workers of the same `pithos serve`, and the CLI, write those
rows too: without a shared signal a worker would go on answering with an ACL revoked or a
versioning mode changed elsewhere until its entry expired (Swift's proxies clear the shared
memcache entry on such a write, for the same reason).  And every process using a packs
directory keeps the index rows it has read or written (pithos.blocker.pack_rows); the one that
removes rows (a collector's sweep, a quarantine) changes that directory's stamp.

The stamp is 8 bytes in a small file every process maps: a writer puts a new random value
there after its commit, and a lookup is trusted only while the stamp still holds the value it
read before loading it.  A random value rather than a counter: two writers that both read N
would both write N+1, and a reader that loaded between them would miss the second write.

Across machines (several scale-out nodes over one PostgreSQL) the stamp is not shared: a
node sees another node's change at most INFO_TTL_S late.  (Packs are one machine's.)
"""

from __future__ import annotations

import mmap
import os
import struct

_SIZE = 8
_FORMAT = "=Q"


class SharedStamp:
    """The stamp in the file at `path` (created when absent)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)  # zeros: a stamp like any other
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)  # the mapping keeps the file

    def read(self) -> int:
        value: int = struct.unpack_from(_FORMAT, self._map, 0)[0]
        return value

    def bump(self) -> None:
        """Tell every process mapping the stamp that what it looked up may be stale (call it
        after the write committed: a reader that loads after this sees the write)."""
        self._map[0:_SIZE] = os.urandom(_SIZE)

    def close(self) -> None:
        self._map.close()

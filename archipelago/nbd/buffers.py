"""Buffers of the NBD server, shared by its connections and bounded in bytes.

A connection owns no large buffer: it borrows one while it has a request to parse or data to
move and gives it back before it sleeps, so an idle connection (qemu keeps one open for as long
as the guest runs) costs its thread and socket only, and the buffer memory of a whole server
stays under the limits given to its pools, however many clients connect.
"""

from __future__ import annotations

import threading
from collections import deque

# Returned by BufferPool._take: "allocate one" (a sentinel, never handed out).
_NEW = bytearray()


class BufferPool:
    """Reusable buffers of at most `limit_bytes` in all (in use or kept for reuse).

    `get(n)` gives a bytearray of at least `n` bytes (capacities are powers of two from
    `min_bytes` up: reuse stays likely and waste under half), waiting while the limit is
    reached; waiters are served in arrival order, so a large request is not starved by a
    stream of small ones.  `put(buf)` gives it back; it is kept for the next `get` while the
    buffers kept stay under a quarter of the limit, and freed otherwise.  Every buffer got MUST
    be put back exactly once, and a caller MUST NOT wait in `get` while it holds a buffer of
    the same pool (give it back first): then the pool cannot deadlock, since every holder is
    about to give back without waiting for anybody.  Thread-safe.
    """

    def __init__(self, limit_bytes: int, min_bytes: int = 64 * 1024) -> None:
        if min_bytes <= 0 or min_bytes & (min_bytes - 1):
            raise ValueError("min_bytes must be a power of two")
        self.limit_bytes = limit_bytes
        self.min_bytes = min_bytes
        self.allocated_bytes = 0  # in use plus kept
        self._kept: dict[int, list[bytearray]] = {}
        self._kept_bytes = 0
        self._waiters: deque[object] = deque()
        self._cond = threading.Condition()

    def capacity(self, n: int) -> int:
        """The capacity of the buffer that `get(n)` gives."""
        cap = self.min_bytes
        while cap < n:
            cap <<= 1
        return cap

    def try_get(self, n: int) -> bytearray | None:
        """A buffer of at least `n` bytes now, or None if that needs waiting."""
        cap = self.capacity(n)
        with self._cond:
            if self._waiters:
                return None  # those who came first go first
            got = self._take(cap)
        return _allocate(cap) if got is _NEW else got

    def get(self, n: int) -> bytearray:
        """A buffer of at least `n` bytes, waiting until the limit allows it."""
        cap = self.capacity(n)
        if cap > self.limit_bytes:
            raise ValueError(f"a buffer of {n} bytes is larger than the pool's limit")
        ticket = object()
        with self._cond:
            self._waiters.append(ticket)
            try:
                while True:
                    if self._waiters[0] is ticket:
                        got = self._take(cap)
                        if got is not None:
                            break
                    self._cond.wait()
            finally:
                self._waiters.remove(ticket)
                self._cond.notify_all()  # the next in line may go now
        return _allocate(cap) if got is _NEW else got

    def put(self, buf: bytearray) -> None:
        """Give back a buffer that `get` or `try_get` gave."""
        cap = len(buf)
        with self._cond:
            if self._kept_bytes + cap <= self.limit_bytes // 4:
                self._kept.setdefault(cap, []).append(buf)
                self._kept_bytes += cap
            else:
                self.allocated_bytes -= cap
            self._cond.notify_all()

    def _take(self, cap: int) -> bytearray | None:
        """A kept buffer of capacity `cap`, `_NEW` when one may be allocated (it is counted
        already), None when the limit forbids it for now.  Caller holds the lock."""
        kept = self._kept.get(cap)
        if kept:
            self._kept_bytes -= cap
            return kept.pop()
        # Free kept buffers of other sizes until the new one fits under the limit.
        for size in sorted(self._kept, reverse=True):
            bufs = self._kept[size]
            while bufs and self.allocated_bytes + cap > self.limit_bytes:
                bufs.pop()
                self._kept_bytes -= size
                self.allocated_bytes -= size
        if self.allocated_bytes + cap > self.limit_bytes:
            return None
        self.allocated_bytes += cap
        return _NEW


def _allocate(cap: int) -> bytearray:
    # Outside the pool's lock: zeroing 32 MiB takes milliseconds.
    return bytearray(cap)

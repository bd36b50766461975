"""Upload leases, kept in memory and published to the catalog lazily.

The garbage collector spares every block put after the oldest upload in flight began (and, by
its clock margin, after mark start minus a couple of seconds).  Writing a lease row around
every PUT would cost two catalog transactions per request; instead each process keeps its
uploads in memory and publishes one row, "my oldest upload started at T", only when it goes
from idle to busy, refreshes it every few seconds while busy, and clears it about a second
after it goes idle (one timer at a time: a server busy with one client at a time goes idle
between every two requests, and a timer per request cost more than the request's lease).  A
stale row only makes the collector more careful; a row of a crashed process expires.

Why this is safe: an upload matters to a collector only if it began before the collector's
cutoff (mark start minus its clock margin).  The row covering it was written synchronously when
its process went busy, or was already older, so it is in the catalog before the mark starts.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pithos.catalog import Catalog

REFRESH_S = 2.0
TTL_S = 120.0
# A process that went idle clears its row this much later (if idle then; a timer armed at an
# earlier idle moment may find it idle again sooner after its last upload, which is as safe).
IDLE_CLEAR_S = 1.0


class UploadLeases:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.lease_id = secrets.randbelow(2**31 - 1) + 1
        self._inflight: dict[int, float] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._published: float | None = None  # the oldest start the catalog row says
        self._published_at = 0.0
        self._clear_armed = False  # a timer will check for idleness

    @contextmanager
    def held(self) -> Iterator[None]:
        token = self.begin()
        try:
            yield
        finally:
            self.end(token)

    def begin(self) -> int:
        now = time.time()
        with self._lock:
            token = next(self._tokens)
            self._inflight[token] = now
        self.refresh(force=self._published is None)
        return token

    def end(self, token: int) -> None:
        with self._lock:
            self._inflight.pop(token, None)
            arm = not self._inflight and self._published is not None and not self._clear_armed
            if arm:
                self._clear_armed = True
        if arm:
            timer = threading.Timer(IDLE_CLEAR_S, self._clear_if_idle)
            timer.daemon = True
            timer.start()

    def _clear_if_idle(self) -> None:
        with self._lock:
            self._clear_armed = False  # (busy now: the next idle moment arms another)
            if self._inflight or self._published is None:
                return
            self._published = None
            self._published_at = time.time()
        # If this fails, the stale row only makes the collector more careful until it expires.
        with suppress(Exception):
            self.catalog.publish_upload_lease(self.lease_id, None, 0.0)

    def refresh(self, force: bool = False) -> None:
        """Publish the oldest start again if it is time (or `force`): long uploads call this
        as they go, so their row never expires under them."""
        now = time.time()
        with self._lock:
            if not force and now - self._published_at < REFRESH_S:
                return
            oldest = min(self._inflight.values(), default=None)
            self._published_at = now
            self._published = oldest
        self.catalog.publish_upload_lease(self.lease_id, oldest, now + TTL_S)

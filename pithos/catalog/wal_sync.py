"""Group commit for SQLite in WAL mode: commits are acknowledged only once the WAL is synced,
but the sync runs off the committing thread and is shared by every commit it covers.

SQLite's ``synchronous=FULL`` fsyncs the WAL inside each COMMIT.  Under a gevent server that
call holds the worker's only thread for the whole fsync (milliseconds of a journal commit), so
every other request of the worker waits too, and concurrent commits each pay their own fsync.
Instead the catalog commits with ``synchronous=NORMAL`` (no sync at commit; SQLite still syncs
the WAL before a checkpoint and the database file after it) and then calls `WalSync.sync`,
which returns once an fdatasync of the WAL that *started after the call* has completed:

- a commit's frames were written to the WAL before `sync` was called, so such a sync covers
  them;
- frames are only ever overwritten after a checkpoint copied them into the database file and
  synced it (a WAL restart needs the whole log backfilled), so a commit is either in the
  synced WAL or in the synced database file.

Tickets order the calls: a sync started when tickets up to N had been issued covers tickets
up to N.  With an executor (gevent's pool under the server, chosen by CatalogEngine from its offload
context) one sync is in flight at a time and
callers that arrive meanwhile wait for the next one, which covers them all.  Without one the
caller syncs itself.

The state is shared without a lock.  Callers are greenlets of one thread, or plain threads
whose races can only make `_synced` lag (max() lost to an interleaving): a lag costs an extra
sync, never an early return.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future

from pithos.core.files import fsync_dir


class WalSync:
    def __init__(self, db_path: str, executor: Executor | None = None,
                 fsync: Callable[[int], None] = os.fdatasync) -> None:
        """`fsync` is the system call (an attribute, so that tests can observe the order)."""
        self.wal_path = db_path + "-wal"
        self._executor = executor
        self.fsync = fsync
        self._tickets = itertools.count(1)
        self._issued = 0
        self._synced = 0
        self._inflight: Future[None] | None = None
        self._wal: tuple[int, int] | None = None  # (fd, inode): one attribute, read at once
        self._old_fds: list[int] = []

    def sync(self) -> None:
        """Return once everything committed before this call is durable."""
        ticket = self._issued = next(self._tickets)
        if self._executor is None:
            self._sync_upto(ticket)
            return
        while self._synced < ticket:
            future = self._inflight
            if future is None:
                try:
                    future = self._executor.submit(self._sync_upto, self._issued)
                except Exception:
                    # The executor refuses this thread (gevent's pool takes tasks only from
                    # its hub's thread): sync here.
                    self._sync_upto(ticket)
                    return
                self._inflight = future
            try:
                future.result()
            finally:
                if self._inflight is future:
                    self._inflight = None

    def _sync_upto(self, target: int) -> None:
        fd = self._wal_fd()
        if fd is not None:
            self.fsync(fd)
        if target > self._synced:
            self._synced = target

    def _wal_fd(self) -> int | None:
        """An fd of the current WAL file, or None if there is none.

        The WAL is deleted when the last connection to the database closes (a connection
        dropped by the pool, or another process), after a checkpoint that synced the database
        file: then there is nothing left to sync.  The next connection creates a new WAL: a new
        file is opened, and its directory synced once, as SQLite does for a WAL it creates.
        A replaced fd is closed only by `close`, as another thread may be syncing it."""
        try:
            ino = os.stat(self.wal_path).st_ino
        except FileNotFoundError:
            return None
        wal = self._wal
        if wal is not None and wal[1] == ino:
            return wal[0]
        try:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fsync_dir(os.path.dirname(self.wal_path))
        except BaseException:
            os.close(fd)
            raise
        if wal is not None:
            self._old_fds.append(wal[0])
        self._wal = (fd, os.fstat(fd).st_ino)
        return fd

    def close(self) -> None:
        fds = self._old_fds + ([self._wal[0]] if self._wal is not None else [])
        self._wal, self._old_fds = None, []
        for fd in fds:
            os.close(fd)

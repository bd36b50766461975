"""Group commit for SQLite in WAL mode: a commit is acknowledged only once the WAL is synced,
but the sync runs outside the database's write lock (and, under an event loop, off the
committing thread) and is shared by every commit it covers.

Used by the catalog (pithos/catalog/engine.py) and by the packed blocks' index
(pithos/blocker/packs.py): one class, here, since the blocker may not import the catalog.

SQLite's ``synchronous=FULL`` fsyncs the WAL inside each COMMIT, with the write lock held:
every other writer of the database waits for that sync, and under a gevent server the call
holds the worker's only thread too.  Instead the database is written with
``synchronous=NORMAL`` (no sync at commit; SQLite still syncs the WAL before a checkpoint and
the database file after it) and the writer then calls `WalSync.sync`, which returns once an
fdatasync of the WAL that *started after the call* has completed:

- a commit's frames were written to the WAL before `sync` was called, so such a sync covers
  them;
- frames are only ever overwritten after a checkpoint copied them into the database file and
  synced it (a WAL restart needs the whole log backfilled), so a commit is either in the
  synced WAL or in the synced database file.

Tickets order the calls: a sync started when tickets up to N had been issued covers tickets
up to N.  One sync runs at a time, and the callers that arrive meanwhile wait for the next
one, which covers them all: with an executor (gevent's pool under the server) the hub's
greenlets wait for its future; without one, or on another thread (plain threads, or a
pool's own threads, as the packed blocks' callers are), for a native lock, held only by a
real thread across the sync's blocking system calls, never across a yield to a hub
(pithos/core/locks.py).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import Executor, Future

from pithos.core.files import fsync_dir
from pithos.core.locks import native_lock, start_native_thread, waits_cooperatively

log = logging.getLogger(__name__)

# A WAL is checkpointed once past this size (SQLite's automatic mark: 1000 pages of 4 KiB)...
CHECKPOINT_BYTES = 4 << 20
# ... and by its writers themselves past this one (WalCheckpoints.after_commit).
WAL_BOUND_BYTES = 4 * CHECKPOINT_BYTES


class GroupSync:
    """One blocking sync (`do_sync`) shared by the callers that want one at the same time:
    a call returns once a sync that began after it was made has completed, so callers that
    arrive while one runs share the next.  A failed sync is raised to its caller and covers
    nobody: the next call syncs again.  Callers are threads that may block (a pool's under a
    server, never a hub's greenlets): the native lock is held across the sync."""

    def __init__(self, do_sync: Callable[[], None]) -> None:
        self._do_sync = do_sync
        self._tickets = itertools.count(1)
        self._issued = 0
        self._synced = 0
        # Held across the sync: what the sync uses may be changed under it (WalSync.close).
        self.lock = native_lock()

    def issue(self) -> int:
        """A ticket for a caller whose writes are done: a sync begun after it covers it."""
        ticket = self._issued = next(self._tickets)
        return ticket

    def covered(self, ticket: int) -> bool:
        return self._synced >= ticket

    def sync(self) -> None:
        self.sync_upto(self.issue())

    def sync_upto(self, ticket: int) -> None:
        """Sync unless a sync that began after `ticket` was issued has finished meanwhile
        (the caller waited for the lock while it ran): the tickets issued before a sync
        begins are covered by it."""
        with self.lock:
            if self._synced >= ticket:
                return
            target = self._issued
            self._do_sync()
            self._synced = max(self._synced, target)


class WalSync:
    """The group commit of one SQLite database's WAL file, `wal_path` (the database's path
    and "-wal")."""

    def __init__(self, wal_path: str, executor: Executor | None = None,
                 fsync: Callable[[int], None] = os.fdatasync) -> None:
        """`executor`: where the sync runs when the callers must not block (a cooperative
        offload's pool); None: on the caller's thread.  `fsync` is the system call (an
        attribute, so that tests can observe the order)."""
        self.wal_path = wal_path
        self._executor = executor
        self.fsync = fsync
        self._inflight: Future[None] | None = None
        self._wal: tuple[int, int] | None = None  # (fd, inode): one attribute, read at once
        # One sync at a time, and the fd's state with it (under the group's lock).  (Greenlets
        # of the hub never take it when there is an executor: only the pool's thread running
        # the sync does.)
        self._group = GroupSync(self._sync_wal)

    def sync(self) -> None:
        """Return once everything committed before this call is durable.  An OSError of the
        sync is raised to every caller it was to cover; the next call syncs again."""
        group = self._group
        ticket = group.issue()
        if self._executor is None or not waits_cooperatively():
            # (A pool thread must not wait for a future of the hub's pool: it could lose
            # its wakeup.  It syncs on its own thread, under the native lock.)
            group.sync_upto(ticket)
            return
        while not group.covered(ticket):
            future = self._inflight
            if future is None:
                try:
                    future = self._executor.submit(group.sync_upto, ticket)
                except Exception:
                    # The executor refuses this thread (gevent's pool takes tasks only from
                    # its hub's thread): sync here.
                    group.sync_upto(ticket)
                    return
                self._inflight = future
            try:
                future.result()
            finally:
                if self._inflight is future:
                    self._inflight = None

    def _sync_wal(self) -> None:
        """The WAL's sync (the group's, under its lock)."""
        fd = self._wal_fd()
        if fd is not None:
            self.fsync(fd)

    def _wal_fd(self) -> int | None:
        """An fd of the current WAL file, or None if there is none.

        The WAL is deleted when the last connection to the database closes (a connection
        dropped by a pool, or another process), after a checkpoint that synced the database
        file: then there is nothing left to sync.  The next connection creates a new WAL: a new
        file is opened, and its directory synced once, as SQLite does for a WAL it creates.
        Called with the lock held: nobody syncs the fd it replaces, closed at once (held till
        then, the deleted file's inode cannot be the new WAL's)."""
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
        self._wal = (fd, os.fstat(fd).st_ino)
        if wal is not None:
            os.close(wal[0])
        return fd

    def close(self) -> None:
        """Close the WAL fds held (a later sync opens the WAL again)."""
        with self._group.lock:
            wal, self._wal = self._wal, None
        if wal is not None:
            os.close(wal[0])


class WalCheckpoints:
    """The checkpoints of one SQLite database in WAL mode, run by a thread of the process's
    own rather than by SQLite inside a writer's COMMIT (its connections set
    ``wal_autocheckpoint=0``).

    SQLite's automatic checkpoint runs in the COMMIT that passed the mark: it copies up to
    4 MiB of pages into the database file and syncs both files there, in the writer's
    request and, for a server's catalog, on the worker's event loop (every request of the
    worker waits); for the packed blocks' index, while the writer lock is held (every writer
    of every process waits).  Here a writer calls `after_commit` once its commit is durable:
    past the mark it wakes the thread, which runs a PASSIVE checkpoint (never waiting for
    writers; one a reader holds back is finished by a later one) on a connection of its own.
    Writers that never pause outrun it (a PASSIVE checkpoint cannot finish while they
    append): past `bound` bytes `after_commit` answers True and the writer must checkpoint
    the WAL whole itself (TRUNCATE, writers waiting), so that it stays bounded.  The WAL's
    size is its file's: the database's connections set ``journal_size_limit`` to the mark
    (a file left at its largest would wake the thread after every commit).  The thread
    starts at the first wake in each process (a forked child has no copy of its parent's)."""

    def __init__(self, db_path: str, mark: int = CHECKPOINT_BYTES,
                 bound: int = WAL_BOUND_BYTES) -> None:
        self._db_path = db_path
        self._wal_path = db_path + "-wal"
        self.mark = mark
        self.bound = bound
        self._pid = 0
        self._start_lock = native_lock()
        self._wake = native_lock()
        self._closed = False
        self.runs = 0  # checkpoints the thread ran (for tests)

    def after_commit(self) -> bool:
        """Wake the thread if the WAL is past the mark; whether it is past the bound (the
        caller must then checkpoint it whole)."""
        try:
            size = os.stat(self._wal_path).st_size
        except FileNotFoundError:
            return False
        if size <= self.mark:
            # (The file, not what it holds: its writers must set journal_size_limit to the
            # mark, so that a WAL started over is cut back to it and is past it only when
            # what it holds is.)
            return False
        if size >= self.bound:
            return True
        if self._pid != os.getpid():
            self._start()
        with contextlib.suppress(RuntimeError):  # woken already: one run serves both
            self._wake.release()
        return False

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._wake = native_lock()
            self._wake.acquire()
            self._exited = native_lock()  # held until the thread has closed its connection
            self._exited.acquire()
            start_native_thread(self._loop)
            self._pid = os.getpid()

    def _loop(self) -> None:
        db = None
        try:
            while True:
                self._wake.acquire()
                if self._closed:
                    return
                try:
                    if db is None:
                        db = sqlite3.connect(self._db_path, isolation_level=None,
                                             check_same_thread=False)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:
                    # (The next wake tries again; the WAL only grows meanwhile.)
                    log.warning("checkpoint of %s failed: %s", self._db_path, exc)
        finally:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._exited.release()

    def close(self) -> None:
        """End the thread, after the checkpoint it may be running, and wait until it has
        closed its connection: the last connection's close removes the WAL file, which must
        not happen after the caller took the store's files for gone (a test's clean-up
        failed removing a WAL that vanished under it)."""
        with self._start_lock:  # (a thread is started before this, or never)
            if self._closed:
                return
            self._closed = True
            started = self._pid == os.getpid()
        if started:
            with contextlib.suppress(RuntimeError):
                self._wake.release()
            # (Bounded: a checkpoint stuck on a dead disk must not hang the shutdown.)
            self._exited.acquire(timeout=30)

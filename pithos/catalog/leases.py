"""Writer leases: how the garbage collector knows which writes are in flight, without timers.

The protocol (docs/design.md, "Writers and the garbage collector"):

- A writer (an upload of any kind, `pithos store put`, a volume snapshot or clone) begins
  under its process's lease before it puts or touches its first block, and commits its root
  (a catalog version, a recorded root, a volume head) inside `commit_guard` before it ends.
  Every block it puts or touches is stamped by the block store at or after the writer began.
  A writer that names blocks it did not put may pin its lease instead (`WriterLeases.pin`):
  those stamped at or after the pinned time need no touch.
- A process's lease is one catalog row, "my oldest writer in flight began at T", written
  before that writer goes on whenever the process goes from idle to busy, and a liveness
  lock the process holds for as long as it lives: an flock on a file beside an SQLite catalog,
  a session-level advisory lock on PostgreSQL.  No lease expires while its process lives,
  however slowly its writers go.
- The collector takes its mark start first, then reads the leases: a row whose lock it can
  take belongs to a dead process (or one whose database session died): it revokes it (deletes
  the row while holding the lock), and spares every block stamped after
  min(mark start, the oldest live row) less a clock margin.
- A writer whose lease was revoked (its database session was cut off; its process frozen
  past the session's death) fails in `commit_guard` with LeaseLost, never acknowledges: the
  guard holds the lock in shared mode for the commit, so a revocation and a commit exclude
  each other.  On one host (SQLite) a live process cannot lose its flock, so the guard only
  checks that the lease was not found lost.

Why a row per process and not per writer: the row costs a catalog write only when a process
goes from idle to busy (and a lazy one to move T forward), not one per request.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pithos.catalog.db_errors import database_errors
from pithos.catalog.lease_check import LeaseCheck, LeaseLost
from pithos.core.errors import BackendError

if TYPE_CHECKING:
    from pithos.catalog.catalog import Catalog

__all__ = ["LeaseCheck", "LeaseLost", "Liveness", "Ticket", "WriterLeases", "liveness_for",
           "oldest_live_writer"]

T = TypeVar("T")

# A busy process moves its row's start forward (to its oldest writer still in flight) at
# most this often; a stale start only makes the collector spare more.
REFRESH_S = 2.0
# A process that went idle clears its row this much later, if still idle (one timer at a time:
# a server with one client at a time is idle between every two requests).
IDLE_CLEAR_S = 1.0
# Advisory lock namespace of writer leases on PostgreSQL ("pilw").
PG_LOCK_CLASS = 0x70696C77


@dataclass(frozen=True)
class Ticket:
    """One writer in flight: the lease it began under."""

    lease_id: int
    token: int


class Liveness(Protocol):
    """The lock that says a lease's process is alive."""

    def hold(self, lease_id: int) -> None:
        """Take the lock of `lease_id` for this process, until `release` or its death."""

    def release(self, lease_id: int) -> None:
        """Let the lock go (the process has no writer and no row any more)."""

    def try_revoke(self, lease_id: int, revoke: Callable[[], None]) -> bool:
        """If no live process holds `lease_id`'s lock and no commit guard is open on it, call
        `revoke` (which deletes the row) while holding the lock, and return True; else
        False.  Atomic against `guard`."""

    def guard(self, lease_id: int) -> contextlib.AbstractContextManager[None]:
        """Hold off any revocation of `lease_id` for the block's duration; raise LeaseLost
        if this process no longer holds it."""

    def commit_check(self, lease_id: int) -> LeaseCheck | None:
        """What a catalog commit can check itself, in its own transaction, instead of
        `guard` around it (None: this liveness cannot be checked so; use `guard`).
        LeaseLost if this process no longer holds `lease_id`."""

    def close(self) -> None:
        """Release everything (the process is going away)."""


class FileLiveness:
    """flock()s on files in one directory: `<id>.lock`, held exclusively by its process.
    A file appears under its final name only once locked (made under a temporary name and
    renamed), so the collector never takes a lock a live process is about to hold."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._held: dict[int, int] = {}  # lease id -> fd

    def _path(self, lease_id: int) -> str:
        return os.path.join(self.directory, f"{lease_id}.lock")

    def hold(self, lease_id: int) -> None:
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, f".{lease_id}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, self._path(lease_id))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._held[lease_id] = fd

    def release(self, lease_id: int) -> None:
        fd = self._held.pop(lease_id, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path(lease_id))
            os.close(fd)

    def try_revoke(self, lease_id: int, revoke: Callable[[], None]) -> bool:
        if lease_id in self._held:
            return False
        try:
            fd = os.open(self._path(lease_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            revoke()  # its process never got to lock it, or released it
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            revoke()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(lease_id))
            return True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def guard(self, lease_id: int) -> Iterator[None]:
        # A live process keeps its flock: nobody can have revoked it.
        if lease_id not in self._held:
            raise LeaseLost()
        yield

    def commit_check(self, lease_id: int) -> LeaseCheck | None:
        return None  # (the guard above costs nothing: no database statement)

    def close(self) -> None:
        for lease_id in list(self._held):
            self.release(lease_id)


# Guarded commits in flight per process on PostgreSQL, at most: each holds two of the
# catalog's pooled connections (5, and 10 more on demand), one more holds the lease's lock.
GUARD_SLOTS = 4


class PostgresLiveness:
    """Session-level advisory locks (PG_LOCK_CLASS, lease id): each lease holds its lock in
    shared mode on a connection of its own for as long as the process lives; a commit guard
    takes it in shared mode for its transaction; the collector revokes only when it can take
    it exclusively (neither is there).  A dropped session releases its locks: the lease is
    then lost, and its writers' commits fail.  Database errors are raised as the project's
    (pithos/catalog/db_errors.py)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        # lease id -> (the connection holding the lock, its server process id)
        self._held: dict[int, tuple[Any, int]] = {}
        # A guarded commit holds two pooled connections at once, the guard's and then its
        # transaction's: with more guards in flight than half the pool, each could hold one
        # and wait for a second that never comes (a worker whose waits are cooperative runs
        # many commits at once).  Made in the process that commits (a server worker, after
        # gevent's patch): there it is gevent's semaphore, taken by greenlets only (it is
        # held across the guard's statements, which yield to the hub).
        self._guards = threading.BoundedSemaphore(GUARD_SLOTS)

    def hold(self, lease_id: int) -> None:
        from sqlalchemy import text

        with database_errors():
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                pid = conn.execute(text("SELECT pg_backend_pid() FROM "
                                        "(SELECT pg_advisory_lock_shared(:c, :i)) AS locked"),
                                   {"c": PG_LOCK_CLASS, "i": lease_id}).scalar()
            except BaseException:
                conn.close()
                raise
        self._held[lease_id] = (conn, int(pid))

    def release(self, lease_id: int) -> None:
        held = self._held.pop(lease_id, None)
        if held is not None:
            conn = held[0]
            with contextlib.suppress(Exception):
                conn.invalidate()  # closing the session drops its locks
            with contextlib.suppress(Exception):
                conn.close()

    def try_revoke(self, lease_id: int, revoke: Callable[[], None]) -> bool:
        from sqlalchemy import text

        if lease_id in self._held:
            return False
        with database_errors(), \
                self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:c, :i)"),
                               {"c": PG_LOCK_CLASS, "i": lease_id}).scalar()
            if not got:
                return False
            try:
                revoke()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:c, :i)"),
                             {"c": PG_LOCK_CLASS, "i": lease_id})
            return True

    @contextlib.contextmanager
    def guard(self, lease_id: int) -> Iterator[None]:
        from sqlalchemy import text

        held = self._held.get(lease_id)
        if held is None:
            raise LeaseLost()
        with self._guards, database_errors(), self.engine.connect() as conn, conn.begin():
            alive = conn.execute(text(
                "SELECT pg_try_advisory_xact_lock_shared(:c, :i) AND EXISTS "
                "(SELECT 1 FROM upload_leases WHERE id = :i) AND EXISTS "
                "(SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = :c "
                " AND objid = :i AND pid = :pid AND mode = 'ShareLock' AND granted)"),
                {"c": PG_LOCK_CLASS, "i": lease_id, "pid": held[1]}).scalar()
            if not alive:
                raise LeaseLost()
            yield

    def commit_check(self, lease_id: int) -> LeaseCheck | None:
        held = self._held.get(lease_id)
        if held is None:
            raise LeaseLost()
        return LeaseCheck(PG_LOCK_CLASS, lease_id, held[1])

    def close(self) -> None:
        for lease_id in list(self._held):
            self.release(lease_id)


def liveness_for(catalog: Catalog) -> Liveness:
    """The liveness lock that fits the catalog's database."""
    if catalog.is_sqlite:
        database = catalog.engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise BackendError("writer leases need an SQLite catalog in a file")
        return FileLiveness(os.path.abspath(database) + "-leases")
    return PostgresLiveness(catalog.engine)


class WriterLeases:
    """The writers of one process under its lease (see the module's docstring).  Thread- and
    greenlet-safe."""

    def __init__(self, catalog: Catalog, liveness: Liveness | None = None,
                 clock: Callable[[], float] = time.time,
                 idle_clear_s: float | None = None, refresh_s: float = REFRESH_S) -> None:
        """`idle_clear_s`: how long after going idle the row is cleared (default
        IDLE_CLEAR_S; 0 disables the timer, and whoever drives the leases calls
        `clear_if_idle`, as the protocol's model test does); `refresh_s`: how often a busy
        process moves its row's start forward (the model test moves it at every end)."""
        self.catalog = catalog
        self.idle_clear_s = IDLE_CLEAR_S if idle_clear_s is None else idle_clear_s
        self.refresh_s = refresh_s
        self.liveness = liveness or liveness_for(catalog)
        self.clock = clock
        # Under a server these are gevent's, taken by the worker's greenlets only (the API's
        # writers, the idle timer), never by its pool threads: `_publish` is held across the
        # row's write and `_lock` across `liveness.hold`, both of which yield to the hub, so
        # a native lock would stop the hub (pithos/core/locks.py).
        self._lock = threading.Lock()  # the state below
        self._publish = threading.Lock()  # orders the row's writes as the state changed
        self._tokens = itertools.count()
        self._lease_id: int | None = None
        self._inflight: dict[int, float] = {}
        self._published: float | None = None  # the start the row says (None: no row)
        self._published_lease: int | None = None  # the lease whose row that is
        self._published_at = 0.0
        # When the row `_published` names was first in the catalog, this busy period (None:
        # no row, or one not known to be there): it has said `_published` or less since.
        self._row_since: float | None = None
        self._syncing = False  # a write of the row is under way
        self._stale_row = False  # a write of the row failed: the catalog may hold an old one
        self._clear_armed = False

    # -- writers ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def held(self) -> Iterator[Ticket]:
        ticket = self.begin()
        try:
            yield ticket
        finally:
            self.end(ticket)

    def begin(self) -> Ticket:
        """A writer begins: on return, any collector that starts its mark from now on spares
        every block this writer puts or touches."""
        with self._lock:
            if self._lease_id is None:
                lease_id = secrets.randbelow(2**31 - 1) + 1
                self.liveness.hold(lease_id)
                self._lease_id = lease_id
            token = next(self._tokens)
            start = self._inflight[token] = self.clock()
            ticket = Ticket(self._lease_id, token)
            need = self._published is None or self._syncing
        if need:
            try:
                self._cover(ticket.lease_id, start)
            except BaseException:
                # Not begun (say the catalog is full: 507): it must not count as in flight,
                # or its start would hold every collector back for the process's life.
                self.end(ticket)
                raise
        return ticket

    def end(self, ticket: Ticket) -> None:
        """The writer committed or gave up (repeat-safe)."""
        with self._lock:
            self._inflight.pop(ticket.token, None)
            idle = not self._inflight
            due = not idle and self.clock() - self._published_at >= self.refresh_s
        if idle:
            self._arm_clear()
        elif due:
            with contextlib.suppress(Exception):  # a stale start only makes gc more careful
                self._sync()

    def pin(self, ticket: Ticket) -> float | None:
        """For a writer that names blocks it did not put (a hashmap upload): a time T such
        that no collector removes a block stamped at or after T before this writer ends, so
        such a block need not be touched (BlockStore.touch_many's `fresh_since`); None if
        the lease promises nothing now (no row known to be in the catalog).

        Why: the row has said P (the start it publishes) or less ever since it was first in
        the catalog, at R, as a row only moves forward while its process stays busy; from
        now on this writer counts as in flight since P, so the row stays at P until it ends.
        A collector whose mark started at or after R read the row (or revoked it, and this
        writer's commit fails): its cutoff is at most P less its margin.  One whose mark
        started before R has a cutoff before R.  So T = max(P, R)."""
        with self._lock:
            since = self._row_since
            published = self._published
            if (since is None or published is None or self._syncing
                    or self._lease_id != ticket.lease_id
                    or self._published_lease != ticket.lease_id
                    or ticket.token not in self._inflight):
                return None
            # (Every writer in flight began at or after `published`: this moves no row.)
            self._inflight[ticket.token] = min(self._inflight[ticket.token], published)
            return max(published, since)

    def _arm_clear(self) -> None:
        """Clear the row in `idle_clear_s` if still idle then (one timer at a time)."""
        with self._lock:
            arm = ((self._published is not None or self._stale_row) and not self._clear_armed
                   and self.idle_clear_s > 0)
            if arm:
                self._clear_armed = True
        if arm:
            timer = threading.Timer(self.idle_clear_s, self.clear_if_idle)
            timer.daemon = True
            timer.start()

    @contextlib.contextmanager
    def commit_guard(self, ticket: Ticket) -> Iterator[None]:
        """Around the commit of the writer's root: raises LeaseLost (and the commit must not
        happen) if the lease was revoked; no revocation happens while the block runs."""
        try:
            with self.liveness.guard(ticket.lease_id):
                yield
        except LeaseLost:
            self._lost(ticket.lease_id)
            raise

    def guarded_commit(self, ticket: Ticket, commit: Callable[[LeaseCheck | None], T]) -> T:
        """`commit(check)` under the writer's commit guard: with a check (PostgreSQL) the
        catalog holds the lease's lock inside the commit's own transaction and raises
        LeaseLost itself (pithos/catalog/pg_commit.py); else (None) inside `commit_guard`.
        Either way a revocation and the commit exclude each other, and a lost lease is
        LeaseLost with nothing committed."""
        try:
            check = self.liveness.commit_check(ticket.lease_id)
            if check is None:
                with self.commit_guard(ticket):
                    return commit(None)
            return commit(check)
        except LeaseLost:
            self._lost(ticket.lease_id)
            raise

    def _lost(self, lease_id: int) -> None:
        """Writers that begin from now on do so under a new lease; those in flight under the
        lost one fail their commits."""
        with self._lock:
            if self._lease_id != lease_id:
                return
            self._lease_id = None
            self._published = None
            self._row_since = None
        self.liveness.release(lease_id)

    # -- the row ---------------------------------------------------------------------------------

    def _cover(self, lease_id: int, start: float) -> None:
        """Return once the catalog holds `lease_id`'s row saying a start at or before
        `start` (a writer's that began then).  A write of the row already under way that
        says so is waited for, not made again: with many uploads in flight, every writer
        that began during a refresh of the row wrote it once more, one after another, and
        the next ones began during those (radosgw_bench's 4 KiB PUTs at 32 clients: a lease
        write for nearly every upload)."""
        with self._publish:  # (held by a write under way: it has finished once we have it)
            with self._lock:
                covered = (self._published is not None and self._published <= start
                           and self._published_lease == lease_id)
            if not covered:
                self._sync_holding()

    def _sync(self) -> None:
        """Write the row from the current state; returns once it is in the catalog."""
        with self._publish:
            self._sync_holding()

    def _sync_holding(self) -> None:
        """_sync, with `_publish` held."""
        with self._lock:
            oldest = min(self._inflight.values(), default=None)
            lease_id = self._lease_id
            # A row moved forward keeps its age; a new one (or one that may not be there,
            # after a failed write) has none until it is written.
            moved = (self._published is not None and self._published_lease == lease_id
                     and oldest is not None and self._row_since is not None)
            if not moved:
                self._row_since = None
            self._published = oldest
            self._published_lease = lease_id
            self._published_at = self.clock()
            self._syncing = True
        try:
            if lease_id is not None:
                self.catalog.publish_upload_lease(lease_id, oldest)
        except BaseException:
            with self._lock:
                self._published = None  # the next writer writes it again
                self._row_since = None
                self._stale_row = True
            raise
        else:
            with self._lock:
                self._stale_row = False
                if not moved and oldest is not None and lease_id is not None \
                        and self._published_lease == lease_id:
                    self._row_since = self.clock()
        finally:
            with self._lock:
                self._syncing = False

    def clear_if_idle(self) -> None:
        """Drop the row if no writer is in flight (the idle timer calls this).  If that fails
        (say the disk is full), the row stays, which only makes gc more careful, and the
        timer tries again."""
        with self._lock:
            self._clear_armed = False  # (busy now: the next idle moment arms another)
            if self._inflight or (self._published is None and not self._stale_row):
                return
        try:
            self._sync()
        except Exception:
            self._arm_clear()

    def close(self) -> None:
        """The process is done writing: drop the row and the lock."""
        with self._lock:
            lease_id, self._lease_id = self._lease_id, None
            self._inflight.clear()
            self._row_since = None
        if lease_id is not None:
            with contextlib.suppress(Exception):
                self.catalog.publish_upload_lease(lease_id, None)
            self.liveness.release(lease_id)


def oldest_live_writer(catalog: Catalog, liveness: Liveness | None = None) -> float | None:
    """For the collector, after it took its mark start: revoke the leases of dead processes,
    and return the start of the oldest writer in flight of the live ones (None: none)."""
    liveness = liveness or liveness_for(catalog)
    starts: list[float] = []
    for row in catalog.upload_lease_rows():
        try:
            revoked = liveness.try_revoke(
                row.lease_id, functools.partial(catalog.delete_upload_lease, row.lease_id))
        except Exception:
            revoked = False  # (e.g. a full disk): taken for alive, which only spares more
        if not revoked:
            starts.append(row.started)
    return min(starts, default=None)

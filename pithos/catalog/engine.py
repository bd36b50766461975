"""The catalog's engines and transactions: SQLite and PostgreSQL set-up, write transactions
(BEGIN IMMEDIATE on SQLite, group-committed WAL syncs), one-statement reads, and the
unsynced writes of lease rows.  The Catalog's parts (pithos.catalog.catalog) build on it."""

from __future__ import annotations

import errno
import logging
import os
import select as io_select
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    event,
    select,
)
from sqlalchemy.exc import ArgumentError

from pithos.catalog import schema as s
from pithos.catalog.db_errors import DatabaseErrors
from pithos.catalog.prepared import SnapshotReads, Statements, fetch, run
from pithos.catalog.space import (
    SpaceReserve,
    release_and_retry,
)
from pithos.core.errors import BackendError, InvalidArgument, NoSpace
from pithos.core.offload import Offload
from pithos.core.stamp import SharedStamp
from pithos.core.wal_sync import CHECKPOINT_BYTES, WalCheckpoints, WalSync

T = TypeVar("T")
STAT_SHARDS = 8
log = logging.getLogger(__name__)

# A pooled PostgreSQL connection idle for longer than this is pinged before it is used (the
# server may have closed it meanwhile); one in steady use is not (a ping is a round trip).
PING_IDLE_S = 1.0
# How long a server worker trusts an account-and-container lookup it made (as Swift's proxy
# keeps container info in memcache, there for 60 s): most small requests then ask the
# database one statement instead of two.  Any other write through the same catalog drops
# them at once, and so does another process's write on the same machine (the stamp of
# pithos/core/stamp.py); another node's change (an ACL, a deleted container) is
# seen at most this late, as a validated token is trusted for 5 s.
INFO_TTL_S = 1.0
INFO_MAX_ENTRIES = 4096
# How long a SQLite connection waits for a lock before giving up with "database is locked".
BUSY_TIMEOUT_MS = 30000
# An SQLite catalog's writers checkpoint its WAL themselves past this size (WalCheckpoints;
# its thread does from 4 MiB): half the reserve kept for getting out of a full disk
# (pithos/catalog/space.py) is then room for a WAL's growth past its mark.
CATALOG_WAL_BOUND_BYTES = 8 << 20


def _generic_plans(engine: Engine) -> None:
    """The read engine's prepared statements (pg_direct.py) planned once per connection:
    they are all look-ups by key (an index probe whatever the values), and the batched
    look-up of objects (pg_read_batch.OBJECTS) was otherwise planned anew at every run (its
    custom plan, which knows how many items the arrays hold, always looked cheaper than the
    generic one), which cost the server more than the statements it saved."""
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True  # (a SET of the session, not of a transaction)
        try:
            dbapi_conn.execute("SET plan_cache_mode = force_generic_plan")
        finally:
            dbapi_conn.autocommit = autocommit


def _sqlite_setup(engine: Engine, own_checkpoints: bool = False) -> None:
    """`own_checkpoints`: the catalog checkpoints the WAL itself (WalCheckpoints), not
    SQLite inside a COMMIT."""
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL: no fsync inside COMMIT (the catalog syncs the WAL itself before a write
        # returns: core/wal_sync.py), and the WAL synced before and the database file after every
        # checkpoint, whichever connection runs it.  Every connection needs it: one with OFF
        # could checkpoint acknowledged commits into an unsynced database file and let the
        # WAL be overwritten.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if own_checkpoints:
            cur.execute("PRAGMA wal_autocheckpoint=0")
            # A WAL started over is cut back to the mark (its file's size is what
            # WalCheckpoints looks at), and its room is the disk's again.
            cur.execute(f"PRAGMA journal_size_limit={CHECKPOINT_BYTES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        mode = conn.info.get("begin_mode", "DEFERRED")
        if mode == "IMMEDIATE":
            _begin_immediate(conn.connection.dbapi_connection)
        else:
            conn.exec_driver_sql(f"BEGIN {mode}")


def _begin_immediate(dbapi_conn: Any) -> None:
    """BEGIN IMMEDIATE, waiting for the database's write lock with time.sleep instead of in
    SQLite's busy handler.  The handler sleeps inside the C call: under a gevent server that
    stops every request of the worker while another process commits (measured: 4 KiB PUTs of
    16 clients on two workers waited most of their time there).  Monkey-patched, time.sleep
    lets the worker's other requests run meanwhile."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0001
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=0")
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.004)
    finally:
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()


# Connections each PostgreSQL engine of a process keeps (one for transactions, one for
# one-statement reads), and how many more it opens while busy (closed when returned).
POOL_SIZE = 16
POOL_OVERFLOW = 8


def _hung_up(dbapi_conn: Any) -> bool:
    """Whether an idle connection's server already spoke: an idle PostgreSQL connection has
    nothing to read, so a readable socket is a backend that ended (terminated by an
    operator, a restart, idle timeout: its FATAL message and the EOF wait there) or, rarely,
    an unsolicited notice; either way the connection is not worth trusting with a write.
    One poll(2) with no timeout and no round trip, on the process's real poll (not gevent's:
    nothing to wait for)."""
    if getattr(dbapi_conn, "closed", False):
        return True
    try:
        fd = dbapi_conn.fileno()
    except Exception:
        return True
    poller = _real_poll()
    poller.register(fd, io_select.POLLIN | io_select.POLLERR | io_select.POLLHUP)
    return bool(poller.poll(0))


_poll: Callable[[], Any] | None = None


def _real_poll() -> Any:
    global _poll
    if _poll is None:
        try:
            from gevent.monkey import get_original
        except ImportError:
            _poll = io_select.poll
        else:
            _poll = get_original("select", "poll")
    return _poll()


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's pool_pre_ping, for connections idle longer than PING_IDLE_S only: a
    pessimistic ping before every checkout cost a small upload two of its round trips.  A
    connection found dead is replaced before use (DisconnectionError: the pool retries
    with a new one), so a restarted server still fails no transaction that starts on a
    connection which sat idle.  One in steady use is checked without a round trip
    (_hung_up): a backend that ended while its connection sat in the pool, however
    briefly, has left its goodbye on the socket, and the connection is replaced too.  Only
    a backend that ends while its statement is on the wire fails that statement's request
    (a transient BackendError, 503 "retry"): whether it committed is unknown, so it is not
    run again."""
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("pithos_used", 0.0) <= PING_IDLE_S:
            if _hung_up(dbapi_conn):
                raise DisconnectionError("pooled connection was closed by the server")
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute(";")
            finally:
                cur.close()
            if not dbapi_conn.autocommit:
                # The ping began a transaction: the connection goes out idle, as it came.
                dbapi_conn.rollback()
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_conn: Any, record: Any) -> None:
        record.info["pithos_used"] = time.monotonic()


def _gevent_wait(gen: Any, fileno: int, interval: float = 0.0,
                 timeout: float | None = None) -> Any:
    """psycopg's wait protocol on gevent's loop: the greenlet waits for the connection's
    socket with one io watcher on the hub, and the worker's other requests run meanwhile.
    (psycopg's own choice for a patched process, poll(2) through gevent.select, costs about
    twice the CPU per round trip.)  The ready mask sent back is the one waited for: libpq
    takes a spurious readable or writable without harm."""
    from gevent._hub_primitives import wait_on_watcher
    from gevent.hub import get_hub
    from psycopg import waiting

    if timeout is not None:  # (notifies and the like: not the catalog's queries)
        return waiting.wait_poll(gen, fileno, interval, timeout)
    loop = get_hub().loop
    try:
        state = next(gen)
        while True:
            watcher = loop.io(fileno, int(state))
            try:
                wait_on_watcher(watcher)
            finally:
                watcher.close()
            state = gen.send(int(state))
    except StopIteration as ex:
        return ex.value


def cooperative_psycopg() -> None:
    """psycopg chooses how to wait for the server when it is first imported: in C (poll(2)
    holding the whole process) unless gevent has patched `select` by then.  `pithos serve`'s
    master imports it (to open the catalog once) before gunicorn's gevent worker patches,
    so each worker stopped all its requests for every round trip to PostgreSQL.  Once
    patched, wait on the hub instead."""
    from gevent import monkey
    from psycopg import waiting

    if monkey.is_module_patched("select"):
        waiting.wait = _gevent_wait


def missing_driver(url: str, exc: ImportError) -> str:
    """One line naming the database driver a catalog URL needs and how to install it."""
    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgresql") and (exc.name or "").startswith("psycopg"):
        return (f"a {scheme}:// catalog needs the psycopg driver, which is not installed: "
                "run scripts/setup, or pip install 'psycopg[binary]>=3.1'")
    return f"the driver for a {scheme}:// catalog is not installed (no module {exc.name!r})"


class CatalogEngine:
    """The engines and transactions of the catalog at a SQLAlchemy URL (e.g.
    ``sqlite:///data/catalog.sqlite`` or ``postgresql://user@host/db``).  Creates or upgrades
    the schema on open."""

    # How many times a write marked retried_write runs again after PostgreSQL chose it as
    # a deadlock's victim (pithos/catalog/db_errors.py).
    write_retries = 2

    def __init__(self, url: str, offload: Offload | None = None,
                 reserve_bytes: int = 0, info_stamp: str | None = None) -> None:
        """`offload`: under an event loop (a cooperative one, pithos.core.offload) the WAL
        syncs of an SQLite catalog run on its pool, shared by concurrent commits (see
        WalSync); otherwise a writer syncs on its own thread.  `reserve_bytes`: the room an
        SQLite catalog keeps beside its database for getting out of a full disk
        (pithos/catalog/space.py).  `info_stamp`: the file of the stamp the processes of
        one data directory share (pithos/core/stamp.py): this catalog's writes
        bump it, and its cached lookups last only while it is unchanged."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            # As many kept as a busy worker has requests in flight (16 at 32 clients over two
            # workers): a connection over the pool's size is closed when returned to a full
            # pool, and at 5 a worker under radosgw_bench's 4 KiB cells opened and closed
            # ~300 in 45 s (a PostgreSQL backend started for each, each close blocking the
            # worker ~1.5 ms), most at 32 clients; at 16, 20.
            kwargs.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
        try:
            self.engine = create_engine(url, **kwargs)
        except ImportError as exc:
            raise BackendError(missing_driver(url, exc)) from None
        except ArgumentError as exc:
            raise InvalidArgument(f"bad catalog URL: {exc}") from None
        if not self.is_sqlite:
            _ping_when_idle(self.engine)
            if offload is not None and offload.cooperative:
                cooperative_psycopg()
        self._lease_engine: Engine | None = None
        self._read_engine: Engine | None = None
        # The lookup cache (see INFO_TTL_S): in a server worker only (a cooperative offload),
        # never in the CLI, gc or tests of the catalog itself.
        self._info_ttl = INFO_TTL_S if offload is not None and offload.cooperative else 0.0
        self._info: dict[Any, tuple[float, int, Any]] = {}
        self._info_gen = 0
        self._stamp = SharedStamp(info_stamp) if info_stamp is not None else None
        self._wal_sync: WalSync | None = None
        self._checkpoints: WalCheckpoints | None = None
        self._offload = offload
        reserve = None
        if self.is_sqlite:
            database = self.engine.url.database
            on_disk = bool(database and database != ":memory:" and
                           not database.startswith("file:"))
            _sqlite_setup(self.engine, own_checkpoints=on_disk)
            if database and on_disk:
                self._wal_sync = WalSync(
                    os.path.abspath(database) + "-wal",
                    offload.pool if offload is not None and offload.cooperative else None)
                # Off the worker's loop: SQLite's own would copy pages and sync both files
                # inside a COMMIT, which runs on it (CHECKPOINT_BYTES).
                self._checkpoints = WalCheckpoints(os.path.abspath(database),
                                                   bound=CATALOG_WAL_BOUND_BYTES)
                if reserve_bytes:
                    reserve = SpaceReserve(os.path.abspath(database) + "-reserve",
                                           reserve_bytes)
            # Lease rows are not synced when written (see _lease_write).
            self._lease_engine = create_engine(url)
            _sqlite_setup(self._lease_engine, own_checkpoints=on_disk)
            # The sqlite3 module's connections are in autocommit (see _sqlite_setup).
            self._reads = SnapshotReads(self.engine)
        else:
            # Connections of their own, in autocommit, for reads of one statement; no ping
            # before each use (SnapshotReads retries a read that finds its connection dead).
            self._read_engine = create_engine(url, isolation_level="AUTOCOMMIT",
                                              pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
            _generic_plans(self._read_engine)
            self._reads = SnapshotReads(self._read_engine, keep=POOL_SIZE)
        self._dialect = self.engine.dialect
        # Raises a database error as the project's (one instance: entered on every lookup).
        self._errors = DatabaseErrors(self._dialect.loaded_dbapi.Error)
        self._statements = Statements(self._dialect)
        # Opening is a way out of a full disk too (a reader may have to create SQLite's
        # shared-memory file).  The reserve is made by writes only, not by a mere open.
        self._reserve: SpaceReserve | None = None
        self.schema_found = release_and_retry(reserve, lambda: s.migrate(self._write))
        self._reserve = reserve

    def close(self) -> None:
        self._reads.close()
        self.engine.dispose()
        for engine in (self._lease_engine, self._read_engine):
            if engine is not None:
                engine.dispose()
        if self._wal_sync is not None:
            self._wal_sync.close()
        if self._checkpoints is not None:
            self._checkpoints.close()
        if self._stamp is not None:
            self._stamp.close()

    # -- transactions ------------------------------------------------------------------------

    # Every statement runs inside one of these helpers, which raise the project's errors for
    # the database's (pithos/catalog/db_errors.py): nothing above the catalog sees SQLAlchemy.

    def _cached_info(self, key: Hashable, load: Callable[[], T], keep: Callable[[T], bool]
                     ) -> T:
        """`load()`, or what it returned for `key` less than INFO_TTL_S ago in this process
        (when caching is on and `keep(value)`: found things only, so that a container made
        by another process is never missed for the TTL).  A value loaded while a write
        committed is not kept: it may predate the write."""
        if not self._info_ttl:
            return load()
        now = time.monotonic()
        hit = self._info.get(key)
        stamp = self._stamp.read() if self._stamp is not None else 0
        if hit is not None and hit[0] > now and hit[1] == stamp:
            kept: T = hit[2]
            return kept
        generation = self._info_gen
        value = load()
        if generation == self._info_gen and keep(value):
            if len(self._info) >= INFO_MAX_ENTRIES:
                self._info.clear()
            # With the stamp read before the load: a write committed by another process
            # after that read changes it, and the entry is not trusted again.
            self._info[key] = (now + self._info_ttl, stamp, value)
        return value

    @contextmanager
    def _write(self, keeps_info: bool = False, durable: bool = True) -> Iterator[Connection]:
        """One write transaction, durable when the block exits without an error (every
        write of the catalog goes through here: callers acknowledge what it returns).  A
        full disk raises NoSpace, and nothing was written; a write that conflicts with a
        concurrent one (a unique name taken meanwhile) raises Conflict; the database failing
        or out of reach, BackendError.  Drops the cached lookups (`_cached_info`) unless
        `keeps_info`: the write changes no account, container or sharing row's cached
        columns (a new object version).  Not `durable`: a write a crash may lose without
        harm, so its commit is not synced (block grants: pithos.catalog.sharing); it is
        durable with the next write that is."""
        try:
            with self._write_transaction(durable) as conn:
                yield conn
        finally:
            if not keeps_info:
                if self._stamp is not None:
                    self._stamp.bump()  # the other processes' lookups
                if self._info_ttl:
                    self._info_gen += 1
                    self._info.clear()

    @contextmanager
    def _write_transaction(self, durable: bool = True) -> Iterator[Connection]:
        with self._errors, self.engine.connect() as conn:
            conn.info["begin_mode"] = "IMMEDIATE"
            try:
                with conn.begin():
                    if not durable and not self.is_sqlite:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    yield conn
            finally:
                conn.info.pop("begin_mode", None)
        # After the connection went back to the pool: other writers commit meanwhile and
        # share the sync.
        if self._wal_sync is not None and durable:
            try:
                self._wal_sync.sync()
            except OSError as exc:
                # Committed, but not known to be durable: the write is not acknowledged.
                error = NoSpace if exc.errno in (errno.ENOSPC, errno.EDQUOT) else BackendError
                raise error(f"the catalog could not sync its WAL: {exc}") from exc
        self._checkpoint_if_due()
        if self._reserve is not None:
            self._reserve.ensure()

    def _checkpoint_if_due(self) -> None:
        """Wake the checkpointing thread once the WAL is past its mark; past its bound (the
        thread falls behind writers that never pause) checkpoint it whole here, on the pool
        under a server, new writers waiting meanwhile.  A failure of that checkpoint (a full
        disk: it may grow the database file) fails no write: it is logged, and the next
        write tries again."""
        if self._checkpoints is None or not self._checkpoints.after_commit():
            return
        database = self.engine.url.database
        assert database is not None

        def truncate() -> None:
            try:
                db = sqlite3.connect(database, timeout=BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None)
                try:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    db.close()
            except sqlite3.Error as exc:
                log.warning("catalog checkpoint failed: %s", exc)

        if self._offload is not None and self._offload.cooperative:
            self._offload.run(truncate)
        else:
            truncate()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._errors, self.engine.connect() as conn, conn.begin():
            yield conn

    def _fetch(self, stmt: Any, **values: Any) -> list[Any]:
        """The rows of one of hot_statements, read alone outside any transaction."""
        try:
            return self._reads.fetch(self._statements[stmt], values)
        except Exception as exc:
            self._errors.raise_translated(exc)
            raise

    def _fetch_in(self, conn: Connection, stmt: Any, **values: Any) -> list[Any]:
        """The rows of one of hot_statements, run in `conn`'s transaction."""
        return fetch(conn.connection.dbapi_connection, self._statements[stmt], values,
                     self._dialect)

    def _run_in(self, conn: Connection, stmt: Any,
                values: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> int:
        """Run one of hot_statements (that returns no rows) in `conn`'s transaction, once
        or, for a list of value maps, once for each."""
        return run(conn.connection.dbapi_connection, self._statements[stmt], values,
                   self._dialect)

    def _lock(self, query: Any) -> Any:
        """Row lock for a read that decides a write (PostgreSQL; SQLite is already locked)."""
        return query if self.is_sqlite else query.with_for_update()

    def _lock_object(self, conn: Connection, *, container_id: int | None = None,
                     name: str | None = None, object_id: int | None = None) -> None:
        """PostgreSQL: the object's row locked by a statement of its own, before a read that
        joins it to its current version.  A join locked FOR UPDATE that waits for a new
        version's commit re-checks its join on the object's newer row against the *old*
        version row, finds they no longer join and drops the object: a DELETE or POST
        racing an overwrite answered 404 for an object that always existed.  Once the row
        is ours, the next statement's snapshot sees its committed current version."""
        if self.is_sqlite:
            return
        o = s.objects
        where = (o.c.id == object_id if object_id is not None
                 else and_(o.c.container_id == container_id, o.c.name == name))
        conn.execute(select(o.c.id).where(where).with_for_update())

    @contextmanager
    def _lease_write(self) -> Iterator[Connection]:
        """A write that need not survive a crash (a lease dies with its holder anyway), so it
        skips the commit's fsync: leases are taken on every upload."""
        engine = self._lease_engine or self.engine
        with self._errors, engine.connect() as conn:
            conn.info["begin_mode"] = "IMMEDIATE"
            try:
                with conn.begin():
                    if not self.is_sqlite:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    yield conn
            finally:
                conn.info.pop("begin_mode", None)
        self._checkpoint_if_due()


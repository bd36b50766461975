"""The catalog's engines and transactions: SQLite and PostgreSQL set-up, write transactions
(BEGIN IMMEDIATE on SQLite, group-committed WAL syncs), one-statement reads, and the
unsynced writes of lease rows.  The Catalog's parts (pithos.catalog.catalog) build on it."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
)
from sqlalchemy.exc import ArgumentError

from pithos.catalog import schema as s
from pithos.catalog.db_errors import DatabaseErrors
from pithos.catalog.prepared import SnapshotReads, Statements, fetch, run
from pithos.catalog.space import (
    SpaceReserve,
    release_and_retry,
)
from pithos.catalog.wal_sync import WalSync
from pithos.core.errors import BackendError, InvalidArgument, NoSpace
from pithos.core.offload import Offload

STAT_SHARDS = 8
# How long a SQLite connection waits for a lock before giving up with "database is locked".
BUSY_TIMEOUT_MS = 30000


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL: no fsync inside COMMIT (the catalog syncs the WAL itself before a write
        # returns: wal_sync.py), and the WAL synced before and the database file after every
        # checkpoint, whichever connection runs it.  Every connection needs it: one with OFF
        # could checkpoint acknowledged commits into an unsynced database file and let the
        # WAL be overwritten.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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

    def __init__(self, url: str, offload: Offload | None = None,
                 reserve_bytes: int = 0) -> None:
        """`offload`: under an event loop (a cooperative one, pithos.core.offload) the WAL
        syncs of an SQLite catalog run on its pool, shared by concurrent commits (see
        WalSync); otherwise a writer syncs on its own thread.  `reserve_bytes`: the room an
        SQLite catalog keeps beside its database for getting out of a full disk
        (pithos/catalog/space.py)."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
        try:
            self.engine = create_engine(url, **kwargs)
        except ImportError as exc:
            raise BackendError(missing_driver(url, exc)) from None
        except ArgumentError as exc:
            raise InvalidArgument(f"bad catalog URL: {exc}") from None
        self._lease_engine: Engine | None = None
        self._read_engine: Engine | None = None
        self._wal_sync: WalSync | None = None
        reserve = None
        if self.is_sqlite:
            _sqlite_setup(self.engine)
            database = self.engine.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                self._wal_sync = WalSync(
                    os.path.abspath(database),
                    offload.pool if offload is not None and offload.cooperative else None)
                if reserve_bytes:
                    reserve = SpaceReserve(os.path.abspath(database) + "-reserve",
                                           reserve_bytes)
            # Lease rows are not synced when written (see _lease_write).
            self._lease_engine = create_engine(url)
            _sqlite_setup(self._lease_engine)
            # The sqlite3 module's connections are in autocommit (see _sqlite_setup).
            self._reads = SnapshotReads(self.engine)
        else:
            # Connections of their own, in autocommit, for reads of one statement; no ping
            # before each use (SnapshotReads retries a read that finds its connection dead).
            self._read_engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=5,
                                              max_overflow=10)
            self._reads = SnapshotReads(self._read_engine)
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
        self.engine.dispose()
        for engine in (self._lease_engine, self._read_engine):
            if engine is not None:
                engine.dispose()
        if self._wal_sync is not None:
            self._wal_sync.close()

    # -- transactions ------------------------------------------------------------------------

    # Every statement runs inside one of these helpers, which raise the project's errors for
    # the database's (pithos/catalog/db_errors.py): nothing above the catalog sees SQLAlchemy.

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction, durable when the block exits without an error (every
        write of the catalog goes through here: callers acknowledge what it returns).  A
        full disk raises NoSpace, and nothing was written; a write that conflicts with a
        concurrent one (a unique name taken meanwhile) raises Conflict; the database failing
        or out of reach, BackendError."""
        with self._errors, self.engine.connect() as conn:
            conn.info["begin_mode"] = "IMMEDIATE"
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop("begin_mode", None)
        # After the connection went back to the pool: other writers commit meanwhile and
        # share the sync.
        if self._wal_sync is not None:
            try:
                self._wal_sync.sync()
            except OSError as exc:
                # Committed, but not known to be durable: the write is not acknowledged.
                error = NoSpace if exc.errno in (errno.ENOSPC, errno.EDQUOT) else BackendError
                raise error(f"the catalog could not sync its WAL: {exc}") from exc
        if self._reserve is not None:
            self._reserve.ensure()

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


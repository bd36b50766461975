"""Statements built once, compiled once per catalog, and run on a DBAPI cursor.

Building a SQLAlchemy statement, computing its cache key, finding its compiled form and going
through the execution machinery costs about 50-100 us a statement, five to ten times what
SQLite takes to run it.  The catalog's hot paths (the lookups of every small request, the
commit of a version) therefore use statements built once at import with bind parameters,
compiled for the catalog's dialect on first use, and run with the driver's own paramstyle
(qmark for sqlite3, pyformat for psycopg).  Errors are raised as SQLAlchemy's, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement


class Prepared:
    """One statement compiled for one dialect."""

    __slots__ = ("names", "processors", "sql")

    def __init__(self, stmt: ClauseElement, dialect: Dialect) -> None:
        compiled: Any = stmt.compile(dialect=dialect)
        if compiled.post_compile_params or compiled.literal_execute_params:
            # Expanded at execution time (an IN of a list, a LIMIT on some dialects): the
            # string alone would not run.
            raise ValueError(f"cannot prepare a statement with late parameters: {stmt}")
        self.sql: str = compiled.string
        # Positional paramstyles take the values in this order (a name may repeat).
        self.names: tuple[str, ...] | None = (tuple(compiled.positiontup)
                                              if dialect.positional else None)
        self.processors: dict[str, Any] = dict(compiled._bind_processors)

    def args(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        if self.processors:  # e.g. floats made float for SQLite
            values = {**values, **{k: f(values[k]) for k, f in self.processors.items()
                                   if k in values}}
        if self.names is None:
            return values
        return tuple(values[n] for n in self.names)


class Statements:
    """The prepared form of module-level statements for one dialect, made on first use.
    Statements are keyed by identity: they must live as long as the process (module
    constants, or entries of a cache that never drops one)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._prepared: dict[int, Prepared] = {}

    def __getitem__(self, stmt: ClauseElement) -> Prepared:
        found = self._prepared.get(id(stmt))
        if found is None:
            found = self._prepared[id(stmt)] = Prepared(stmt, self.dialect)
        return found


def _wrapped(exc: Exception, p: Prepared, values: Any, dialect: Dialect) -> BaseException:
    """The driver's error as SQLAlchemy would have raised it (IntegrityError, ...)."""
    return DBAPIError.instance(p.sql, values, exc, dialect.loaded_dbapi.Error, dialect=dialect,
                               ismulti=not isinstance(values, Mapping))


def fetch(dbapi_conn: Any, p: Prepared, values: Mapping[str, Any],
          dialect: Dialect) -> list[Any]:
    """The rows of `p` run on a DBAPI connection (in whatever transaction it is in)."""
    cur = dbapi_conn.cursor()
    try:
        return _fetch_on(cur, p, values, dialect)
    finally:
        cur.close()


def _fetch_on(cur: Any, p: Prepared, values: Mapping[str, Any], dialect: Dialect
              ) -> list[Any]:
    try:
        cur.execute(p.sql, p.args(values))
        return list(cur.fetchall())
    except dialect.loaded_dbapi.Error as exc:
        raise _wrapped(exc, p, values, dialect) from exc


def run(dbapi_conn: Any, p: Prepared, values: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        dialect: Dialect) -> int:
    """Run a statement that returns no rows (a list of value maps: once for each);
    returns the row count."""
    cur = dbapi_conn.cursor()
    try:
        if isinstance(values, Mapping):
            cur.execute(p.sql, p.args(values))
        else:
            cur.executemany(p.sql, [p.args(v) for v in values])
        return int(cur.rowcount)
    except dialect.loaded_dbapi.Error as exc:
        raise _wrapped(exc, p, values, dialect) from exc
    finally:
        cur.close()


# A kept connection keeps its cursor too (psycopg's: its adapters, and its loaders while it
# runs the same statement again) when its last result was at most this many rows.
KEEP_CURSOR_ROWS = 64


class SnapshotReads:
    """Single read statements outside any transaction, on pooled connections of `engine`.

    One statement reads one consistent snapshot (SQLite WAL; PostgreSQL in autocommit), so a
    lookup that is one statement needs no BEGIN and COMMIT: on SQLite that halves its cost, on
    PostgreSQL it saves two round trips.  `engine` must hand out connections that are in
    autocommit (SQLite with the sqlite3 module's isolation_level None; PostgreSQL with
    isolation_level AUTOCOMMIT).  A connection found dead is dropped and the read retried once
    on another (a read is safe to repeat; this replaces the pool's ping before each use).

    `keep`: connections kept checked out between reads, for an engine whose pool serves
    these reads alone (PostgreSQL's read engine).  The pool's checkout and return (its
    events, the reset's rollback, its queue) were a tenth of a worker's CPU for a small GET;
    a kept connection is taken and given back by a list operation.  A read that finds its
    connection dead drops every kept one too (a restarted server closed them all), and
    retries on one from the pool.  On SQLite a kept connection keeps its cursor when its
    last result was small (KEEP_CURSOR_ROWS); on PostgreSQL a read uses no cursor at all:
    its statement is prepared on the connection and run through libpq
    (pithos/catalog/pg_direct.py).

    On PostgreSQL the rows come in binary format: a small object's row carries its content
    (`inline_data`), which in text format is hex, twice its size: a 4 KiB object's row was
    9 KB, more than the 8 KB the server sends at once, so the worker woke twice for it and
    the server hex-encoded what the worker then decoded.  The catalog's columns are plain
    integers, floats, booleans, text and bytea, which psycopg loads to the same Python values
    from either format."""

    def __init__(self, engine: Engine, keep: int = 0) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.keep = keep
        self.binary = self.dialect.name == "postgresql"
        # Pool connections (checked out) between two reads, with their cursors (or None);
        # taken and put back whole, so greenlets and threads never share one.
        self._idle: list[tuple[Any, Any]] = []

    def fetch(self, p: Prepared, values: Mapping[str, Any]) -> list[Any]:
        for attempt in range(2):
            try:
                conn, cur = self._idle.pop()
            except IndexError:
                conn, cur = self.engine.raw_connection(), None
            rows: list[Any] | None = None
            try:
                if self.binary:
                    rows = self._direct(conn, p, values)
                    return rows
                if cur is None:
                    cur = conn.dbapi_connection.cursor()
                rows = _fetch_on(cur, p, values, self.dialect)
                return rows
            except DBAPIError as exc:
                orig: Any = exc.orig
                if attempt or not self.dialect.is_disconnect(orig, conn.dbapi_connection,
                                                             None):
                    raise
                conn.invalidate(orig)
                self._drop_idle(invalidate=True)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # A request killed mid-statement (a worker's shutdown): its connection
                    # is in an unknown state, dropped rather than reset by the pool.
                    conn.invalidate()
                raise
            finally:
                if rows is not None and len(self._idle) < self.keep:
                    if cur is not None and len(rows) > KEEP_CURSOR_ROWS:
                        # (a cursor holds its last result until it runs again)
                        cur.close()
                        cur = None
                    self._idle.append((conn, cur))
                else:
                    if cur is not None:
                        cur.close()
                    conn.close()
        raise AssertionError("unreachable")

    def _direct(self, conn: Any, p: Prepared, values: Mapping[str, Any]) -> list[Any]:
        """PostgreSQL: the statement prepared on the connection and run through libpq, no
        cursor (pithos/catalog/pg_direct.py)."""
        from pithos.catalog.pg_direct import direct_reads

        try:
            return direct_reads(conn).fetch(p, values)
        except self.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(exc, p, values, self.dialect) from exc

    def _drop_idle(self, invalidate: bool = False) -> None:
        while self._idle:
            conn, cur = self._idle.pop()
            if cur is not None:
                cur.close()
            if invalidate:
                conn.invalidate()
            conn.close()

    def close(self) -> None:
        """Give the kept connections back to the pool (before it is disposed of)."""
        self._drop_idle()

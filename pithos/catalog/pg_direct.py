"""A read statement on a psycopg connection through libpq's prepared statements, no cursor.

psycopg's cursor costs about a tenth of a `pithos serve` worker's CPU for a 4 KiB GET, whose
catalog work is one read: each execute converts the query (its `%(name)s` placeholders to
`$n`), asks its prepared-statement cache whether to prepare, dumps the values, sends, picks
the result and sets up a loader per column.  The catalog's hot reads are a few statements
fixed at import (pithos/catalog/prepared.py): here each is turned into `$n` form once,
prepared once per connection (server-side, by name), and run with `PQsendQueryPrepared`,
its values dumped and its rows loaded by one psycopg Transformer kept per connection and
statement (the column loaders are set up by its first successful result: a prepared
statement's columns never change).  Rows come in binary format, as tuples, as the binary
cursor gave them; values are dumped as psycopg dumps them, and a different set of parameter
types (a None, an int past int4) is another prepared statement, as in psycopg's own cache.

Errors are psycopg's own (`error_from_result`, and the OperationalError of a lost
connection), so callers wrap and classify them as before; a failed prepare records nothing.
The connection must be in autocommit with no statement in flight (SnapshotReads' kept read
connections): the statement runs outside any transaction, as the cursor's did.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from psycopg import errors as e
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import execute

_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")
# Statement shapes kept per connection: the catalog's fixed statements by their parameter
# types, a few dozen; past this (never seen) a statement runs unprepared-by-name instead of
# growing the server's session without bound.
MAX_PREPARED = 256


class _Statement:
    """One Prepared statement in `$n` form: its SQL and the names of its parameters."""

    __slots__ = ("names", "query")

    def __init__(self, p: Any) -> None:
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            if m.group(0) == "%%":
                return "%"
            name = m.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.query = _PLACEHOLDER.sub(number, p.sql).encode()
        self.names = tuple(names)


# By SQL text, not by the Prepared object's id: a catalog closed frees its statements, and
# another's could get the same id.  (A str keeps its hash: the look-up hashes nothing.)
_statements: dict[str, _Statement] = {}


def _statement(p: Any) -> _Statement:
    """`p`: a pithos.catalog.prepared.Prepared (not imported: that module imports this one
    when it runs a read)."""
    found = _statements.get(p.sql)
    if found is None:
        if len(_statements) >= MAX_PREPARED:
            return _Statement(p)  # (never seen: the catalog's statements are a few dozen)
        found = _statements[p.sql] = _Statement(p)
    return found


class DirectReads:
    """The statements prepared on one psycopg connection, by (statement, parameter types)."""

    __slots__ = ("conn", "dump", "made", "prepared")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.dump = Transformer(conn)  # dumps the values (its dumpers kept by type)
        # (SQL, types) -> its server-side name and the Transformer that loads its rows
        # (whose column loaders are set by the first result that has rows to load)
        self.prepared: dict[tuple[str, tuple[int, ...]], _Named] = {}
        self.made = 0  # statements prepared (or tried): the next one's name, never reused

    def fetch(self, p: Any, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        stmt = _statement(p)
        args = p.args(values)  # (a mapping: psycopg's paramstyle is named)
        formats = [PyFormat.AUTO] * len(stmt.names)
        params = self.dump.dump_sequence([args[n] for n in stmt.names], formats)
        types = tuple(self.dump.types)
        pformats = self.dump.formats
        conn = self.conn
        pgconn = conn.pgconn
        key = (p.sql, types)
        named = self.prepared.get(key)
        if named is None:
            if len(self.prepared) >= MAX_PREPARED:
                pgconn.send_query_params(stmt.query, params, param_types=types,
                                         param_formats=pformats,
                                         result_format=pq.Format.BINARY)
                return _Named(b"", Transformer(conn)).rows(conn, conn.wait(execute(pgconn)))
            named = self._prepare(key, stmt, types)
        pgconn.send_query_prepared(named.name, params, param_formats=pformats,
                                   result_format=pq.Format.BINARY)
        results = conn.wait(execute(pgconn))
        if _stale_plan(results):
            # A column it returns changed type since it was prepared (a migration under a
            # running server): the server refuses the statement on this connection for good
            # ("cached plan must not change result type"), so it is prepared anew, once,
            # under a new name, its rows loaded by new loaders.
            del self.prepared[key]
            pgconn.send_query(b"DEALLOCATE " + named.name)
            _result(conn, conn.wait(execute(pgconn)), pq.ExecStatus.COMMAND_OK)
            named = self._prepare(key, stmt, types)
            pgconn.send_query_prepared(named.name, params, param_formats=pformats,
                                       result_format=pq.Format.BINARY)
            results = conn.wait(execute(pgconn))
        return named.rows(conn, results)

    def _prepare(self, key: tuple[str, tuple[int, ...]], stmt: _Statement,
                 types: tuple[int, ...]) -> _Named:
        conn = self.conn
        name = f"pithos_{self.made}".encode()
        self.made += 1
        conn.pgconn.send_prepare(name, stmt.query, param_types=types)
        _result(conn, conn.wait(execute(conn.pgconn)), pq.ExecStatus.COMMAND_OK)
        named = self.prepared[key] = _Named(name, Transformer(conn))
        return named


class _Named:
    """A statement prepared on a connection: its name, and what loads its rows."""

    __slots__ = ("load", "loaders", "name")

    def __init__(self, name: bytes, load: Transformer) -> None:
        self.name = name
        self.load = load
        self.loaders = False  # set up yet (by a result that succeeded)

    def rows(self, conn: Any, results: list[Any]) -> list[tuple[Any, ...]]:
        result = _result(conn, results, pq.ExecStatus.TUPLES_OK)
        load = self.load
        load.set_pgresult(result, set_loaders=not self.loaders)
        self.loaders = True
        try:
            return list(load.load_rows(0, result.ntuples, tuple))
        finally:
            load.set_pgresult(None, set_loaders=False)  # (the result is not kept)


# feature_not_supported: what a prepared statement whose result columns changed type raises
_STALE_PLAN = b"0A000"


def _stale_plan(results: list[Any]) -> bool:
    result = results[-1]
    return bool(result.status == pq.ExecStatus.FATAL_ERROR
                and result.error_field(pq.DiagnosticField.SQLSTATE) == _STALE_PLAN)


def _result(conn: Any, results: list[Any], status: int) -> Any:
    """The statement's result, or its error raised as psycopg raises it."""
    result = results[-1]
    if result.status != status:
        raise e.error_from_result(result, encoding=conn.info.encoding)
    return result


def direct_reads(pool_conn: Any) -> DirectReads:
    """The DirectReads of a pooled connection (kept with its record: it lives as long as
    the server session whose statements it names)."""
    info = pool_conn.info
    dbapi_conn = pool_conn.dbapi_connection
    found = info.get("pithos_direct_reads")
    if found is None or found.conn is not dbapi_conn:  # (a record reconnected since)
        found = info["pithos_direct_reads"] = DirectReads(dbapi_conn)
    return found  # type: ignore[no-any-return]

"""The catalog's reads on PostgreSQL through libpq's prepared statements, no cursor
(pithos/catalog/pg_direct.py, used by SnapshotReads): the rows are those psycopg's binary
cursor gives for the same statement and values, whatever the values' types; a statement is
prepared once per connection and parameter types; errors are raised as the cursor raised
them (SQLAlchemy's wrapping of psycopg's error), and the connection goes on working."""

from __future__ import annotations

import pytest
from conftest import postgres_database
from sqlalchemy import (
    BigInteger,
    Integer,
    LargeBinary,
    String,
    bindparam,
    literal_column,
    select,
    text,
)
from sqlalchemy.exc import DataError, ProgrammingError

from pithos.catalog import Catalog
from pithos.catalog.pg_direct import direct_reads
from pithos.catalog.prepared import Prepared


@pytest.fixture
def reads():
    url, drop = postgres_database("direct")
    cat = Catalog(url)
    yield cat._reads
    cat.close()
    drop()


def _cursor_rows(reads, p: Prepared, values: dict) -> list:
    conn = reads.engine.raw_connection()
    try:
        cur = conn.dbapi_connection.cursor(binary=True)
        cur.execute(p.sql, p.args(values))
        return list(cur.fetchall())
    finally:
        conn.close()


# Types and values as the catalog's statements carry them: integers of every width, None,
# floats, booleans, text with '%' and non-ASCII, bytes (a small object's content).
STMT = select(bindparam("a", type_=BigInteger), bindparam("b", type_=String),
              bindparam("c", type_=LargeBinary), bindparam("a", type_=BigInteger).label("again"),
              literal_column("'100%'").label("pct"), bindparam("d"), bindparam("e"))
VALUES = [
    {"a": 1, "b": "x", "c": b"\x00\xff" * 2048, "d": 1.5, "e": True},
    {"a": 2**40, "b": "caf\u00e9 % %(a)s", "c": b"", "d": None, "e": False},
    {"a": None, "b": None, "c": None, "d": -7, "e": None},
    {"a": -(2**31), "b": "", "c": b"%s", "d": 2.0**60, "e": "text"},
]


@pytest.mark.parametrize("values", VALUES)
def test_rows_are_the_cursors(reads, values):
    p = Prepared(STMT, reads.dialect)
    assert reads.fetch(p, values) == _cursor_rows(reads, p, values)


def test_prepared_once_per_connection_and_parameter_types(reads):
    p = Prepared(select(bindparam("x")), reads.dialect)
    for i in range(5):
        assert reads.fetch(p, {"x": i}) == [(i,)]
    (conn, _), = reads._idle
    direct = direct_reads(conn)
    assert len(direct.prepared) == 1
    assert reads.fetch(p, {"x": "s"}) == [("s",)]
    assert reads.fetch(p, {"x": 2**62}) == [(2**62,)]
    assert len(direct.prepared) == 3
    names = [named.name for named in direct.prepared.values()]
    assert len(set(names)) == 3
    # The server has them by those names: the session's statements.
    with reads.engine.connect() as other:
        # (another session sees none of them: they are the kept connection's own)
        assert other.execute(text("SELECT count(*) FROM pg_prepared_statements "
                                  "WHERE name LIKE 'pithos_%'")).scalar() == 0
    mine = Prepared(select(text("name FROM pg_prepared_statements WHERE name LIKE 'pithos_%'")),
                    reads.dialect)
    assert {row[0].encode() for row in reads.fetch(mine, {})} >= set(names)


def test_errors_are_raised_as_the_cursors_and_the_connection_goes_on(reads):
    p = Prepared(select(literal_column("1") / bindparam("x", type_=Integer)), reads.dialect)
    # The statement's first run fails (its rows' loaders not set up by it): the next
    # run's rows still load.
    with pytest.raises(DataError) as caught:
        reads.fetch(p, {"x": 0})
    assert "division by zero" in str(caught.value.orig)
    assert reads.fetch(p, {"x": 1}) == [(1,)]
    # A statement the server refuses to prepare records nothing, and raises the same way.
    bad = Prepared(select(text("no_such_column")), reads.dialect)
    with pytest.raises(ProgrammingError):
        reads.fetch(bad, {})
    for conn, _ in reads._idle:
        assert all(key[0] != bad.sql for key in direct_reads(conn).prepared)
    assert reads.fetch(p, {"x": 1}) == [(1,)]


def test_a_statement_whose_columns_changed_type_is_prepared_anew(reads):
    # A migration under a running server that changes a column's type: the server refuses
    # a statement prepared before it on that connection for good ("cached plan must not
    # change result type"); it is prepared again and its rows load as the new type.
    admin = reads.engine.raw_connection()
    try:
        admin.dbapi_connection.execute("CREATE TABLE t (a int, b int)")
        admin.dbapi_connection.execute("INSERT INTO t VALUES (1, 2)")
        p = Prepared(text("SELECT a, b FROM t WHERE a = :x").bindparams(
            bindparam("x", type_=Integer)), reads.dialect)
        assert reads.fetch(p, {"x": 1}) == [(1, 2)]
        admin.dbapi_connection.execute("ALTER TABLE t ALTER b TYPE text")
        assert reads.fetch(p, {"x": 1}) == [(1, "2")]
        assert reads.fetch(p, {"x": 1}) == [(1, "2")]
    finally:
        admin.close()


def test_a_catalog_lookup_reads_back_what_was_written(reads):
    # The hot statements themselves, through the catalog: a small object's row and content.
    url, drop = postgres_database("direct_cat")
    cat = Catalog(url)
    try:
        acct = cat.ensure_account("a")
        cat.create_container(acct, "c")
        cid = cat.container(acct, "c").id
        cat.put_version(cid, "o", root=b"r" * 32, size=3, etag="e" * 32, content_type="x/y",
                        meta={"user": {"Color": "red"}}, inline=b"abc")
        for _ in range(3):
            found = cat.object_and_public_token(cid, "o")
            assert found is not None
            assert found.version.size == 3 and found.version.inline == b"abc"
            assert found.version.meta["user"] == {"Color": "red"}
        assert cat.object_and_public_token(cid, "nothing") is None
    finally:
        cat.close()
        drop()


def test_past_the_bound_a_statement_runs_unnamed(reads, monkeypatch):
    from pithos.catalog import pg_direct

    monkeypatch.setattr(pg_direct, "MAX_PREPARED", 1)
    one = Prepared(select(bindparam("x")), reads.dialect)
    two = Prepared(select(bindparam("y", type_=String) + literal_column("'!'")),
                   reads.dialect)
    assert reads.fetch(one, {"x": 1}) == [(1,)]
    for _ in range(2):
        assert reads.fetch(two, {"y": "a"}) == [("a!",)]
    (conn, _), = reads._idle
    assert len(direct_reads(conn).prepared) == 1


def test_statements_are_told_apart_by_their_sql_not_their_object(reads):
    # Prepared statements made and dropped one after the other may get the same id (a
    # catalog closed, another opened in the same process): each still runs its own SQL.
    for i in range(50):
        p = Prepared(select(bindparam("x", type_=Integer) + literal_column(str(i))),
                     reads.dialect)
        assert reads.fetch(p, {"x": 1000}) == [(1000 + i,)]
        del p

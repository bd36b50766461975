"""A busy server worker keeps its PostgreSQL connections: as many requests in flight as
radosgw_bench's 32-client cells give a worker (16) open no connection after the first ones,
where a pool of 5 closed each connection over its size on return and opened another for the
next request (a PostgreSQL backend started each time; 4 KiB GETs at 32 clients ran slower
than at 8)."""

from __future__ import annotations

import threading

import pytest
from conftest import postgres_database
from sqlalchemy import event

from pithos.catalog import Catalog
from pithos.catalog.engine import POOL_SIZE

IN_FLIGHT = 16


@pytest.fixture
def pg_catalog():
    url, drop = postgres_database("pool")
    cat = Catalog(url)
    yield cat
    cat.close()
    drop()


def test_requests_in_flight_reuse_their_connections(pg_catalog):
    assert IN_FLIGHT <= POOL_SIZE
    acct = pg_catalog.ensure_account("acct")
    pg_catalog.create_container(acct, "c")
    cid = pg_catalog.container(acct, "c").id
    opened: list[int] = []
    for engine in (pg_catalog.engine, pg_catalog._read_engine):
        event.listen(engine, "connect", lambda *_: opened.append(1))
    start = threading.Barrier(IN_FLIGHT)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(150):  # reads, and a write now and then, all at once
                pg_catalog.object(cid, f"o{i % 7}")
                if i % 10 == 0:
                    pg_catalog.put_version(cid, f"t{n}-{i}", root=b"r" * 32, size=1,
                                           etag="e" * 32, content_type="x/y", meta={})
        except BaseException as exc:  # (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    # At most one per request in flight and engine; a pool smaller than that closes and
    # opens connections all along (hundreds here).
    assert len(opened) <= 2 * IN_FLIGHT, len(opened)


def test_kept_read_connections_found_dead_are_dropped_and_the_read_retried(pg_catalog):
    """The read engine's connections are kept between reads (SnapshotReads.keep); when the
    server has closed them (a restart, an idle timeout), a read drops every kept one and
    succeeds on a fresh connection, and close() gives them back to the pool."""
    from sqlalchemy import literal_column, select, text

    from pithos.catalog.pg_direct import direct_reads
    from pithos.catalog.prepared import KEEP_CURSOR_ROWS, Prepared

    acct = pg_catalog.ensure_account("acct")
    pg_catalog.create_container(acct, "c")
    cid = pg_catalog.container(acct, "c").id
    pg_catalog.put_version(cid, "o", root=b"r" * 32, size=1, etag="e" * 32,
                           content_type="x/y", meta={})
    start = threading.Barrier(4)

    def reader() -> None:
        start.wait(timeout=30)
        for _ in range(20):
            assert pg_catalog.object(cid, "o") is not None

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    reads = pg_catalog._reads
    kept = list(reads._idle)
    assert len(kept) >= 2, "reads in flight at once left their connections kept"
    # Each kept connection has the lookup prepared on it (pithos/catalog/pg_direct.py).
    assert all(direct_reads(conn).prepared for conn, _ in kept)
    pids = [conn.dbapi_connection.info.backend_pid for conn, _ in kept]
    with pg_catalog.engine.connect() as admin:
        for pid in pids:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.commit()
    # Every kept connection is dead: the first read finds one so, drops them all and reads
    # on a new one (retrying on another kept one would fail again).
    assert pg_catalog.object(cid, "o").name == "o"
    assert all(conn.dbapi_connection.info.backend_pid not in pids for conn, _ in reads._idle)
    assert all(not direct_reads(conn).prepared or direct_reads(conn).conn
               is conn.dbapi_connection for conn, _ in reads._idle)
    # A large result is not held by the connection after its read.
    many = Prepared(select(literal_column(f"generate_series(1, {KEEP_CURSOR_ROWS + 1})")),
                    reads.dialect)
    assert len(reads.fetch(many, {})) == KEEP_CURSOR_ROWS + 1
    assert all(named.load.pgresult is None
               for named in direct_reads(reads._idle[-1][0]).prepared.values())
    assert pg_catalog.object(cid, "o").name == "o"
    reads.close()
    assert reads._idle == []
    assert pg_catalog._read_engine.pool.checkedout() == 0


class _Killed(BaseException):
    """What a request's greenlet gets when its worker shuts down (GreenletExit's kind)."""


class _KilledMidRead(dict):
    def __getitem__(self, key: str) -> object:
        raise _Killed()


def test_a_read_killed_mid_statement_drops_its_connection(pg_catalog):
    """A read killed inside its statement leaves its connection in an unknown state: it is
    invalidated, neither kept for the next read nor reset by the pool."""
    from sqlalchemy import bindparam, select

    from pithos.catalog.prepared import Prepared

    reads = pg_catalog._reads
    one = Prepared(select(bindparam("x")), reads.dialect)
    assert reads.fetch(one, {"x": 1}) == [(1,)]
    dropped: list[object] = []
    event.listen(pg_catalog._read_engine, "invalidate",
                 lambda dbapi, record, exc: dropped.append(dbapi))
    with pytest.raises(_Killed):
        reads.fetch(one, _KilledMidRead(x=2))
    assert len(dropped) == 1 and dropped[0].closed
    assert all(not conn.dbapi_connection.closed for conn, _ in reads._idle)
    assert reads.fetch(one, {"x": 3}) == [(3,)]


def test_write_connections_whose_backend_ended_in_the_pool_are_replaced_unused(pg_catalog):
    """A pooled write connection whose backend ended while it sat in the pool (an operator's
    pg_terminate_backend, a restart) fails no request: the checkout sees the server's
    goodbye waiting on its socket, without a round trip, and opens another connection.
    Before, the next write on it answered 503 (the idle-ping skips connections used within
    PING_IDLE_S, so a busy worker's pool was found dead one request at a time)."""
    import time

    from sqlalchemy import text

    acct = pg_catalog.ensure_account("acct")
    pg_catalog.create_container(acct, "c")
    cid = pg_catalog.container(acct, "c").id
    held = [pg_catalog.engine.connect() for _ in range(4)]  # four pooled, just used
    pids = [conn.connection.dbapi_connection.info.backend_pid for conn in held]
    for conn in held:
        conn.close()
    admin = pg_catalog._read_engine.connect()
    try:
        admin.execute(text("SELECT pg_terminate_backend(pid) FROM unnest(:p) AS pid"),
                      {"p": pids})
        while admin.execute(text("SELECT count(*) FROM pg_stat_activity "
                                 "WHERE pid = ANY(:p)"), {"p": pids}).scalar():
            time.sleep(0.02)
    finally:
        admin.close()
    # The pool is FIFO: each of these writes would check out one of the dead four.
    for i in range(8):
        pg_catalog.put_version(cid, f"o{i}", root=b"r" * 32, size=1, etag="e" * 32,
                               content_type="x/y", meta={})
    assert [e.name for e in pg_catalog.list_objects(cid)] == [f"o{i}" for i in range(8)]

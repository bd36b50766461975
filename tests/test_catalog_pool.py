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

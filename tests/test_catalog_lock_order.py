"""Concurrent writes on a PostgreSQL catalog take their row locks in one order (issue 27's
scale-out bench answered 503 "deadlock detected" to small PUTs at 32 clients): the
container's stat shard, then its project's holdings (bytes before objects), then the change
number on the container's row.  The two holdings rows of a storage charge were locked by one
UPDATE in whatever order its scan met them, which changes as the rows are updated: two
writers of one account could each hold one row and wait for the other."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, text

from pithos.catalog import Catalog
from pithos.core.errors import BackendError
from tests.conftest import postgres_database

ROOT = b"\x01" * 32
WRITERS = 16
ROUNDS = 80


@pytest.fixture
def pg_url():
    url, drop = postgres_database("lockorder")
    yield url
    drop()


@pytest.fixture
def pg_catalog(pg_url, monkeypatch):
    # Row scans in heap order, as the planner chose on the bench's database (the pickings
    # of a sequential or bitmap scan; on a new small table it takes the primary key's).
    monkeypatch.setenv("PGOPTIONS", "-c enable_indexscan=off -c enable_bitmapscan=off")
    cat = Catalog(pg_url)
    yield cat
    cat.close()


def _no_retry(cat: Catalog) -> None:
    """Turn off the catalog's retry of a deadlocked write, so that a deadlock shows."""
    cat.write_retries = 0


def test_concurrent_small_writes_of_one_account_never_deadlock(pg_catalog):
    cat = pg_catalog
    _no_retry(cat)
    acct = cat.ensure_account("acct")
    cids = []
    for i, versioning in enumerate(("auto", "none", "auto")):
        cat.create_container(acct, f"c{i}", versioning=versioning)
        cids.append(cat.container(acct, f"c{i}").id)
    start = threading.Barrier(WRITERS + 1, timeout=60)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(w: int) -> None:
        try:
            start.wait()
            for n in range(ROUNDS):
                cid = cids[(w + n) % len(cids)]
                name = f"o{(w * 7 + n) % 10}"  # overwrites of the same names
                if n % 5 == 4:
                    cat.delete_object(cid, name)
                else:
                    # Some expire at once: the reaper deletes them, or the next version
                    # over one counts twice in one transaction.
                    cat.put_version(cid, name, root=ROOT, size=4096, etag="e" * 32,
                                    content_type="application/octet-stream", meta={},
                                    delete_at=1.0 if n % 3 == 2 else None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def reaper() -> None:  # objects of every container in one transaction
        try:
            start.wait()
            while not done.is_set():
                cat.reap_expired()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    reaping = threading.Thread(target=reaper)
    reaping.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    done.set()
    reaping.join(60)
    assert not any(t.is_alive() for t in [*threads, reaping])
    deadlocks = [e for e in errors if isinstance(e, BackendError)]
    assert not deadlocks, deadlocks[:3]
    assert not errors, errors[:3]
    # What expired after the reaper's last pass is still counted until reaped (as it
    # should be): reaped now, the counters and the charge agree with what was written.
    cat.reap_expired()
    live = sum(len(cat.list_objects(cid)) for cid in cids)
    assert sum(cat.container(acct, f"c{i}").objects for i in range(3)) == live
    assert cat.holdings("acct")["objects"].usage == live


def _put(cat: Catalog, cid: int, name: str) -> None:
    cat.put_version(cid, name, root=ROOT, size=4096, etag="e" * 32,
                    content_type="application/octet-stream", meta={})


def test_a_storage_charge_locks_its_holdings_in_resource_order_whatever_the_plan(
        pg_url, monkeypatch):
    """The cycle of the bench, made deterministic: the planner reads the holdings in heap
    order (as it chose on the bench's database), where 'objects' now comes before 'bytes'.
    Another transaction holds 'bytes' while a new version is charged, then takes
    'objects'.  The charge must wait for 'bytes' before it locks 'objects' (then the other
    transaction goes on and commits); locked in heap order, each waited for the other and
    PostgreSQL killed one ("deadlock detected")."""
    monkeypatch.setenv("PGOPTIONS", "-c enable_indexscan=off -c enable_bitmapscan=off")
    cat = Catalog(pg_url)
    _no_retry(cat)
    other = create_engine(pg_url)
    try:
        acct = cat.ensure_account("acct")
        cat.create_container(acct, "c")
        cid = cat.container(acct, "c").id
        _put(cat, cid, "first")
        where = "WHERE project_id = 'acct'"
        holdings = "FROM project_holdings " + where
        with other.begin() as conn:  # a new version of the 'bytes' row: last in the heap
            conn.execute(text(f"UPDATE project_holdings SET usage = usage {where} "
                              "AND resource = 'bytes'"))
        with other.connect() as conn:
            order = [r[0] for r in conn.execute(text(
                f"SELECT resource {holdings} AND resource IN ('bytes', 'objects')"))]
        assert order == ["objects", "bytes"]  # (what a sequential scan meets first)

        errors: list[BaseException] = []
        with other.connect() as conn:
            conn.execute(text("SET lock_timeout = '30s'"))
            conn.execute(text(f"SELECT 1 {holdings} AND resource = 'bytes' FOR UPDATE"))

            def writer() -> None:
                try:
                    _put(cat, cid, "second")
                except BaseException as exc:  # reported below
                    errors.append(exc)

            thread = threading.Thread(target=writer)
            thread.start()
            deadline = time.monotonic() + 30
            waiting = 0
            while not waiting and time.monotonic() < deadline and thread.is_alive():
                # pg_stat_activity is a snapshot taken once per transaction: drop it first.
                conn.execute(text("SELECT pg_stat_clear_snapshot()"))
                waiting = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).scalar_one()
                time.sleep(0.02)
            assert waiting, "the new version never waited for the 'bytes' row"
            conn.execute(text(f"UPDATE project_holdings SET usage = usage {where} "
                              "AND resource = 'objects'"))
            conn.commit()
        thread.join(60)
        assert not thread.is_alive()
        assert not errors, errors
        assert cat.holdings("acct")["objects"].usage == 2
        assert cat.holdings("acct")["bytes"].usage == 2 * 4096
    finally:
        other.dispose()
        cat.close()


def test_a_write_chosen_as_a_deadlocks_victim_runs_again_once_whole(pg_catalog, pg_url):
    """The catalog's second line of defence: a write PostgreSQL rolls back as a deadlock's
    victim runs again, whole.  Here the other transaction locks in the wrong order ('objects'
    then 'bytes') and waits longer before looking for deadlocks, so the new version is the
    victim: it is stored once and charged once."""
    cat = pg_catalog
    # (A run again may lose the race for 'bytes' to the other transaction's wait, which
    # wakes as the victim rolls back, and be the victim once more.)
    cat.write_retries = 5
    acct = cat.ensure_account("acct")
    cat.create_container(acct, "c")
    cid = cat.container(acct, "c").id
    _put(cat, cid, "first")
    # A limit, however far: the charge then locks the holdings FOR UPDATE (a project
    # without one shares them, and nothing here would deadlock: pg_functions.py).
    cat.set_quota("acct", {"bytes": 10**12, "objects": 10**6})
    where = "WHERE project_id = 'acct'"
    other = create_engine(pg_url)
    errors: list[BaseException] = []
    try:
        with other.connect() as conn:
            conn.execute(text("SET deadlock_timeout = '20s'"))
            conn.execute(text(f"SELECT 1 FROM project_holdings {where} AND resource = 'objects'"
                              " FOR UPDATE"))

            def writer() -> None:
                try:
                    _put(cat, cid, "second")
                except BaseException as exc:  # reported below
                    errors.append(exc)

            thread = threading.Thread(target=writer)
            thread.start()
            deadline = time.monotonic() + 30
            waiting = 0
            while not waiting and time.monotonic() < deadline and thread.is_alive():
                # pg_stat_activity is a snapshot taken once per transaction: drop it first.
                conn.execute(text("SELECT pg_stat_clear_snapshot()"))
                waiting = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).scalar_one()
                time.sleep(0.02)
            assert waiting, "the new version never waited for the 'objects' row"
            # Waits for 'bytes', which the new version holds, until PostgreSQL kills the new
            # version's transaction (its deadlock_timeout is the default 1 s).
            conn.execute(text(f"UPDATE project_holdings SET usage = usage {where} "
                              "AND resource = 'bytes'"))
            conn.commit()
        thread.join(60)
        assert not thread.is_alive()
        assert not errors, errors
        assert [v.size for v in cat.versions(cid, "second")] == [4096]
        assert cat.holdings("acct")["objects"].usage == 2
        assert cat.holdings("acct")["bytes"].usage == 2 * 4096
        assert cat.container(acct, "c").objects == 2
    finally:
        other.dispose()

"""Writer leases (pithos/catalog/leases.py): a process's writers in flight keep the garbage
collector off their blocks for as long as the process lives, however slowly they go; a dead
process's lease is revoked by the collector; a writer whose lease was revoked cannot commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pithos.catalog import leases as leases_mod
from pithos.catalog.leases import LeaseLost, WriterLeases, liveness_for, oldest_live_writer


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def clear_timers(leases):
    """The clear timers `leases` has armed and that have not fired yet (other tests' timers,
    e.g. of a service whose leases were never closed, are not counted)."""
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer)
            and getattr(t.function, "__self__", None) is leases]


@pytest.fixture
def quick_clear(monkeypatch):
    monkeypatch.setattr(leases_mod, "IDLE_CLEAR_S", 0.3)


def test_the_row_covers_writers_in_flight_and_is_cleared_once_idle(catalog, quick_clear):
    leases = WriterLeases(catalog)
    first = time.time()
    with leases.held():
        oldest = oldest_live_writer(catalog)
        assert oldest is not None and first <= oldest <= time.time()
        with leases.held():  # a second writer keeps the first one's start
            assert oldest_live_writer(catalog) == oldest
        assert oldest_live_writer(catalog) == oldest  # still busy: not cleared
        time.sleep(0.5)
        assert oldest_live_writer(catalog) == oldest
    assert wait_for(lambda: oldest_live_writer(catalog) is None)
    with leases.held():  # busy again: published again before the writer goes on
        assert oldest_live_writer(catalog) is not None
    leases.close()
    assert catalog.upload_lease_rows() == []


def test_one_clear_timer_for_many_idle_moments(catalog, quick_clear):
    """A server with one client at a time goes idle between every two requests: that arms
    one timer, not one per request."""
    leases = WriterLeases(catalog)
    for _ in range(50):
        with leases.held():
            pass
        assert len(clear_timers(leases)) <= 1
    assert wait_for(lambda: oldest_live_writer(catalog) is None)
    assert wait_for(lambda: not clear_timers(leases))
    # A timer that fires while a writer is in flight leaves the row; the next idle moment
    # arms a new one, which clears it.
    with leases.held():
        pass
    ticket = leases.begin()
    time.sleep(0.5)
    assert oldest_live_writer(catalog) is not None and not clear_timers(leases)
    leases.end(ticket)
    assert len(clear_timers(leases)) == 1
    assert wait_for(lambda: oldest_live_writer(catalog) is None)
    leases.close()


def test_a_clear_racing_a_new_writer_never_leaves_it_without_a_row(catalog):
    """The idle clear and a writer beginning at once, many times over: whenever a writer is
    in flight, the collector sees a row at or before its start."""
    leases = WriterLeases(catalog)
    stop = threading.Event()
    failures: list[str] = []

    def clearer() -> None:
        while not stop.is_set():
            leases.clear_if_idle()

    thread = threading.Thread(target=clearer)
    thread.start()
    try:
        for _ in range(100):
            with leases.held():
                started = time.time()
                rows = catalog.upload_lease_rows()
                if not rows or min(r.started for r in rows) > started:
                    failures.append(repr(rows))
    finally:
        stop.set()
        thread.join()
        leases.close()
    assert failures == []


HOLDER = """
import sys, time
from pithos.catalog import Catalog
from pithos.catalog.leases import WriterLeases
leases = WriterLeases(Catalog(sys.argv[1]))
leases.begin()
print("began", flush=True)
time.sleep(600)
"""


def holder(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "began"
    return proc


def test_a_live_writer_is_never_revoked_however_long_it_pauses_and_a_dead_one_is(catalog):
    proc = holder(catalog.url)
    try:
        # Frozen (SIGSTOP) is alive: no timer runs out on it.
        os.kill(proc.pid, signal.SIGSTOP)
        for _ in range(3):
            assert oldest_live_writer(catalog) is not None
        assert len(catalog.upload_lease_rows()) == 1
        os.kill(proc.pid, signal.SIGCONT)
        assert oldest_live_writer(catalog) is not None
    finally:
        proc.kill()
        proc.wait()
    # Dead (kill -9: nothing cleaned up): the collector revokes its row.
    assert len(catalog.upload_lease_rows()) == 1
    assert wait_for(lambda: oldest_live_writer(catalog) is None)
    assert catalog.upload_lease_rows() == []


def test_a_row_without_a_living_holder_is_revoked(catalog):
    """A row left by an earlier release (a TTL lease) or by a process that died before it
    locked anything has no holder: revoked."""
    catalog.publish_upload_lease(12345, time.time() - 100)
    assert oldest_live_writer(catalog) is None
    assert catalog.upload_lease_rows() == []


def test_the_guard_lets_a_live_writer_commit(catalog):
    leases = WriterLeases(catalog)
    with leases.held() as ticket, leases.commit_guard(ticket):
        # ...and while it commits, no collector revokes the lease.
        assert oldest_live_writer(catalog) is not None
    leases.close()


def test_a_writer_whose_lease_was_revoked_cannot_commit(catalog):
    """The process's lock is gone (its database session cut off, or, on one host, its lock
    file removed by hand) and a collector revoked the row: the writer's commit fails, and the
    next writer begins under a new lease."""
    leases = WriterLeases(catalog)
    ticket = leases.begin()
    cut_off(catalog, leases, ticket.lease_id)
    assert oldest_live_writer(catalog) is None  # revoked: its blocks are fair game now
    with pytest.raises(LeaseLost), leases.commit_guard(ticket):
        pytest.fail("committed under a revoked lease")
    leases.end(ticket)
    with leases.held() as again:
        assert again.lease_id != ticket.lease_id
        assert oldest_live_writer(catalog) is not None
        with leases.commit_guard(again):
            pass
    leases.close()


def cut_off(catalog, leases: WriterLeases, lease_id: int) -> None:
    """What a dead database session or a removed lock does to a live process's lease."""
    if catalog.is_sqlite:
        # The lock goes (as if its file were removed and its descriptor closed); the guard
        # then finds the lease not held.
        leases.liveness.release(lease_id)
        return
    from sqlalchemy import text

    _conn, pid = leases.liveness._held[lease_id]
    with catalog.engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.commit()
    assert wait_for(lambda: oldest_live_writer(catalog) is None)


@pytest.fixture
def pg_catalog():
    """A Catalog on PostgreSQL (on one host, SQLite, a live process cannot lose its lock)."""
    from pithos.catalog import Catalog
    from tests.conftest import postgres_database

    url, drop = postgres_database("leases")
    catalog = Catalog(url)
    yield catalog
    catalog.close()
    drop()


@pytest.mark.parametrize("order", ["guard first", "revoke first"])
def test_a_commit_and_a_revocation_exclude_each_other(pg_catalog, order):
    """PostgreSQL: a session cut off while its writer commits.  Either the guard is in first
    (the collector finds the lease alive) or the revocation is (the commit fails)."""
    from sqlalchemy import text

    catalog = pg_catalog
    leases = WriterLeases(catalog)
    ticket = leases.begin()
    _conn, pid = leases.liveness._held[ticket.lease_id]
    if order == "revoke first":
        cut_off(catalog, leases, ticket.lease_id)
        with pytest.raises(LeaseLost), leases.commit_guard(ticket):
            pytest.fail("committed under a revoked lease")
    else:
        with leases.commit_guard(ticket):
            with catalog.engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                admin.commit()
            time.sleep(0.2)
            assert oldest_live_writer(catalog) is not None  # the guard holds it off
        assert wait_for(lambda: oldest_live_writer(catalog) is None)
    leases.end(ticket)
    leases.close()


def test_sqlite_leases_live_beside_the_catalog(tmp_path):
    from pithos.catalog import Catalog

    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite")
    try:
        assert liveness_for(catalog).directory == f"{tmp_path}/catalog.sqlite-leases"
    finally:
        catalog.close()


def test_a_writer_that_could_not_begin_is_not_in_flight(catalog, quick_clear):
    """begin() fails when the row cannot be written (a full catalog, say): the writer never
    began, so its start holds no collector back afterwards."""
    from pithos.catalog import schema

    leases = WriterLeases(catalog)
    # The row's table gone: every write of a row fails, as on a full catalog.
    with catalog.engine.begin() as conn:
        schema.upload_leases.drop(conn)
    try:
        with pytest.raises(Exception):  # noqa: B017 (whatever the database says)
            leases.begin()
    finally:
        with catalog.engine.begin() as conn:
            schema.upload_leases.create(conn)
    assert leases._inflight == {}
    with leases.held():
        pass
    assert wait_for(lambda: oldest_live_writer(catalog) is None)
    leases.close()


def test_writers_that_begin_while_the_row_is_written_wait_for_it_not_write_it_again(
        tmp_path):
    """A refresh of the row under way covers every writer that begins meanwhile (it says an
    earlier start): they wait for it to finish and write nothing.  Each wrote the row again,
    one after another, and those that began during those writes did too: at 32 clients of
    small PUTs, a lease write for nearly every upload."""
    import sqlite3

    from pithos.catalog import Catalog

    db = tmp_path / "catalog.sqlite"
    catalog = Catalog(f"sqlite:///{db}")
    leases = WriterLeases(catalog, idle_clear_s=0)
    counter = sqlite3.connect(db, isolation_level=None)
    try:
        # Every write of a lease row counted by the database itself.
        counter.execute("CREATE TABLE lease_writes (n INTEGER)")
        counter.execute("INSERT INTO lease_writes VALUES (0)")
        counter.execute("CREATE TRIGGER counted AFTER INSERT ON upload_leases BEGIN "
                        "UPDATE lease_writes SET n = n + 1; END")
        first = leases.begin()
        assert counter.execute("SELECT n FROM lease_writes").fetchone()[0] == 1
        counter.execute("BEGIN IMMEDIATE")  # the refresh below waits for the database
        refresh = threading.Thread(target=leases._sync)
        refresh.start()
        assert wait_for(lambda: leases._syncing)
        tickets: list[object] = []
        writers = [threading.Thread(target=lambda: tickets.append(leases.begin()))
                   for _ in range(8)]
        for t in writers:
            t.start()
        # All eight have found the write under way (each registers under the same lock).
        assert wait_for(lambda: len(leases._inflight) == 9)
        counter.execute("COMMIT")
        for t in [refresh, *writers]:
            t.join(30)
        assert len(tickets) == 8
        assert counter.execute("SELECT n FROM lease_writes").fetchone()[0] == 2
        # The row covers them all: it says the first writer's start.
        (row,) = catalog.upload_lease_rows()
        assert row.started == leases._inflight[first.token]
        assert all(row.started <= leases._inflight[t.token] for t in tickets)
    finally:
        counter.close()
        leases.close()
        catalog.close()


def test_a_pinned_writer_holds_the_row_back_and_its_time_is_the_rows_age(catalog):
    """pin: a time T such that every collector's cutoff stays at or before it while the
    writer is in flight.  T is no earlier than the start the row says nor than when the row
    was first written this busy period; the pinned writer counts as in flight since the
    row's start, so ending older writers no longer moves the row forward; a writer that
    ended, or a new busy period's row, gets nothing older."""
    leases = WriterLeases(catalog, idle_clear_s=0, refresh_s=0)
    before = time.time()
    a = leases.begin()
    written = time.time()
    row = oldest_live_writer(catalog)
    assert row is not None and before <= row <= written
    b = leases.begin()
    pinned = leases.pin(b)
    assert pinned is not None and row <= pinned <= written
    # A's end would move the row forward to B's start (refresh_s=0): B, pinned, holds it.
    leases.end(a)
    assert oldest_live_writer(catalog) == row
    c = leases.begin()
    leases.end(b)
    assert oldest_live_writer(catalog) > row  # unpinned: the row moves on to C's start
    leases.end(c)
    assert leases.pin(c) is None  # ended: nothing promised
    leases.clear_if_idle()
    assert oldest_live_writer(catalog) is None
    cleared = time.time()
    d = leases.begin()
    again = leases.pin(d)
    assert again is not None and again >= cleared  # a new row: no age from the old one
    leases.end(d)
    leases.close()


def test_a_pin_is_never_before_the_row_was_written(catalog):
    """A collector whose mark started before the row was in the catalog may not have read
    it: the pinned time is the later of the row's start and when the row was written (a
    clock that steps at every reading tells the two apart)."""
    ticks = iter(range(100, 10_000))
    leases = WriterLeases(catalog, clock=lambda: float(next(ticks)), idle_clear_s=0)
    a = leases.begin()
    row = oldest_live_writer(catalog)
    pinned = leases.pin(a)
    assert row is not None and pinned is not None and pinned > row
    leases.end(a)
    leases.close()

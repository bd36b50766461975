"""A new version committed in one call on PostgreSQL (pithos/catalog/pg_commit.py, issue 27):
the commit guard folded into the commit's own statement, and the striped usage of holdings
without a limit (pithos/catalog/pg_functions.py).  Each test fails if its path breaks: a
commit under a revoked lease, a hot holdings row again, a limit passed after stripes were
folded, counters that disagree with what was stored."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, text

from pithos.catalog import Catalog
from pithos.catalog.leases import LeaseLost, WriterLeases, oldest_live_writer
from pithos.core.errors import QuotaExceeded
from tests.pg_writers import box as _box
from tests.pg_writers import pg_catalog, pg_url, put, run_together, sessions
from tests.test_writer_leases import cut_off, wait_for

__all__ = ["pg_catalog", "pg_url"]  # (fixtures)


def test_the_one_call_commit_is_refused_under_a_revoked_lease(pg_catalog):
    cat = pg_catalog
    cid = _box(cat)
    leases = WriterLeases(cat)
    try:
        ticket = leases.begin()
        # Alive: the check rides in the commit's own statement, and it commits.
        leases.guarded_commit(ticket, lambda guard: put(cat, cid, "kept", guard=guard))
        cut_off(cat, leases, ticket.lease_id)  # the session dies; a collector revokes
        with pytest.raises(LeaseLost):
            leases.guarded_commit(ticket, lambda guard: put(cat, cid, "lost", guard=guard))
        assert cat.object(cid, "lost") is None and cat.object(cid, "kept") is not None
        assert cat.holdings("acct")["objects"].usage == 1
        leases.end(ticket)
        again = leases.begin()  # a new lease for the process's next writer
        assert again.lease_id != ticket.lease_id
        leases.guarded_commit(again, lambda guard: put(cat, cid, "lost", guard=guard))
        assert cat.object(cid, "lost") is not None
        leases.end(again)
    finally:
        leases.close()


def test_a_collector_cannot_revoke_a_lease_while_its_one_call_commit_runs(pg_catalog, pg_url):
    """The commit's statement holds the lease's lock (shared) until it commits: a collector
    that finds the session dead meanwhile cannot revoke it before the commit is done."""
    cat = pg_catalog
    cid = _box(cat)
    leases = WriterLeases(cat)
    other = create_engine(pg_url)
    try:
        ticket = leases.begin()
        check = leases.liveness.commit_check(ticket.lease_id)
        assert check is not None
        with other.connect() as blocker:
            # Holds the container's row: the commit's statement stops at its change number,
            # already holding the lease's lock.
            blocker.execute(text("SELECT 1 FROM containers WHERE id = :c FOR UPDATE"),
                            {"c": cid})
            done: list[object] = []
            thread = threading.Thread(target=lambda: done.append(
                put(cat, cid, "o", guard=check)))
            thread.start()
            assert wait_for(lambda: blocker.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :i "
                "AND mode = 'ShareLock' AND granted"), {"i": ticket.lease_id}).scalar_one()
                == 2)  # the lease's own session and the commit's transaction
            cut_off_session = leases.liveness._held[ticket.lease_id][1]
            blocker.execute(text("SELECT pg_terminate_backend(:p)"), {"p": cut_off_session})
            assert wait_for(lambda: not sessions(blocker, "pid = :p", p=cut_off_session))
            assert oldest_live_writer(cat) is not None  # not revoked: the commit holds it
            blocker.rollback()
        thread.join(60)
        assert done and cat.object(cid, "o") is not None
        assert wait_for(lambda: oldest_live_writer(cat) is None)  # revoked once committed
    finally:
        other.dispose()
        leases.close()


def test_charges_of_a_project_without_a_limit_do_not_wait_for_each_other(pg_url, monkeypatch):
    """The holdings row of a project without a limit is shared, not locked for writing: a
    new version commits while another transaction's striped charge of the same project is
    in flight (a hot row again would wait for it: lock_timeout, 503)."""
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=5s")
    cat = Catalog(pg_url)
    other = create_engine(pg_url)
    try:
        cid = _box(cat)
        put(cat, cid, "first")
        with other.connect() as conn:
            # On a stripe no put picks (they pick one of 0..31): two charges on one stripe do
            # wait for each other, on the stripe's row.
            conn.execute(text("SELECT pithos_charge_storage('acct', 7, 1, true, 99, 0)"))
            for n in range(8):
                put(cat, cid, f"o{n}")
            # A delete's release too (the Python path's charge, the same function).
            assert cat.delete_object(cid, "o0")
            conn.commit()
        held = cat.holdings("acct")
        assert held["objects"].usage == 1 + 8 - 1 + 1
        assert held["bytes"].usage == 9 * 1000 + 7  # (a deleted object's versions are kept)
    finally:
        other.dispose()
        cat.close()


def test_a_limit_set_after_striped_charges_is_exact(pg_catalog):
    """Charges made while the project had no limit sit in stripes; setting a limit folds
    them into the holding (and waits for those in flight), and the checked path then counts
    them: 20 writers at once against room for 3 more objects store exactly 3."""
    cat = pg_catalog
    cid = _box(cat)
    for n in range(5):
        put(cat, cid, f"before{n}")
    with cat.engine.connect() as conn:
        assert conn.execute(text("SELECT coalesce(sum(usage), 0) FROM holding_stripes "
                                 "WHERE resource = 'objects'")).scalar_one() == 5
    cat.set_quota("acct", {"objects": 8})
    with cat.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM holding_stripes WHERE "
                                 "resource = 'objects'")).scalar_one() == 0
    assert cat.holdings("acct")["objects"] == ("objects", 8, 5, 0)
    stored = []
    errors = run_together([lambda i=i: stored.append(put(cat, cid, f"w{i}"))
                           for i in range(20)], timeout_s=60)
    refused = [e for e in errors if isinstance(e, QuotaExceeded)]
    assert len(refused) == len(errors), [e for e in errors if e not in refused][:3]
    assert len(stored) == 3 and len(refused) == 17
    assert cat.holdings("acct")["objects"].usage == 8
    # Lifted again: new charges go to stripes, the usage stays whole.
    cat.set_quota("acct", {"objects": None})
    put(cat, cid, "after")
    assert cat.holdings("acct")["objects"] == ("objects", None, 9, 0)


def test_limits_set_and_lifted_under_concurrent_writers_keep_the_usage_exact(pg_catalog):
    """Writers of one project while its limit comes and goes (a limit far above the usage):
    striped and checked charges mix, and the usage is at the end exactly what the versions
    and objects hold."""
    cat = pg_catalog
    cid = _box(cat)

    def writer(w: int) -> None:
        for n in range(25):
            put(cat, cid, f"o{w}-{n % 7}", size=100 + n)  # overwrites: history kept

    def toggler(stop: threading.Event) -> None:
        # Paced: a striped charge that finds a limit set since it looked is run again (a
        # serialization failure, at most twice); limits flipped back to back with no pause
        # could catch one writer three times in a row.
        while not stop.wait(0.02):
            cat.set_quota("acct", {"bytes": 10**12, "objects": 10**6})
            stop.wait(0.02)
            cat.set_quota("acct", {"bytes": None, "objects": None})

    errors = run_together([lambda w=w: writer(w) for w in range(8)], beside=[toggler],
                          timeout_s=120)
    assert not errors, errors[:3]
    with cat.engine.connect() as conn:
        kept = conn.execute(text("SELECT sum(size) FROM versions")).scalar_one()
    held = cat.holdings("acct")
    assert held["objects"].usage == len(cat.list_objects(cid)) == 8 * 7
    assert held["bytes"].usage == kept


def test_a_change_committed_after_later_ones_is_not_missed_by_the_feed(pg_catalog, pg_url):
    """Writers no longer take change numbers (the containers row is not held to their
    commits): a change still in flight while later ones commit and a reader moves past them
    is numbered when it has committed, after every number the reader has seen."""
    cat = pg_catalog
    cid = _box(cat)
    put(cat, cid, "x")
    seen = cat.changes(cid, 0, 100)
    assert [c.name for c in seen.changes] == ["x"]
    x_id = cat.object(cid, "x").object_id
    other = create_engine(pg_url)
    try:
        with other.connect() as w:
            # A writer in flight: its change of x is marked, not committed.
            w.execute(text("UPDATE objects SET change_seq = NULL, change_stamp = "
                           "nextval('pithos_change_stamps') WHERE id = :o"), {"o": x_id})
            for name in ("a", "b"):  # later writers commit meanwhile (not waiting for it)
                put(cat, cid, name)
            page = cat.changes(cid, seen.last, 100)
            assert [c.name for c in page.changes] == ["a", "b"]
            w.commit()
        after = cat.changes(cid, page.last, 100)
        assert [c.name for c in after.changes] == ["x"]
        assert after.changes[0].seq > page.last
        assert cat.changes(cid, after.last, 100).changes == []
    finally:
        other.dispose()


def test_concurrent_writers_and_a_reader_of_the_feed_end_in_the_same_state(pg_catalog):
    """A reader paging the feed while 8 writers change 10 names: what it has seen at the
    end (each name's last version) is each object's current version."""
    cat = pg_catalog
    cid = _box(cat)
    view: dict[str, str] = {}

    def writer(w: int) -> None:
        for n in range(30):
            put(cat, cid, f"o{(w * 3 + n) % 10}", size=n + 1)

    def reader(done: threading.Event) -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            page = cat.changes(cid, cursor, 7)
            for change in page.changes:
                view[change.name] = change.vid
            cursor = page.last
            if finished and not page.more:
                return

    errors = run_together([lambda w=w: writer(w) for w in range(8)], beside=[reader],
                          timeout_s=120)
    assert not errors, errors[:3]
    assert view == {f"o{i}": cat.object(cid, f"o{i}").vid for i in range(10)}


def test_a_connection_that_died_under_the_one_call_commit_is_not_used_again(pg_catalog):
    """A server that dropped the commit's connection fails that commit (503, retry), and the
    dead connection is not handed to the next one."""
    from pithos.core.errors import BackendError

    cat = pg_catalog
    cid = _box(cat)
    put(cat, cid, "warm")  # a pooled connection, used just now: not pinged before its next use
    with cat._read_engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                           "datname = current_database() AND pid <> pg_backend_pid()"))
    failed = 0
    for n in range(3):
        try:
            put(cat, cid, f"o{n}")
        except BackendError as exc:
            assert exc.transient
            failed += 1
    assert failed <= 1
    assert cat.object(cid, "o2") is not None

"""Concurrent writes on a PostgreSQL catalog take their row locks in one order (issue 27's
scale-out bench answered 503 "deadlock detected" to small PUTs at 32 clients): the
container's stat shard, then its project's holdings (bytes before objects), then the change
number on the container's row.  The two holdings rows of a storage charge were locked by one
UPDATE in whatever order its scan met them, which changes as the rows are updated: two
writers of one account could each hold one row and wait for the other."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from pithos.catalog import Catalog
from pithos.core.errors import BackendError
from tests.pg_writers import box, pg_catalog, pg_url, put, run_together, start_blocked

__all__ = ["pg_catalog", "pg_url"]  # (fixtures)

WRITERS = 16
ROUNDS = 80
# Row scans in heap order, as the planner chose on the bench's database (the pickings of a
# sequential or bitmap scan; on a new small table it takes the primary key's).
PGOPTIONS = "-c enable_indexscan=off -c enable_bitmapscan=off"


def _no_retry(cat: Catalog) -> None:
    """Turn off the catalog's retry of a deadlocked write, so that a deadlock shows."""
    cat.write_retries = 0


def test_concurrent_small_writes_of_one_account_never_deadlock(pg_catalog):
    cat = pg_catalog
    _no_retry(cat)
    cids = [box(cat, container=f"c{i}", versioning=versioning)
            for i, versioning in enumerate(("auto", "none", "auto"))]

    def writer(w: int) -> None:
        for n in range(ROUNDS):
            cid = cids[(w + n) % len(cids)]
            name = f"o{(w * 7 + n) % 10}"  # overwrites of the same names
            if n % 5 == 4:
                cat.delete_object(cid, name)
            else:
                # Some expire at once: the reaper deletes them, or the next version over
                # one counts twice in one transaction.
                put(cat, cid, name, size=4096, delete_at=1.0 if n % 3 == 2 else None)

    def reaper(done) -> None:  # objects of every container in one transaction
        while not done.is_set():
            cat.reap_expired()

    errors = run_together([lambda w=w: writer(w) for w in range(WRITERS)], beside=[reaper])
    deadlocks = [e for e in errors if isinstance(e, BackendError)]
    assert not deadlocks, deadlocks[:3]
    assert not errors, errors[:3]
    # What expired after the reaper's last pass is still counted until reaped (as it
    # should be): reaped now, the counters and the charge agree with what was written.
    cat.reap_expired()
    live = sum(len(cat.list_objects(cid)) for cid in cids)
    acct = cat.ensure_account("acct")
    assert sum(cat.container(acct, f"c{i}").objects for i in range(3)) == live
    assert cat.holdings("acct")["objects"].usage == live


def _second_put_across(cat: Catalog, pg_url: str, cid: int, setting: str, held: str,
                       then: str) -> None:
    """Another session (with `setting`) locks the project's `held` holding, a new version
    'second' is put and waits for it, then that session takes its `then` holding too and
    commits.  The put must succeed, counted once."""
    where = "WHERE project_id = 'acct'"
    other = create_engine(pg_url)
    try:
        with other.connect() as conn:
            conn.execute(text(setting))
            conn.execute(text(f"SELECT 1 FROM project_holdings {where} AND resource = "
                              f"'{held}' FOR UPDATE"))
            thread, errors = start_blocked(
                conn, lambda: put(cat, cid, "second", size=4096), f"the '{held}' row")
            conn.execute(text(f"UPDATE project_holdings SET usage = usage {where} "
                              f"AND resource = '{then}'"))
            conn.commit()
        thread.join(60)
    finally:
        other.dispose()
    assert not thread.is_alive()
    assert not errors, errors
    assert [v.size for v in cat.versions(cid, "second")] == [4096]
    assert cat.holdings("acct")["objects"].usage == 2
    assert cat.holdings("acct")["bytes"].usage == 2 * 4096
    assert cat.container(cat.ensure_account("acct"), "c").objects == 2


def test_a_storage_charge_locks_its_holdings_in_resource_order_whatever_the_plan(
        pg_catalog, pg_url):
    """The cycle of the bench, made deterministic: the planner reads the holdings in heap
    order (as it chose on the bench's database), where 'objects' now comes before 'bytes'.
    Another transaction holds 'bytes' while a new version is charged, then takes
    'objects'.  The charge must wait for 'bytes' before it locks 'objects' (then the other
    transaction goes on and commits); locked in heap order, each waited for the other and
    PostgreSQL killed one ("deadlock detected")."""
    cat = pg_catalog
    _no_retry(cat)
    cid = box(cat)
    put(cat, cid, "first", size=4096)
    where = "WHERE project_id = 'acct'"
    other = create_engine(pg_url)
    try:
        with other.begin() as conn:  # a new version of the 'bytes' row: last in the heap
            conn.execute(text(f"UPDATE project_holdings SET usage = usage {where} "
                              "AND resource = 'bytes'"))
        with other.connect() as conn:
            order = [r[0] for r in conn.execute(text(
                f"SELECT resource FROM project_holdings {where} "
                "AND resource IN ('bytes', 'objects')"))]
        assert order == ["objects", "bytes"]  # (what a sequential scan meets first)
    finally:
        other.dispose()
    _second_put_across(cat, pg_url, cid, "SET lock_timeout = '30s'", "bytes", "objects")


def test_a_write_chosen_as_a_deadlocks_victim_runs_again_once_whole(pg_catalog, pg_url):
    """The catalog's second line of defence: a write PostgreSQL rolls back as a deadlock's
    victim runs again, whole.  Here the other transaction locks in the wrong order ('objects'
    then 'bytes') and waits longer before looking for deadlocks, so the new version is the
    victim: it is stored once and charged once.  (The other waits for 'bytes', which the new
    version holds, until PostgreSQL kills the new version's transaction: its
    deadlock_timeout is the default 1 s.)"""
    cat = pg_catalog
    # (A run again may lose the race for 'bytes' to the other transaction's wait, which
    # wakes as the victim rolls back, and be the victim once more.)
    cat.write_retries = 5
    cid = box(cat)
    put(cat, cid, "first", size=4096)
    # A limit, however far: the charge then locks the holdings FOR UPDATE (a project
    # without one shares them, and nothing here would deadlock: pg_functions.py).
    cat.set_quota("acct", {"bytes": 10**12, "objects": 10**6})
    _second_put_across(cat, pg_url, cid, "SET deadlock_timeout = '20s'", "objects", "bytes")

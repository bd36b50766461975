"""The catalog's savings of round trips for small requests on a server (issue 27): the
account-and-container lookup kept briefly by a server worker, the pooled PostgreSQL
connection pinged only after it sat idle, the change number bumped and marked in one
statement, and psycopg waiting on gevent's hub instead of holding the worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

from sqlalchemy import create_engine, text

from pithos.catalog import Catalog
from pithos.catalog import engine as catalog_engine
from tests.conftest import postgres_database

ROOT = b"\x01" * 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def put(cat, cid, name):
    return cat.put_version(cid, name, root=ROOT, size=10, etag="e" * 32,
                           content_type="application/octet-stream", meta={})


def test_a_worker_keeps_found_lookups_until_a_write_drops_them(catalog_url, worker_offload):
    worker = Catalog(catalog_url, offload=worker_offload)
    other = Catalog(catalog_url)  # another process: no cache, its writes unseen by `worker`
    try:
        worker._info_ttl = 3600.0  # the test must not depend on how fast the machine is
        acct = other.ensure_account("acct")
        other.create_container(acct, "c")
        found = worker.account_and_container("acct", "c")
        assert found.container is not None and found.container.read_acl is None
        cid = found.container.id

        other.update_container(cid, read_acl=".r:*")
        # Kept: another process's change shows after the TTL, as in Swift's proxy.
        assert worker.account_and_container("acct", "c").container.read_acl is None
        put(worker, cid, "o")  # a new version changes no looked-up column: still kept
        assert worker.account_and_container("acct", "c").container.read_acl is None
        worker.update_container(cid, meta={"k": "v"})  # any other write drops them
        assert worker.account_and_container("acct", "c").container.read_acl == ".r:*"

        # What is not found is never kept: a container made elsewhere is seen at once.
        assert worker.account_and_container("acct", "d").container is None
        other.create_container(acct, "d")
        assert worker.account_and_container("acct", "d").container is not None
    finally:
        worker.close()
        other.close()


def test_a_write_by_another_process_of_the_data_directory_drops_the_lookups(
        catalog_url, worker_offload, tmp_path):
    """Two workers (and the CLI) of one `pithos serve` share the stamp file: an ACL revoked
    through one is refused at once by the other, however long the TTL."""
    stamp = str(tmp_path / "catalog.stamp")
    worker = Catalog(catalog_url, offload=worker_offload, info_stamp=stamp)
    other = Catalog(catalog_url, offload=worker_offload, info_stamp=stamp)
    cli = Catalog(catalog_url, info_stamp=stamp)  # no event loop: no cache, but it bumps
    try:
        worker._info_ttl = other._info_ttl = 3600.0
        acct = cli.ensure_account("acct")
        cli.create_container(acct, "c")
        cid = worker.account_and_container("acct", "c").container.id
        other.update_container(cid, read_acl=".r:*")
        assert worker.account_and_container("acct", "c").container.read_acl == ".r:*"
        cli.update_container(cid, read_acl=None)
        assert worker.account_and_container("acct", "c").container.read_acl is None
        assert other.account_and_container("acct", "c").container.read_acl is None
        # A new version bumps nothing: the lookups stay (the point of the cache).
        before = worker._stamp.read()
        put(other, cid, "o")
        assert worker._stamp.read() == before
        # Nor does a block grant (one after every POST ?blocks made every worker load its
        # lookups again); what it granted is answered at once all the same.
        user = cli.add_user("acct", "bob", "hash", admin=False)
        before = worker._stamp.read()
        other.grant_blocks(acct, [bytes([1]) * 32])
        other.grant_user_blocks(user.id, [bytes([2]) * 32])
        assert worker._stamp.read() == before
        assert worker.granted_blocks(acct, [bytes([1]) * 32, bytes([2]) * 32]) == \
            {bytes([1]) * 32}
        assert worker.granted_user_blocks(user.id, [bytes([2]) * 32]) == {bytes([2]) * 32}
    finally:
        for cat in (worker, other, cli):
            cat.close()


def test_without_an_event_loop_nothing_is_kept(catalog_url):
    mine, other = Catalog(catalog_url), Catalog(catalog_url)
    try:
        acct = other.ensure_account("acct")
        other.create_container(acct, "c")
        cid = mine.account_and_container("acct", "c").container.id
        other.update_container(cid, read_acl=".r:*")
        assert mine.account_and_container("acct", "c").container.read_acl == ".r:*"
    finally:
        mine.close()
        other.close()


def test_change_numbers_follow_commits(catalog_url):
    """SQLite numbers each change as it is written, PostgreSQL as the feed is read: the feed
    is the same."""
    cat = Catalog(catalog_url)
    try:
        acct = cat.ensure_account("acct")
        cat.create_container(acct, "c")
        cid = cat.container(acct, "c").id
        for name in ("a", "b", "a", "c"):
            put(cat, cid, name)
        page = cat.changes(cid, 0, 10)
        assert [c.name for c in page.changes] == ["b", "a", "c"]
        seqs = [c.seq for c in page.changes]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        # SQLite: every commit took the container's next number; PostgreSQL: the reader
        # numbered the three objects changed (pithos/catalog/changes.py).
        assert seqs[-1] == (4 if cat.is_sqlite else 3)
        assert [c.name for c in cat.changes(cid, seqs[0], 10).changes] == ["a", "c"]
    finally:
        cat.close()


def test_a_connection_killed_while_idle_is_replaced_before_use(monkeypatch):
    url, drop = postgres_database("ping")
    cat = Catalog(url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        acct = cat.ensure_account("acct")
        cat.create_container(acct, "c")
        with admin.connect() as conn:  # as a restarted server would: every session gone
            killed = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        assert killed >= 1
        monkeypatch.setattr(catalog_engine, "PING_IDLE_S", 0.0)  # every connection is "idle"
        cid = cat.container(acct, "c").id
        assert put(cat, cid, "o").size == 10
        # The ping leaves the connection out of any transaction: its next user may switch it
        # to autocommit (the writer leases' revocation does).
        with cat.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        cat.close()
        admin.dispose()
        drop()


SCRIPT = textwrap.dedent("""
    import sys
    import psycopg  # imported before the patch, as `pithos serve`'s master does
    from gevent import monkey
    monkey.patch_all()
    import gevent
    from pithos.catalog import Catalog
    from pithos.core.offload import Offload

    cat = Catalog(sys.argv[1], offload=Offload.gevent(4))
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    t = gevent.spawn(ticker)
    gevent.sleep(0)
    before = len(ticks)
    with cat.engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_sleep(0.5)")
    print(len(ticks) - before)
    t.kill()
    cat.close()
""")


def test_postgres_round_trips_let_the_worker_serve_others():
    """Under gevent, a greenlet waiting for PostgreSQL lets the others run (psycopg imported
    before the patch would poll(2) in C, holding the whole worker: no tick at all)."""
    url, drop = postgres_database("hub")
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, url], capture_output=True,
                              text=True, timeout=120, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": REPO})
        assert done.returncode == 0, done.stderr[-2000:]
        assert int(done.stdout.strip().splitlines()[-1]) > 0
    finally:
        drop()


def test_more_guarded_commits_than_half_the_pool_all_commit():
    """Each guarded commit holds two pooled connections (the guard's, then its
    transaction's): 24 writers committing at once must not each take one and wait for a
    second (the pool has 5 + 10): that ended in the pool's 30 s timeout, a 503."""
    from pithos.catalog.leases import WriterLeases

    url, drop = postgres_database("guards")
    cat = Catalog(url)
    leases = WriterLeases(cat)
    errors: list[BaseException] = []
    try:
        acct = cat.ensure_account("acct")
        cat.create_container(acct, "c")
        cid = cat.container(acct, "c").id
        start = threading.Barrier(24, timeout=60)

        def writer(i: int) -> None:
            try:
                start.wait()
                for n in range(3):
                    with leases.held() as ticket, leases.commit_guard(ticket):
                        time.sleep(0.1)  # (so that many writers hold their guards at once)
                        put(cat, cid, f"o{i}-{n}")
            except BaseException as exc:  # the test reports it
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:3]
        assert len(cat.changes(cid, 0, 100).changes) == 72
    finally:
        leases.close()
        cat.close()
        drop()

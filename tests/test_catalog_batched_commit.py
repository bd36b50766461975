"""New versions of concurrent writers committed together on PostgreSQL (pithos/catalog/
pg_batch.py, issue 27): one transaction for a batch, each request answered with its own
outcome.  A batch is made deterministic here: a first commit is held on an object's row
another session has locked, the others queue behind it, and when it is let go they go as
one batch.  Each test fails if its path breaks: an item's failure that fails the others or
commits anyway, a revoked lease that commits, a quota passed, a failed batch acknowledged."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, event, text

from pithos.catalog import Catalog
from pithos.catalog.leases import LeaseLost, WriterLeases
from pithos.catalog.pg_commit import PUT_VERSION_SQL
from pithos.catalog.records import Expect
from pithos.core.errors import BackendError, PreconditionFailed, QuotaExceeded
from tests.conftest import postgres_database
from tests.test_writer_leases import cut_off, wait_for

ROOT = b"\x02" * 32


@pytest.fixture
def pg_url():
    url, drop = postgres_database("batched")
    yield url
    drop()


@pytest.fixture
def cat(pg_url):
    catalog = Catalog(pg_url)
    catalog.batch_commits = True
    yield catalog
    catalog.close()


def _box(cat: Catalog, name: str = "c") -> int:
    acct = cat.ensure_account("acct")
    cat.create_container(acct, name)
    return cat.container(acct, name).id


def put(cat: Catalog, cid: int, name: str, size: int = 1000, **kw) -> object:
    return cat.put_version(cid, name, root=ROOT, size=size, etag="e" * 32,
                           content_type="application/octet-stream", meta={}, **kw)


class Held:
    """A first commit ('gate') held on its object's row, so that what comes meanwhile
    queues for one batch."""

    def __init__(self, cat: Catalog, url: str, cid: int) -> None:
        self.cat, self.cid = cat, cid
        put(cat, cid, "gate")
        self.engine = create_engine(url)
        self.conn = self.engine.connect()
        self.conn.execute(text("SET lock_timeout = '60s'"))
        self.conn.execute(text("SELECT 1 FROM objects WHERE container_id = :c AND "
                               "name = 'gate' FOR UPDATE"), {"c": cid})
        self.outcomes: dict[str, object] = {}
        self.threads: list[threading.Thread] = []
        self.start("gate", lambda: put(cat, cid, "gate"))
        assert wait_for(lambda: self.waiting() == 1), "the gate's commit never waited"

    def waiting(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%pithos_put_version%'"))
                .scalar_one())

    def start(self, key: str, call: Callable[[], object]) -> None:
        def run() -> None:
            try:
                self.outcomes[key] = call()
            except BaseException as exc:  # what the request would answer
                self.outcomes[key] = exc

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def queue(self, calls: dict[str, Callable[[], object]]) -> None:
        """Start `calls`; return once all of them wait for the next batch."""
        for key, call in calls.items():
            self.start(key, call)
        batcher = self.cat._batcher
        assert batcher is not None
        assert wait_for(lambda: batcher.queued() == len(calls)), batcher.queued()

    def release(self) -> None:
        self.conn.commit()
        self.finish()

    def finish(self) -> None:
        for thread in self.threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self.threads)
        self.conn.close()
        self.engine.dispose()


@pytest.fixture
def held(cat, pg_url) -> Iterator[Callable[[int], Held]]:
    made: list[Held] = []

    def make(cid: int) -> Held:
        made.append(Held(cat, pg_url, cid))
        return made[-1]

    yield make
    for h in made:
        if h.conn.closed is False:
            h.conn.rollback()
        for thread in h.threads:
            thread.join(60)


def test_one_batch_commits_each_item_and_fails_only_those_that_fail(cat, held):
    cid = _box(cat)
    put(cat, cid, "exists")
    # The gate's two versions and 'exists' use 3000 bytes of 4000: of the batch's items, in
    # their order (by name), 'b0' fits, then 'b1' and 'b2' would pass the limit; 'exists'
    # fails its precondition.
    cat.set_quota("acct", {"bytes": 4000})
    h = held(cid)
    batcher = cat._batcher
    before = batcher.batches
    h.queue({
        "b0": lambda: put(cat, cid, "b0", size=500),
        "b1": lambda: put(cat, cid, "b1", size=1000),
        "b2": lambda: put(cat, cid, "b2", size=600),
        "exists": lambda: put(cat, cid, "exists", size=0, expect=Expect(absent=True)),
        "meta": lambda: cat.put_version(cid, "meta", root=ROOT, size=0, etag="f" * 32,
                                        content_type="text/plain",
                                        meta={"user": {"a": "1", "b": "2"}}),
    })
    h.release()
    assert batcher.batches == before + 2  # the gate alone, then the five together
    out = h.outcomes
    assert not isinstance(out["gate"], BaseException)
    assert not isinstance(out["b0"], BaseException) and not isinstance(out["meta"],
                                                                       BaseException)
    assert isinstance(out["b1"], QuotaExceeded) and isinstance(out["b2"], QuotaExceeded)
    assert isinstance(out["exists"], PreconditionFailed)
    assert cat.object(cid, "b1") is None and cat.object(cid, "b2") is None
    assert cat.object(cid, "meta").meta == {"user": {"a": "1", "b": "2"}}
    assert len(cat.versions(cid, "exists")) == 1
    # Exact: what was committed, and nothing of what failed.
    assert cat.holdings("acct")["bytes"].usage == 1000 * 3 + 500
    assert cat.holdings("acct")["objects"].usage == 4
    assert cat.container(cat.ensure_account("acct"), "c").objects == 4


def test_a_lease_revoked_while_its_request_waits_in_the_batch_fails_that_request_alone(
        cat, held):
    cid = _box(cat)
    leases = WriterLeases(cat)
    try:
        ticket = leases.begin()
        h = held(cid)
        h.queue({
            "guarded": lambda: leases.guarded_commit(
                ticket, lambda guard: put(cat, cid, "guarded", guard=guard)),
            "other": lambda: put(cat, cid, "other"),
        })
        cut_off(cat, leases, ticket.lease_id)  # the session dies; a collector revokes
        h.release()
        assert isinstance(h.outcomes["guarded"], LeaseLost)
        assert not isinstance(h.outcomes["other"], BaseException)
        assert cat.object(cid, "guarded") is None and cat.object(cid, "other") is not None
        assert cat.holdings("acct")["objects"].usage == 2  # the gate and 'other'
    finally:
        leases.close()


def test_a_guard_holds_the_lease_to_the_batch_s_commit(cat, held):
    """A collector cannot revoke a lease while a writer's item waits in a batch not yet
    committed: the item's check took the lease's lock for the batch's whole transaction."""
    cid = _box(cat)
    put(cat, cid, "z")
    leases = WriterLeases(cat)
    try:
        ticket = leases.begin()
        check = leases.liveness.commit_check(ticket.lease_id)
        h = held(cid)
        h.queue({"guarded": lambda: leases.guarded_commit(
                    ticket, lambda guard: put(cat, cid, "a", guard=guard)),
                 "z": lambda: put(cat, cid, "z")})
        # The gate let go, the next batch commits 'a' (its lease checked), then waits for
        # 'z', whose row another session holds: the lease's lock is the batch's meanwhile.
        with h.engine.connect() as locker:
            locker.execute(text("SELECT 1 FROM objects WHERE container_id = :c AND "
                                "name = 'z' FOR UPDATE"), {"c": cid})
            h.conn.commit()
            assert wait_for(lambda: h.waiting() == 1)
            holders = locker.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                "classid = :c AND objid = :i AND mode = 'ShareLock' AND granted AND "
                "pid <> :session"), {"c": check.lock_class, "i": ticket.lease_id,
                                     "session": check.pid}).scalar_one()
            assert holders == 1  # the batch's transaction, beside the lease's own session
            assert cat.object(cid, "a") is None  # (not committed before the batch is)
            locker.commit()
        h.finish()
        assert not isinstance(h.outcomes["guarded"], BaseException)
        assert not isinstance(h.outcomes["z"], BaseException)
        assert cat.object(cid, "a") is not None and len(cat.versions(cid, "z")) == 2
    finally:
        leases.close()


def test_a_batch_that_fails_acknowledges_none_of_its_items_and_the_next_commits(
        cat, held, pg_url):
    cid = _box(cat)
    h = held(cid)
    h.queue({f"q{i}": (lambda i=i: put(cat, cid, f"q{i}")) for i in range(3)})
    with h.engine.connect() as admin:  # the gate's batch loses its session mid-call
        admin.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND query LIKE '%pithos_put_version%' AND "
            "wait_event_type = 'Lock'"))
        admin.commit()
    h.conn.rollback()
    h.finish()
    assert isinstance(h.outcomes["gate"], BackendError)
    assert [cat.object(cid, f"q{i}") is not None for i in range(3)] == [True] * 3
    assert len(cat.versions(cid, "gate")) == 1  # the held one never committed
    assert cat.holdings("acct")["objects"].usage == 4


def test_50_batched_writers_against_a_project_limit_that_fits_10(cat, held):
    """50 writers queued behind a held commit go in batches of MAX_ITEMS (32, then 18)
    against a limit with room for 10 of them: exactly 10 stored, whichever batch they
    were in, and the usage is theirs."""
    from pithos.catalog.pg_batch import MAX_ITEMS

    cid = _box(cat)
    h = held(cid)
    # The gate's two versions use 2000 bytes: room for ten more of 1000.
    cat.set_quota("acct", {"bytes": 2000 + 10 * 1000})
    batcher = cat._batcher
    before = batcher.batches
    h.queue({f"o{i}": (lambda i=i: put(cat, cid, f"o{i}", 1000)) for i in range(50)})
    h.release()
    assert MAX_ITEMS == 32 and batcher.batches == before + 3  # the gate, 32, then 18
    out = {k: v for k, v in h.outcomes.items() if k != "gate"}
    stored = [k for k, v in out.items() if not isinstance(v, BaseException)]
    refused = [k for k, v in out.items() if isinstance(v, QuotaExceeded)]
    assert len(stored) == 10 and len(refused) == 40, [
        v for v in out.values() if isinstance(v, BaseException)
        and not isinstance(v, QuotaExceeded)][:3]
    assert cat.holdings("acct")["bytes"].usage == 2000 + 10 * 1000
    assert cat.container(cat.ensure_account("acct"), "c").bytes == 1000 + 10 * 1000


def test_concurrent_batched_writers_of_shared_names_keep_every_counter_exact(cat):
    """Writers in batches of two catalogs (two workers) over the same names in two
    containers: a deadlock between batches is an item run again alone, never an error,
    and the counters agree with what is stored."""
    cids = [_box(cat, "c1"), _box(cat, "c2")]
    second = Catalog(cat.url)
    second.batch_commits = True
    errors: list[BaseException] = []

    def writer(c: Catalog, n: int) -> None:
        for k in range(12):
            try:
                put(c, cids[(n + k) % 2], f"o{(n * 7 + k) % 9}", 100 + n)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c, n))
               for n, c in enumerate([cat, second] * 8)]
    try:
        deadline = time.monotonic() + 120
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
    finally:
        second.close()
    assert not errors, errors[:3]
    acct = cat.ensure_account("acct")
    versions = [v for cid in cids for o in cat.list_objects(cid)
                for v in cat.versions(cid, o.name)]
    assert len(versions) == 16 * 12
    assert cat.holdings("acct")["bytes"].usage == sum(v.size for v in versions)
    assert sum(cat.container(acct, n).objects for n in ("c1", "c2")) == sum(
        len(cat.list_objects(cid)) for cid in cids)


def test_only_the_hub_s_thread_of_a_gevent_worker_joins_a_batch():
    """A commit on a pool thread of a gevent worker goes alone: its wait on the hub's Event
    from another thread could lose its wakeup (the 120 s stall of a pool thread's gevent
    lock).  Checked in a process patched as a worker is."""
    import subprocess
    import sys

    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "from gevent.hub import get_hub\n"
        "from pithos.core.locks import waits_cooperatively\n"
        "hub = get_hub()\n"
        "print(waits_cooperatively(), hub.threadpool.spawn(waits_cooperatively).get())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["True", "False"]


class _Killed(BaseException):
    """What a request's greenlet gets when its worker shuts down (GreenletExit's kind)."""


class _KilledMidStatement(dict):
    """The commit's parameters, whose reading kills the request inside the call."""

    def __getitem__(self, key: str) -> object:
        raise _Killed()


def test_a_commit_killed_mid_call_does_not_give_its_connection_back(cat):
    """A connection left mid-statement by a killed request is dropped, not pooled for the
    next request."""
    cid = _box(cat)
    put(cat, cid, "before")
    dropped: list[object] = []
    event.listen(cat.engine, "invalidate", lambda dbapi, record, exc: dropped.append(dbapi))
    with pytest.raises(_Killed):
        cat._call_autocommit(PUT_VERSION_SQL, _KilledMidStatement(name="x"))
    assert len(dropped) == 1 and dropped[0].closed  # closed, not pooled
    put(cat, cid, "after")  # the next commit gets a working connection
    assert cat.object(cid, "after") is not None


def test_the_commit_calls_send_their_parameters_in_binary():
    """Both calls' parameters go in binary: a batch's arrays in text were parsed by the
    server's array_in (~9% of a small PUT's backend CPU, radosgw_bench) and each 4 KiB
    inline body dumped to hex by the worker (twice its bytes on the wire)."""
    from psycopg import pq
    from psycopg._queries import PostgresQuery

    from pithos.catalog.pg_batch import PUT_VERSIONS_SQL, batch_parameters
    from pithos.catalog.pg_commit import PUT_VERSION_SQL

    one = {"guard_class": None, "guard_lease": None, "guard_pid": None, "container_id": 1,
           "name": "o", "vid": "v", "root": ROOT, "size": 4, "etag": "e" * 32,
           "content_type": "t", "created": 1.0, "modified_by": None, "delete_at": None,
           "dlo_manifest": None, "slo_manifest": None, "inline": b"body",
           "meta_domains": ["user"], "meta_keys": ["k"], "meta_values": ["v"],
           "grant_account": None, "grant_hashes": None, "sources": None,
           "expect_absent": False, "expect_match": ["x"], "now": 1.0, "new_uuid": "u",
           "shard": 0, "stripe": 0}
    for sql, values in ((PUT_VERSION_SQL, one),
                        (PUT_VERSIONS_SQL, batch_parameters([one, dict(one, name="p")], 0, 0))):
        query = PostgresQuery(psycopg_transformer())
        query.convert(sql, values)
        names = re.findall(r"%\((\w+)\)b", sql)
        assert len(names) == sql.count("%(")  # every placeholder binary
        # (A NULL, and an array of NULLs only, whose element type psycopg cannot tell, go
        # as text: nothing to parse.)
        sent = {name: f for name, f in zip(names, query.formats or (), strict=True)
                if values[name] is not None and not (isinstance(values[name], list)
                                                     and set(values[name]) == {None})}
        assert len(sent) > 15 and set(sent.values()) == {pq.Format.BINARY}, sent


def psycopg_transformer():
    from psycopg.adapt import Transformer

    return Transformer()


def test_a_batch_keeps_awkward_values_whole(cat, held):
    """Names, metadata and inline bodies that a text array would quote or escape (quotes,
    braces, commas, backslashes, NUL bytes, NULL-looking strings, non-ASCII) come back as
    they were sent, each item's its own."""
    cid = _box(cat)
    names = ['a "quoted", {braced} name', "back\\slash\\", "NULL", "ünï cödé €", " sp "]
    bodies = [b"\x00\\x00\\\"{}," + bytes(range(256)), b"", b"\\", b"NULL", b"\xff" * 4096]
    h = held(cid)
    before = cat._batcher.batches
    h.queue({n: (lambda n=n, b=b: cat.put_version(
        cid, n, root=ROOT, size=len(b), etag="f" * 32, content_type="text/x; q=\"1\"",
        meta={"user": {"k,{}": 'v "1"\\', "NULL": "NULL"}}, inline=b))
        for n, b in zip(names, bodies, strict=True)})
    h.release()
    assert cat._batcher.batches == before + 2  # the gate alone, then the five together
    for n, b in zip(names, bodies, strict=True):
        assert not isinstance(h.outcomes[n], BaseException), h.outcomes[n]
        obj = cat.object(cid, n)
        assert obj is not None and obj.name == n
        assert obj.inline == b and obj.size == len(b)
        assert obj.content_type == "text/x; q=\"1\""
        assert obj.meta == {"user": {"k,{}": 'v "1"\\', "NULL": "NULL"}}


def test_a_batch_charges_each_unlimited_project_s_stripes_once(cat, held, pg_url):
    """Migration 16: a batch adds up its items' charges per unlimited project and writes
    that project's stripe rows once, after its items (each item wrote them again before,
    a chain of row versions every later item walked); an item rolled back charges nothing;
    a limited project's items are still charged and checked one by one, in order."""
    cid = _box(cat)
    other = cat.ensure_account("other")
    cat.create_container(other, "c")
    oid = cat.container(other, "c").id
    limited = cat.ensure_account("limited")
    cat.create_container(limited, "c")
    lid = cat.container(limited, "c").id
    put(cat, cid, "exists", size=10)
    put(cat, oid, "o-first", size=1)  # (the holdings rows exist: the striped path)
    put(cat, lid, "l-first", size=1)
    cat.set_quota("limited", {"bytes": 2000})
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:  # every write of a stripe row, counted by project
            conn.execute(text(
                "CREATE TABLE stripe_writes (project_id text);"
                "CREATE FUNCTION count_stripe_write() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN INSERT INTO stripe_writes VALUES (NEW.project_id); RETURN NEW; END $$;"
                "CREATE TRIGGER count_stripe_writes AFTER INSERT OR UPDATE ON holding_stripes"
                " FOR EACH ROW EXECUTE FUNCTION count_stripe_write()"))
        h = held(cid)
        before = cat._batcher.batches
        h.queue({
            **{f"a{i}": (lambda i=i: put(cat, cid, f"a{i}", size=100 + i)) for i in range(4)},
            "exists": lambda: put(cat, cid, "exists", size=5, expect=Expect(absent=True)),
            **{f"o{i}": (lambda i=i: put(cat, oid, f"o{i}", size=7)) for i in range(2)},
            "l0": lambda: put(cat, lid, "l0", size=1500),
            "l1": lambda: put(cat, lid, "l1", size=600),  # past the limit after l0
        })
        h.release()
        assert cat._batcher.batches == before + 2  # the gate alone, then the nine together
        out = h.outcomes
        assert isinstance(out["exists"], PreconditionFailed)
        assert isinstance(out["l1"], QuotaExceeded)
        assert not any(isinstance(out[k], BaseException)
                       for k in ("a0", "a1", "a2", "a3", "o0", "o1", "l0", "gate"))
        with engine.connect() as conn:
            writes = dict(conn.execute(text(
                "SELECT project_id, count(*) FROM stripe_writes GROUP BY project_id")).all())
        # The gate's two commits (each a batch of one, the one call) wrote acct's two rows
        # each; the batch two more for acct (not 2 x 4) and two for other; the limited
        # project none.
        assert writes == {"acct": 6, "other": 2}
        assert cat.holdings("acct")["bytes"].usage == 10 + 1000 * 2 + sum(
            100 + i for i in range(4))
        assert cat.holdings("acct")["objects"].usage == 1 + 1 + 4
        assert cat.holdings("other")["bytes"].usage == 1 + 14
        assert cat.holdings("other")["objects"].usage == 3
        assert cat.holdings("limited")["bytes"].usage == 1 + 1500
        assert cat.holdings("limited")["objects"].usage == 2
    finally:
        engine.dispose()


def test_a_batch_rolled_back_whole_by_a_deadlock_on_its_charge_runs_each_item_alone(
        cat, held, pg_url):
    """The projects' charges come after a batch's items (migration 16), so a deadlock there
    rolls the whole batch back: its requests then commit all the same (each alone, which
    `_call_batch` asks for, or again through the write's retry), none fails.  Here
    another session holds acct's stripe rows and then asks for an object row the batch
    holds; PostgreSQL breaks the cycle by failing the batch (its deadlock_timeout is the
    shorter)."""
    cid = _box(cat)
    put(cat, cid, "a0")  # (acct's holdings rows exist)
    g_acct = cat.ensure_account("g")
    cat.create_container(g_acct, "gate")
    gid = cat.container(g_acct, "gate").id  # the gate's charge is another project's
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(  # every stripe row there, at zero: the batch's is one
                "INSERT INTO holding_stripes (project_id, resource, stripe, usage) "
                "SELECT 'acct', r, s, 0 FROM unnest(ARRAY['bytes', 'objects']) AS r, "
                "generate_series(0, 63) AS s ON CONFLICT DO NOTHING"))
        other = engine.connect()
        other.execute(text("SET deadlock_timeout = '30s'"))
        other.execute(text("SET lock_timeout = '60s'"))
        other.execute(text("SELECT 1 FROM holding_stripes WHERE project_id = 'acct' "
                           "FOR UPDATE"))
        h = held(gid)
        batcher = cat._batcher
        before = batcher.batches
        h.queue({f"a{i}": (lambda i=i: put(cat, cid, f"a{i}", size=100)) for i in range(3)})
        h.conn.commit()  # the gate goes alone, then the three as a batch
        assert wait_for(lambda: batcher.batches == before + 1)
        assert wait_for(lambda: h.waiting() == 1)  # the batch, at acct's stripes
        locked = other.execute(text(  # the cycle: PostgreSQL fails the batch
            "SELECT 1 FROM objects WHERE container_id = :c AND name = 'a0' FOR UPDATE"),
            {"c": cid}).scalar()
        other.rollback()  # the stripes free: the items, each alone, go on
        other.close()
        h.finish()
        out = h.outcomes
        assert not any(isinstance(v, BaseException) for v in out.values()), out
        assert locked == 1  # `other` was not the deadlock's victim
        assert cat.holdings("acct")["objects"].usage == 3  # a0 (twice: one object), a1, a2
        assert cat.holdings("acct")["bytes"].usage == 1000 + 100 * 3  # every version kept
    finally:
        engine.dispose()

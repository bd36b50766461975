"""Concurrent look-ups of objects sharing one statement on PostgreSQL (pithos/catalog/
pg_read_batch.py, issue 27): each request still gets its own, fresh answer.  A batch is made
deterministic here: a first look-up is held on a table another session has locked, the
others queue behind it, and when it is let go they go as one statement.  Each test fails if
its path breaks: an answer given to the wrong request, another account's object, a deleted
or expired object shown, a version committed before a look-up came and not seen by it, a
batch's failure that fails its other requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, text

from pithos.catalog import Catalog
from pithos.catalog.pg_read_batch import LookupBatcher
from tests.conftest import postgres_database
from tests.test_writer_leases import wait_for

ROOT = b"\x03" * 32


def put(cat: Catalog, cid: int, name: str, body: bytes, **kw) -> object:
    return cat.put_version(cid, name, root=ROOT, size=len(body), etag="e" * 32,
                           content_type="text/plain", inline=body, **kw)


def body_of(found) -> bytes | None:
    return None if found is None else found.version.inline


@pytest.fixture
def cat(catalog):
    catalog.batch_reads = True  # (on PostgreSQL; SQLite reads alone whatever it says)
    return catalog


def test_concurrent_lookups_each_get_their_own_answer(cat):
    """Threads reading many objects at once, in two accounts with the same container and
    object names, with metadata, a public link, a deleted and an expired object: every
    answer is the asked object's, whatever statement it shared."""
    expected: dict[tuple[int, str], tuple[bytes | None, dict, str | None]] = {}
    cids = []
    for account in ("acct", "acct2"):
        acct = cat.ensure_account(account)
        cat.create_container(acct, "c")
        cid = cat.container(acct, "c").id
        cids.append(cid)
        for i in range(24):
            body = f"{account}/{i}".encode()
            meta = {"user": {"n": str(i), "a": account}} if i % 3 else {}
            put(cat, cid, f"o{i}", body, meta=meta)
            expected[cid, f"o{i}"] = (body, meta, None)
        put(cat, cid, "gone", b"x", meta={})
        cat.delete_object(cid, "gone", None)
        expected[cid, "gone"] = (None, {}, None)
        put(cat, cid, "expired", b"x", meta={}, delete_at=time.time() - 60)
        expected[cid, "expired"] = (None, {}, None)
        expected[cid, "missing"] = (None, {}, None)
    v = cat.object_and_public_token(cids[0], "o1").version
    expected[cids[0], "o1"] = (*expected[cids[0], "o1"][:2], cat.publish(v.object_id))
    keys = sorted(expected)
    wrong: list[tuple] = []

    def reader(seed: int) -> None:
        for j in range(60):
            key = keys[(seed * 7 + j * 13) % len(keys)]
            found = cat.object_and_public_token(*key)
            body, meta, tok = expected[key]
            got = (body_of(found), found.version.meta if found else {},
                   found.public_token if found else None)
            if found is not None and (found.version.container_id, found.version.name) != key:
                wrong.append((key, "another object's version"))
            if got != (body, meta, tok):
                wrong.append((key, got))

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []


# -- a batch held in place (PostgreSQL) ----------------------------------------------------------

@pytest.fixture
def pg(request):
    url, drop = postgres_database("readbatch")
    catalog = Catalog(url)
    catalog.batch_reads = True
    catalog.read_batch_in_flight = 1  # (one statement in flight: the rest queue for one)
    yield catalog, url
    catalog.close()
    drop()


class Held:
    """A first look-up held on public_links (which OBJECT joins and a new version does not
    touch), locked by another session, so that look-ups made meanwhile queue."""

    def __init__(self, cat: Catalog, url: str, cid: int, name: str) -> None:
        self.cat = cat
        self.engine = create_engine(url)
        self.conn = self.engine.connect()
        self.conn.execute(text("LOCK TABLE public_links IN ACCESS EXCLUSIVE MODE"))
        self.answers: dict[str, object] = {}
        self.threads: list[threading.Thread] = []
        self.start("first", lambda: cat.object_and_public_token(cid, name))
        assert wait_for(lambda: self.waiting() == 1), "the first look-up never waited"

    def waiting(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'")).scalar_one())

    def start(self, key: str, call: Callable[[], object]) -> None:
        def run() -> None:
            try:
                self.answers[key] = call()
            except Exception as exc:  # (the answer checked is the error itself)
                self.answers[key] = exc

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)

    def release(self) -> None:
        self.conn.commit()
        self.conn.close()
        self.engine.dispose()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads)


def _box(cat: Catalog, account: str) -> int:
    acct = cat.ensure_account(account)
    cat.create_container(acct, "c")
    return cat.container(acct, "c").id


def test_a_batch_answers_each_request_with_what_was_committed_before_it_came(pg):
    cat, url = pg
    mine, theirs = _box(cat, "acct"), _box(cat, "acct2")
    put(cat, mine, "x", b"x1", meta={})
    put(cat, theirs, "x", b"theirs", meta={"user": {"k": "v"}})
    put(cat, mine, "gone", b"g", meta={})
    cat.delete_object(mine, "gone", None)
    put(cat, mine, "meta", b"m", meta={"user": {"b": "2", "a": "1"}})
    at = time.time() + 3600
    put(cat, mine, "expiring", b"e", meta={}, delete_at=at)
    held = Held(cat, url, mine, "x")
    batcher = cat._read_batcher
    assert batcher is not None and batcher.statements == 1
    # Committed while the first look-up is in flight, before these come: theirs to see.
    put(cat, mine, "x", b"x2", meta={})
    put(cat, mine, "new", b"n", meta={})
    asks = {"x": (mine, "x"), "theirs": (theirs, "x"), "gone": (mine, "gone"),
            "missing": (mine, "missing"), "new": (mine, "new"), "meta": (mine, "meta")}
    for key, (cid, name) in asks.items():
        held.start(key, lambda cid=cid, name=name: cat.object_and_public_token(cid, name))
    held.start("before", lambda: cat.object_and_public_token(mine, "expiring", now=at - 1))
    held.start("after", lambda: cat.object_and_public_token(mine, "expiring", now=at + 1))
    assert wait_for(lambda: batcher.queued() == len(asks) + 2), "the look-ups never queued"
    held.release()
    a = held.answers
    # The held one was sent before the new version: either is right for it.
    assert body_of(a["first"]) in (b"x1", b"x2")
    assert body_of(a["x"]) == b"x2"
    assert body_of(a["new"]) == b"n"
    assert body_of(a["theirs"]) == b"theirs" and a["theirs"].version.container_id == theirs
    assert a["theirs"].version.meta == {"user": {"k": "v"}}
    assert a["gone"] is None and a["missing"] is None
    assert a["meta"].version.meta == {"user": {"a": "1", "b": "2"}}
    assert body_of(a["before"]) == b"e" and a["after"] is None
    # One statement for the first, one for all that queued behind it.
    assert (batcher.statements, batcher.items) == (2, len(asks) + 3)


def test_a_failed_batch_runs_each_request_alone(pg):
    """A name the server refuses fails the shared statement: the others still get their
    answers, and the refused one the error its own statement gives."""
    cat, url = pg
    mine = _box(cat, "acct")
    put(cat, mine, "a", b"a", meta={})
    put(cat, mine, "b", b"b", meta={})
    with pytest.raises(Exception) as alone:
        cat.object_and_public_token(mine, "bad\x00name")
    held = Held(cat, url, mine, "a")
    batcher = cat._read_batcher
    held.start("a", lambda: cat.object_and_public_token(mine, "a"))
    held.start("bad", lambda: cat.object_and_public_token(mine, "bad\x00name"))
    held.start("b", lambda: cat.object_and_public_token(mine, "b"))
    assert wait_for(lambda: batcher.queued() == 3), "the look-ups never queued"
    held.release()
    a = held.answers
    assert body_of(a["first"]) == b"a" and body_of(a["a"]) == b"a" and body_of(a["b"]) == b"b"
    assert type(a["bad"]) is alone.type


def test_a_lookup_goes_alone_when_none_is_in_flight():
    """Nothing waits for company: with no statement in flight a look-up is answered by the
    one-object statement at once, and a batch's answers go to their own callers."""
    calls: list[object] = []

    def one(key: int) -> int:
        calls.append(key)
        return key * 10

    def many(keys: list[int]) -> list[int]:
        calls.append(tuple(keys))
        return [k * 10 for k in keys]

    batcher: LookupBatcher[int, int] = LookupBatcher(one, many, max_in_flight=1)
    assert [batcher.fetch(k) for k in (1, 2, 3)] == [10, 20, 30]
    assert calls == [1, 2, 3] and batcher.statements == 3


_GEVENT_SCRIPT = r'''
from gevent import monkey
monkey.patch_all()
import gevent
from gevent.event import Event
from pithos.catalog.pg_read_batch import LookupBatcher

gates = {0: Event(), "many": Event()}
ran = []

def one(k):
    ran.append(("one", k))
    if k in gates:
        gates[k].wait()
    return k * 10

def many(keys):
    ran.append(("many", tuple(keys)))
    gates["many"].wait()
    return [k * 10 for k in keys]

b = LookupBatcher(one, many, max_in_flight=1)
g = {k: gevent.spawn(b.fetch, k) for k in range(5)}
gevent.sleep(0.01)
assert b.queued() == 4, b.queued()
# A request killed (its timeout: a BaseException) while it waits leaves the queue:
# no statement for it.
g[1].kill(gevent.Timeout())
assert b.queued() == 3
gates[0].set()
gevent.sleep(0.01)
assert ran[-1] == ("many", (2, 3, 4)), ran
# The leading request killed mid-statement: the others run their own, one by one.
g[2].kill(gevent.Timeout())
gevent.joinall([g[0], g[3], g[4]], timeout=5)
assert [g[k].value for k in (0, 3, 4)] == [0, 30, 40], [g[k].value for k in g]
assert not g[1].successful() and not g[2].successful(), (g[1].exception, g[2].exception)
assert ("one", 3) in ran and ("one", 4) in ran and ("one", 1) not in ran
assert b.queued() == 0 and b.fetch(7) == 70  # nothing left in flight: it goes at once
print("ok")
'''


def test_killed_requests_leave_the_others_answered_in_a_gevent_worker(tmp_path):
    """Under gevent (a server worker), a request killed while it waits, or while it leads a
    batch, neither hangs the others nor leaves them unanswered."""
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(_GEVENT_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr

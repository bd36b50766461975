"""Shared setup of the tests of concurrent writes on a PostgreSQL catalog
(test_catalog_lock_order.py, test_catalog_one_call_commit.py): a fresh database per test,
a small version's put, writers run together on threads, and the wait for a writer to
block on a row lock another session holds.

Fixtures here are imported by name into the test modules that use them.  A module sets
`PGOPTIONS` to give every session of its tests server options (the planner's choices)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy import text

from pithos.catalog import Catalog
from tests.conftest import postgres_database

ROOT = b"\x01" * 32


@pytest.fixture
def pg_url(request, monkeypatch):
    """A fresh database on the test server (dropped after the test), named after the
    module; its sessions get the module's `PGOPTIONS`, if any."""
    options = getattr(request.module, "PGOPTIONS", None)
    if options:
        monkeypatch.setenv("PGOPTIONS", options)
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_catalog_")
    url, drop = postgres_database(name.replace("_", ""))
    yield url
    drop()


@pytest.fixture
def pg_catalog(pg_url):
    cat = Catalog(pg_url)
    yield cat
    cat.close()


def box(cat: Catalog, account: str = "acct", container: str = "c", **policy) -> int:
    """The id of a new container of a new account."""
    acct = cat.ensure_account(account)
    cat.create_container(acct, container, **policy)
    return cat.container(acct, container).id


def put(cat: Catalog, cid: int, name: str, size: int = 1000, **kw) -> object:
    """A new version of `name`, of `size` bytes (its blocks are not stored: the catalog's
    row alone)."""
    return cat.put_version(cid, name, root=ROOT, size=size, etag="e" * 32,
                           content_type="application/octet-stream", meta={}, **kw)


def run_together(targets: Sequence[Callable[[], object]],
                 beside: Sequence[Callable[[threading.Event], object]] = (),
                 timeout_s: float = 180) -> list[BaseException]:
    """Run each of `targets` on a thread of its own, released at once, with each of `beside`
    running until they are done (it is handed an Event set then); returns what any of them
    raised.  Fails if a thread is still running after `timeout_s`."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets) + len(beside), timeout=60)
    done = threading.Event()

    def run(fn: Callable[..., object], *args: object) -> None:
        try:
            start.wait()
            fn(*args)
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in targets]
    others = [threading.Thread(target=run, args=(b, done), daemon=True) for b in beside]
    for t in [*others, *threads]:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    done.set()
    for t in others:
        t.join(60)
    stuck = [t for t in [*threads, *others] if t.is_alive()]
    assert not stuck, f"{len(stuck)} thread(s) still running after {timeout_s} s"
    return errors


def sessions(conn, where: str, **params: object) -> int:
    """How many sessions pg_stat_activity shows `where` holds.  It is a snapshot taken once
    per transaction, and `conn`'s may stay open: the snapshot is dropped before each look."""
    conn.execute(text("SELECT pg_stat_clear_snapshot()"))
    return conn.execute(text(f"SELECT count(*) FROM pg_stat_activity WHERE {where}"),
                        params).scalar_one()


def start_blocked(conn, work: Callable[[], object], what: str
                  ) -> tuple[threading.Thread, list[BaseException]]:
    """Start `work` on a thread and return (the thread, what it raised) once it waits for a
    row lock, that `conn`'s open transaction holds; fails if it never waits within 30 s
    (it finished, or took no lock `conn` holds)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    waiting = 0
    while not waiting and time.monotonic() < deadline and thread.is_alive():
        waiting = sessions(conn, "datname = current_database() AND wait_event_type = 'Lock'"
                                 " AND pid <> pg_backend_pid()")
        time.sleep(0.02)
    assert waiting, f"the writer never waited for {what}"
    return thread, errors

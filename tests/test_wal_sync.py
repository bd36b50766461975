"""An SQLite catalog write returns only after an fdatasync of the WAL that covers its commit
(pithos/core/wal_sync.py); under gevent that sync runs off the hub and is shared.

The syscall is replaced by a recorder that first notes which objects are committed (a commit
is visible to a new reader once its frames are in the WAL), then syncs: a write is covered by
a sync that saw its object and finished before the write returned."""

import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pithos.catalog import Catalog
from pithos.core.errors import BackendError
from pithos.core.offload import Offload
from tests.test_core_wal_sync import RecordingFsync

ROOT = b"r" * 32


def _catalog(tmp_path, executor):
    path = str(tmp_path / "catalog.sqlite")
    # A cooperative offload: the catalog's paths for an event loop, driven from plain threads.
    offload = None if executor is None else Offload(executor, cooperative=True,
                                                    spawner=executor)
    cat = Catalog(f"sqlite:///{path}", offload=offload)
    recorder = RecordingFsync(path, "objects", "name")
    cat._wal_sync.fsync = recorder
    account = cat.ensure_account("a")
    cat.create_container(account, "c")
    return cat, cat.container(account, "c").id, recorder


def _put(cat, cid, name):
    cat.put_version(cid, name, root=ROOT, size=1, etag="e" * 32,
                    content_type="application/octet-stream", meta={})


@pytest.mark.parametrize("kind", ["inline", "executor"])
def test_each_write_returns_after_a_sync_that_covers_it(tmp_path, kind):
    executor = ThreadPoolExecutor(4) if kind == "executor" else None
    cat, cid, recorder = _catalog(tmp_path, executor)
    uncovered = []

    def writer(w):
        for i in range(12):
            name = f"o-{w}-{i}"
            _put(cat, cid, name)
            if not recorder.covered(name):
                uncovered.append(name)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert uncovered == []
    # Other writes of the catalog go through the same path.
    before = len(recorder.done)
    cat.update_object_meta(cid, "o-0-0", {"user": {"k": "v"}}, delete_at=None)
    assert len(recorder.done) > before
    cat.close()
    if executor:
        executor.shutdown()


def test_a_failed_sync_fails_the_write_and_the_next_one_syncs_again(tmp_path):
    executor = ThreadPoolExecutor(2)
    cat, cid, recorder = _catalog(tmp_path, executor)
    recorder.fail_next = True
    with pytest.raises(BackendError, match=r"could not sync its WAL: .*injected") as failed:
        _put(cat, cid, "unsynced")
    assert isinstance(failed.value.__cause__, OSError)
    _put(cat, cid, "synced")
    assert recorder.covered("synced")
    cat.close()
    executor.shutdown()


def test_a_new_wal_file_is_synced_not_the_deleted_one(tmp_path):
    cat, cid, recorder = _catalog(tmp_path, None)
    _put(cat, cid, "first")
    wal = str(tmp_path / "catalog.sqlite-wal")
    # The last connection closing checkpoints (synced: NORMAL) and deletes the WAL.
    cat.engine.dispose()
    cat._lease_engine.dispose()
    assert not os.path.exists(wal)
    cat._wal_sync.sync()  # nothing to sync: no error
    _put(cat, cid, "second")  # a new WAL; the recorder asserts the fd is of the current one
    assert recorder.covered("second")
    cat.close()


def test_every_connection_checkpoints_with_syncs(tmp_path):
    """A connection with synchronous=OFF could checkpoint acknowledged commits into a database
    file it never syncs, after which the WAL may be overwritten: none has it."""
    cat = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite")
    for engine in (cat.engine, cat._lease_engine):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    cat.close()


def test_under_gevent_the_syncs_leave_the_hub_free_and_are_shared(tmp_path):
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import os, time
        import gevent
        from gevent.monkey import get_original
        from pithos.catalog import Catalog
        from pithos.core.offload import Offload

        path = "{tmp_path}/catalog.sqlite"
        catalog = Catalog("sqlite:///" + path, offload=Offload.gevent(4))
        calls = []
        blocking_sleep = get_original("time", "sleep")
        def slow_fsync(fd):  # blocks its thread as a real sync does: the hub, if run there
            calls.append(1)
            blocking_sleep(0.05)
            os.fdatasync(fd)
        catalog._wal_sync.fsync = slow_fsync
        account = catalog.ensure_account("a")
        catalog.create_container(account, "c")
        cid = catalog.container(account, "c").id
        calls.clear()
        ticks = []
        def ticker():
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                ticks.append(1)
                gevent.sleep(0.01)
        def put(i):
            catalog.put_version(cid, f"o{{i}}", root=b"r" * 32, size=1, etag="e" * 32,
                                content_type="x/y", meta={{}})
        ticking = gevent.spawn(ticker)
        gevent.joinall([gevent.spawn(put, i) for i in range(16)], raise_error=True)
        ticking.join()
        print(len(calls), len(ticks))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    syncs, ticks = map(int, out.stdout.split())
    # 16 writes share a few syncs (each sync covers every commit made before it started) ...
    assert 1 <= syncs <= 8, syncs
    # ... and the hub kept running the ticker through them (a sync on the hub would stop it
    # for 50 ms each).
    assert ticks >= 25, ticks

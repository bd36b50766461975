"""Locks that a server worker's greenlets and its pool threads both take are native
(pithos/core/locks.py, docs/design.md "Where blocking work runs").

After gevent's monkey patching, `threading.Lock()` is gevent's, and pool threads contending
for one lose wakeups: a waiter sleeps until something else wakes its thread's hub (a first
sync stalled 120 s so).  Each test runs a worker's setting in a child process (patch_all,
`Offload.gevent`, the pool driven from greenlets of the hub, as `pithos serve` does) and
bounds every wait, so that a lock gone back to gevent's fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                         capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


# The lock hammer: 8 pool threads and 4 greenlets take the lock in turn, the threads holding
# it across a blocking sleep (so that others queue up).  With gevent's lock some of them are
# never woken (measured: 1 of 8 tasks finished in 30 s); with a native one all finish in
# well under a second.  A lock a test names is hammered for at most 20 s.
_HAMMER = """
from gevent import monkey
monkey.patch_all()
import os, sys
import gevent
from gevent.monkey import get_original
from pithos.core.offload import Offload

offload = Offload.gevent(8)
blocking_sleep = get_original("time", "sleep")

def hammer(lock, bound_s=20):
    count = [0]
    def thread_task():
        for _ in range(100):
            with lock:
                count[0] += 1
                blocking_sleep(0.0002)
    def greenlet_task():
        for _ in range(100):
            with lock:
                count[0] += 1
            gevent.sleep(0)
    tasks = [offload.pool.submit(thread_task) for _ in range(8)]
    tasks += [gevent.spawn(greenlet_task) for _ in range(4)]
    done = gevent.wait(tasks, timeout=bound_s)
    return len(done) == len(tasks) and count[0] == 1200

def report(locks, bound_s=20):
    stuck = [name for name, lock in locks.items() if not hammer(lock, bound_s)]
    print(f"{len(locks)} stuck:" + ",".join(stuck), flush=True)
    os._exit(0)  # (a thread stuck on a lock must not hold the exit)
"""


def test_the_hammer_finds_a_gevent_lock():
    """The hammer itself: a lock made by threading.Lock() after the patch is caught."""
    out = _run(_HAMMER + """
import threading
report({"gevent": threading.Lock(), "native": get_original("_thread", "allocate_lock")()},
       bound_s=5)
""")
    assert out.strip() == "2 stuck:gevent"


def test_the_locks_pool_threads_take_are_native(tmp_path):
    """Every lock of the audit that pool threads may take, on the objects a worker builds."""
    out = _run(_HAMMER + """
from pithos.api.body import PieceBuffers
from pithos.blocker import Blocker, LocalBlockStore
from pithos.blocker.memory import MemoryBlockStore
from pithos.catalog import Catalog
from pithos.core.hashing import block_hash
from pithos.identity import Identity
from pithos.mapper import Mapper

data = sys.argv[1]
store = LocalBlockStore(data + "/blocks", offload=offload)
small = [bytes([i]) * 1000 for i in range(8)]
store.put_many([(block_hash(b), b) for b in small])  # five or more small blocks: packed
packs = store._packs
blocker = Blocker(store, offload=offload)
blocker.read_range_into(block_hash(small[0]), 0, memoryview(bytearray(10)))
catalog = Catalog("sqlite:///" + data + "/catalog.sqlite", offload=offload)
locks = {
    "Packs._append_lock": packs._append_lock,
    "Packs._conns_lock": packs._conns_lock,
    "Packs WalSync": packs._wal_sync._group.lock,
    "LocalBlockStore SharedSyncfs": store._shared_syncfs._group.lock,
    "Blocker._ranges_lock": blocker._ranges_lock,
    "VerifiedRanges._lock": blocker._ranges._lock,
    "Mapper._lock": Mapper(blocker)._lock,
    "MemoryBlockStore._lock": MemoryBlockStore()._lock,
    "Catalog WalSync": catalog._wal_sync._group.lock,
    "Identity._lock": Identity(catalog, offload=offload)._lock,
    "PieceBuffers._lock": PieceBuffers(4096, 2)._lock,
}
conf = os.environ.get("PITHOS_CEPH_CONF")
if conf and os.path.exists(conf):
    from pithos.blocker.rados import RadosBlockStore
    rados_store = RadosBlockStore(os.environ.get("PITHOS_CEPH_POOL", "pithos"), conf,
                                  namespace="test-gevent-locks", offload=offload,
                                  connect_timeout_s=10)
    locks["RadosBlockStore._quarantine_lock"] = rados_store._quarantine_lock
report(locks)
""", str(tmp_path))
    count, stuck = out.split()
    assert stuck == "stuck:", out
    # (All ten named, and the RADOS store's when the cluster is there.)
    assert int(count) == (12 if os.path.exists(os.environ.get("PITHOS_CEPH_CONF", "-")) else 11)


def test_packed_puts_from_many_greenlets_all_finish(tmp_path):
    """End to end, as a worker stores small blocks: greenlets put batches of small blocks
    (packed, on the pool's threads: the pack's append lock, the index's WAL sync) and read
    them back; every one finishes within the bound."""
    out = _run("""
from gevent import monkey
monkey.patch_all()
import os, sys
import gevent
from pithos.blocker import LocalBlockStore
from pithos.core.hashing import block_hash
from pithos.core.offload import Offload

offload = Offload.gevent(8)
store = LocalBlockStore(sys.argv[1], offload=offload)

def writer(w):
    for i in range(15):
        batch = [b"%d-%d-%d " % (w, i, j) * 40 for j in range(6)]
        hashes = [block_hash(b) for b in batch]
        store.put_many(list(zip(hashes, batch)))
        assert store.get_many(hashes) == batch

writers = [gevent.spawn(writer, w) for w in range(24)]
done = gevent.wait(writers, timeout=60)
failed = [g.exception for g in writers if g.ready() and not g.successful()]
print(len(done), len(writers), failed, flush=True)
os._exit(0)
""", str(tmp_path / "blocks"))
    done, total, failed = out.split(maxsplit=2)
    assert failed.strip() == "[]"
    assert done == total, f"{done} of {total} writers finished: a lost wakeup"


def test_a_pool_thread_syncing_a_wal_beside_the_hub_never_waits_on_the_hub_s_future(tmp_path):
    """The catalog's WAL group commit (pithos/core/wal_sync.py) has the hub's pool as its
    executor: greenlets wait for the sync's future on the hub.  A commit made on a pool
    thread meanwhile syncs on its own thread, under the native lock, and never waits on that
    future (from a pool thread such a wait can lose its wakeup)."""
    out = _run("""
from gevent import monkey
monkey.patch_all()
import os, sys
import gevent
from gevent.monkey import get_original
from pithos.core.offload import Offload
from pithos.core.wal_sync import WalSync

offload = Offload.gevent(8)
wal = sys.argv[1]
open(wal, "wb").close()
blocking_sleep = get_original("time", "sleep")

def slow_fsync(fd):
    blocking_sleep(0.002)  # a sync long enough for others to find it in flight
    os.fdatasync(fd)

sync = WalSync(wal, offload.pool, fsync=slow_fsync)

def hub_committer():
    for _ in range(60):
        sync.sync()

def thread_committer():
    for _ in range(60):
        sync.sync()

tasks = [gevent.spawn(hub_committer) for _ in range(4)]
tasks += [offload.pool.submit(thread_committer) for _ in range(6)]
done = gevent.wait(tasks, timeout=60)
print(len(done), len(tasks), flush=True)
os._exit(0)
""", str(tmp_path / "catalog.db-wal"))
    done, total = out.split()
    assert done == total, f"{done} of {total} committers finished: a lost wakeup"

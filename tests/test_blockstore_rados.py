"""RadosBlockStore against a real Ceph cluster: the unchanged contract suite, then what is
particular to RADOS.

The cluster is the one `scripts/ceph up` makes (scripts/test starts it); PITHOS_CEPH_CONF and
PITHOS_CEPH_POOL point elsewhere.  Without the `rados` module or a reachable cluster these tests
skip, which CI (PITHOS_REQUIRE_ALL=1) turns into a failure.  Each test gets a fresh RADOS
namespace, emptied afterwards, so tests never see each other's blocks.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest

from pithos.core.errors import BackendError, NotFound
from tests.blocker_contract import BlockStoreContract, blob
from tests.conftest import CEPH_CONF as CONF
from tests.conftest import CEPH_POOL as POOL


@pytest.fixture
def namespace(cluster):
    """A namespace of the test's own, emptied when the test ends."""
    from pithos.blocker.rados import QUARANTINE_SUFFIX

    ns = f"test-{uuid.uuid4().hex}"
    yield ns
    ioctx = cluster.open_ioctx(POOL)
    for used in (ns, ns + QUARANTINE_SUFFIX):
        ioctx.set_namespace(used)
        for completion in [ioctx.aio_remove(obj.key) for obj in ioctx.list_objects()]:
            completion.wait_for_complete()
    ioctx.close()


@pytest.fixture
def make_store(namespace):
    from pithos.blocker.rados import RadosBlockStore

    stores = []

    def make(**kwargs):
        kwargs.setdefault("namespace", namespace)
        store = RadosBlockStore(POOL, CONF, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


class TestRadosBlockStore(BlockStoreContract):
    @pytest.fixture
    def store(self, make_store):
        return make_store()


def test_batches_of_200_blocks_through_aio(make_store):
    store = make_store(queue_depth=8)
    items = [blob(65_536) for _ in range(200)]
    store.put_many(items)
    hashes = [h for h, _ in items]
    assert store.missing(hashes) == []
    assert store.get_many(hashes) == [d for _, d in items]
    assert [h for h, _ in store.iterate()] == sorted(hashes)
    assert all(age is not None and age < 60 for age in store.age_s(hashes))
    store.put_many(items)  # all present: refreshes only
    assert store.delete_many(hashes + hashes) == 200
    assert store.missing(hashes) == hashes
    assert list(store.iterate()) == []


def test_a_present_block_is_not_rewritten(make_store):
    store = make_store()
    h, data = blob(5000)
    store.put_many([(h, data)])
    time.sleep(0.3)
    (before,) = store.age_s([h])
    # Bytes of the same size are not sent again, nor compared: the put only refreshes.  (Of
    # another size they would replace the block as damaged: the caller vouches for them.)
    store.put_many([(h, bytes(len(data)))])
    assert store.get_many([h]) == [data]
    (after,) = store.age_s([h])
    assert before is not None and before >= 0.3
    assert after is not None and after < before


def test_blocks_larger_than_the_first_read(make_store):
    store = make_store(read_size=1000)
    items = [blob(n) for n in (999, 1000, 1001, 5000)]
    store.put_many(items)
    assert store.get_many([h for h, _ in items]) == [d for _, d in items]
    h, data = items[-1]
    assert store.read(h, 500, 3000) == data[500:3500]
    assert store.read(h, 0, 10_000) == data


def test_empty_block(make_store):
    store = make_store()
    h, data = blob(0)
    store.put_many([(h, data)])
    assert store.get_many([h]) == [b""]
    assert store.read(h, 0, 10) == b""
    assert list(store.iterate()) == [(h, 0)]
    with pytest.raises(NotFound):
        store.read(blob()[0], 0, 0)  # length 0: still NotFound when absent


def test_objects_that_are_not_blocks_are_not_listed(make_store, cluster, namespace):
    store = make_store()
    h, data = blob()
    store.put_many([(h, data)])
    ioctx = cluster.open_ioctx(POOL)
    ioctx.set_namespace(namespace)
    ioctx.write_full("volume-head", b"x")
    ioctx.write_full(h.hex().upper(), b"x")
    ioctx.write_full(h.hex()[:-1], b"x")
    ioctx.close()
    assert list(store.iterate()) == [(h, len(data))]


def test_namespaces_are_separate_stores(make_store, namespace):
    first = make_store()
    second = make_store(namespace=namespace + "-other")
    a = blob()
    first.put_many([a])
    assert second.missing([a[0]]) == [a[0]]
    assert list(second.iterate()) == []
    second.delete_many([a[0]])
    assert first.get_many([a[0]]) == [a[1]]


def test_blocks_survive_a_new_connection(make_store):
    items = [blob(n) for n in (10, 70_000)]
    make_store().put_many(items)
    assert make_store().get_many([h for h, _ in items]) == [d for _, d in items]


def test_a_missing_pool_is_a_permanent_error(cluster):
    from pithos.blocker.rados import RadosBlockStore

    with pytest.raises(BackendError) as info:
        RadosBlockStore(f"no-such-pool-{uuid.uuid4().hex}", CONF)
    assert info.value.transient is False


def test_an_unreachable_cluster_is_a_transient_error(cluster, tmp_path):
    from pithos.blocker.rados import RadosBlockStore

    conf = tmp_path / "ceph.conf"
    # Same keys, but a monitor address where nothing listens.
    with open(CONF) as f:
        conf.write_text(f.read().replace("mon_host =", "mon_host = v2:127.0.0.1:9 #"))
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        RadosBlockStore(POOL, conf, connect_timeout_s=2)
    assert info.value.transient is True
    assert time.monotonic() - start < 30


def _ceph(*args: str) -> None:
    subprocess.run(["ceph", "-c", CONF, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def paused_cluster(cluster):
    """`ceph osd pause`: clients hold every op, which then times out (ETIMEDOUT, a transient
    error).  Unpaused at the end whatever happens."""
    _ceph("osd", "pause")
    cluster.wait_for_latest_osdmap()
    try:
        yield
    finally:
        _ceph("osd", "unpause")


def test_transient_errors_are_retried(make_store, paused_cluster, cluster):
    store = make_store(op_timeout_s=1, retries=6, retry_delay_s=0.2)
    store._cluster.wait_for_latest_osdmap()
    items = [blob() for _ in range(5)]
    unpause = threading.Timer(1.5, _ceph, ("osd", "unpause"))
    unpause.start()
    try:
        store.put_many(items)  # times out at least once, then gets through
    finally:
        unpause.join()
    assert store.retried_ops >= len(items)
    assert store.get_many([h for h, _ in items]) == [d for _, d in items]


def test_retries_are_bounded(make_store, paused_cluster):
    store = make_store(op_timeout_s=1, retries=2, retry_delay_s=0.1)
    store._cluster.wait_for_latest_osdmap()
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        store.put_many([blob()])
    assert info.value.transient is True
    assert store.retried_ops == 2
    assert time.monotonic() - start < 10
    with pytest.raises(BackendError) as info:
        make_store(op_timeout_s=1, retries=0).missing([blob()[0]])
    assert info.value.transient is True


def test_rados_is_imported_lazily():
    """The package, this module included, imports on a machine without Ceph; making a store
    there is a clear, permanent BackendError."""
    code = (
        "import sys\n"
        "sys.modules['rados'] = None  # as if python3-rados were not installed\n"
        "import pithos.blocker, pithos.blocker.rados\n"
        "from pithos.core.errors import BackendError\n"
        "try:\n"
        "    pithos.blocker.rados.RadosBlockStore('pool', '/nonexistent/ceph.conf')\n"
        "except BackendError as exc:\n"
        "    assert not exc.transient and 'python3-rados' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('made a store without rados')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    code = "import sys, pithos.blocker.rados; assert 'rados' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

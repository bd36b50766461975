"""RadosBlockStore's conditional delete (`delete_if_put_before`): one write op per block that
compares the put time on the OSD and removes the object only if it is older.  The contract
suite (tests/blocker_contract.py, run by test_blockstore_rados.py) tests what every store
shares; these test what is particular to RADOS.  They need the cluster of `scripts/ceph up`."""

from __future__ import annotations

import time
import uuid

import pytest

from pithos.core.errors import InvalidArgument
from tests.blocker_contract import blob, cutoff_between
from tests.conftest import CEPH_CONF as CONF
from tests.conftest import CEPH_POOL as POOL


@pytest.fixture
def ioctx(cluster):
    """A raw handle on a namespace of the test's own, emptied when the test ends."""
    io = cluster.open_ioctx(POOL)
    io.set_namespace(f"test-{uuid.uuid4().hex}")
    yield io
    for completion in [io.aio_remove(obj.key) for obj in io.list_objects()]:
        completion.wait_for_complete()
    io.close()


@pytest.fixture
def make_store(ioctx):
    from pithos.blocker.rados import RadosBlockStore

    stores = []

    def make():
        store = RadosBlockStore(POOL, CONF, namespace=ioctx.get_namespace())
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_an_object_without_a_put_time_is_never_removed(make_store, ioctx):
    store = make_store()
    h, data = blob()
    ioctx.write_full(h.hex(), data)  # named as a block, not put by a store: no put time
    assert store.delete_if_put_before([h], time.time() + 60) == []
    assert store.get_many([h]) == [data]
    assert store.delete_many([h]) == 1  # an unconditional delete still removes it


def test_the_cutoff_is_compared_as_a_number(make_store):
    # omap_cmp compares bytes: a cutoff with fewer digits than the put times would compare
    # wrong ("5000000000" > "17..."), so it is written with as many digits as they have.
    store = make_store()
    h, data = blob()
    store.put_many([(h, data)])
    assert store.delete_if_put_before([h], 5.0) == []
    assert store.delete_if_put_before([h], 0.0) == []
    with pytest.raises(InvalidArgument):
        store.delete_if_put_before([h], 1e10)  # the year 2286: put times have more digits
    assert store.get_many([h]) == [data]


def test_a_refresh_through_another_connection_keeps_the_block(make_store):
    # The compare runs on the OSD, so it sees a refresh made by any client.
    store, other = make_store(), make_store()
    a, b = blob(), blob()
    store.put_many([a, b])
    cutoff = cutoff_between()
    assert other.touch_many([a[0]]) == []
    assert store.delete_if_put_before([a[0], b[0]], cutoff) == [b[0]]
    assert other.get_many([a[0]]) == [a[1]]
    assert other.missing([b[0]]) == [b[0]]

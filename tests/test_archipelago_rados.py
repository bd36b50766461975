"""Volumes with heads and deltas in RADOS (archipelago/rados/) against the real Ceph cluster.

A "host" is a `Volumes` object with a RADOS connection of its own (another client of the
cluster, as another machine would be) and a data directory of its own.  Without the `rados`
module or a reachable cluster these tests skip, which CI (PITHOS_REQUIRE_ALL=1) turns into a
failure.  Each test gets fresh namespaces (blocks in NS, volumes in NS.volumes), emptied
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from conftest import readable
from hypothesis import HealthCheck, settings

from archipelago import LeaseLost, Volumes, gc_roots
from archipelago.rados import (
    CHUNK_SIZE,
    RadosDeltaStore,
    RadosHeadStore,
    RadosPool,
    open_rados_stores,
    volumes_namespace,
)
from pithos.blocker import Blocker, MemoryBlockStore
from pithos.core.errors import Conflict, InvalidArgument, NotFound, VersionConflict
from tests.conftest import CEPH_CONF as CONF
from tests.conftest import CEPH_POOL as POOL
from tests.test_archipelago_volumes import VolumeMachine

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB
LEASE_S = 3  # short leases, so that the expiry tests wait little



def purge(cluster, namespace: str) -> None:
    ioctx = cluster.open_ioctx(POOL)
    ioctx.set_namespace(namespace)
    for completion in [ioctx.aio_remove(obj.key) for obj in ioctx.list_objects()]:
        completion.wait_for_complete()
    ioctx.close()


def objects(cluster, namespace: str) -> list[str]:
    ioctx = cluster.open_ioctx(POOL)
    ioctx.set_namespace(namespace)
    try:
        return sorted(obj.key for obj in ioctx.list_objects())
    finally:
        ioctx.close()


def mon(cluster, **cmd) -> tuple[int, str]:
    code, out, status = cluster.mon_command(json.dumps(cmd), b"")
    return code, out.decode() or status


def blocklisted(cluster) -> set[str]:
    """The client addresses on the OSD blocklist (`ceph osd blocklist ls`)."""
    code, out = mon(cluster, prefix="osd blocklist ls", format="json")
    assert code == 0, out
    # Pacific answers two JSON documents back to back: the addresses, then the ranges.
    entries, _ = json.JSONDecoder().raw_decode(out)
    return {e["addr"] for e in entries}


def unblock(cluster, *addrs: str) -> None:
    """Take a test's clients off the blocklist (an entry lasts an hour otherwise)."""
    for addr in addrs:
        code, out = mon(cluster, prefix="osd blocklist", blocklistop="rm", addr=addr)
        assert code == 0, out


@pytest.fixture
def namespace(cluster):
    ns = f"test-{uuid.uuid4().hex}"
    yield ns
    purge(cluster, ns)
    purge(cluster, volumes_namespace(ns))


@pytest.fixture
def url(namespace):
    return f"rados://{POOL}?conf={CONF}&namespace={namespace}"


@pytest.fixture
def hosts(tmp_path, url, cluster):
    """hosts(lease_s=None, lease_wait_s=0): a new host over the cluster (Volumes.at, or the
    same stores with a short lease); all closed at the end, and taken off the blocklist (a
    host that took a volume over from another fenced it)."""
    made: list[Volumes] = []

    def make(lease_s: int | None = None, lease_wait_s: float = 0.0) -> Volumes:
        data_dir = str(tmp_path / f"host-{len(made)}")
        if lease_s is None:
            vols = Volumes.at(data_dir, url, lease_wait_s=lease_wait_s)
        else:
            from pithos.blocker.urls import open_block_store

            heads, deltas = open_rados_stores(url, lease_s=lease_s)
            vols = Volumes(Blocker(open_block_store(url)), heads, deltas, lease_wait_s)
        made.append(vols)
        return vols

    yield make
    for vols in made:
        with contextlib.suppress(Exception):
            vols.close()
    unblock(cluster, *(vols.heads.pool.addr for vols in made))


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed + i * 13) & 0xFF for i in range(n))


# -- the volume API across hosts ---------------------------------------------------------------

def test_create_write_flush_reopen_on_another_host(hosts, cluster, namespace):
    a, b = hosts(), hosts()
    size = 3 * CHUNK_SIZE
    a.create("disk", size, block_size=BS)
    model = bytearray(size)
    with contextlib.closing(a.open("disk")) as vol:
        for off, data in [(5, b"a" * 10), (4090, b"b" * 20), (CHUNK_SIZE - 3000, pattern(1, 9000)),
                          (2 * CHUNK_SIZE - 5000, pattern(2, 10_000)),
                          (size - 7, b"tail!!!")]:
            vol.write(off, data)
            model[off:off + len(data)] = data
        vol.zero(100_000, 300_000)  # partial sectors at both ends
        model[100_000:400_000] = bytes(300_000)
        vol.zero(2 * CHUNK_SIZE, CHUNK_SIZE)  # a whole chunk: its object goes
        model[2 * CHUNK_SIZE:3 * CHUNK_SIZE] = bytes(CHUNK_SIZE)
        assert vol.read(0, size) == model
        vol.flush()
    assert [h.name for h in b.list()] == ["disk"]
    with contextlib.closing(b.open("disk")) as vol:
        assert vol.read(0, size) == model
    chunks = [o for o in objects(cluster, volumes_namespace(namespace)) if o.startswith("data/")]
    assert chunks == ["data/disk/0/00000000", "data/disk/0/00000001"]


def test_snapshot_clone_resize_delete_across_hosts(hosts, cluster, namespace, tmp_path, url):
    a, b = hosts(), hosts()
    a.create("v", 1 * MiB, block_size=BS)
    first = os.urandom(1 * MiB)
    with contextlib.closing(a.open("v")) as vol:
        vol.write(0, first)
    snap = b.snapshot("v", "v-1")  # on the other host: flush there, fold, move the head
    assert snap.readonly and a.get("v").generation == 1
    with contextlib.closing(a.open("v-1")) as s:
        assert s.read(0, 1 * MiB) == first
    a.clone("v-1", "c")
    with contextlib.closing(b.open("c")) as c:
        c.write(10, b"clone")
        assert c.read(0, 20) == first[:10] + b"clone" + first[15:20]
    with contextlib.closing(a.open("v")) as vol:  # the volume goes on over its snapshot
        assert vol.read(0, 1 * MiB) == first
        vol.write(0, b"after")
    with contextlib.closing(b.open("v-1")) as s:
        assert s.read(0, 5) == first[:5]
    b.resize("c", 3 * MiB)
    with pytest.raises(InvalidArgument):
        a.resize("c", 2 * MiB)
    with contextlib.closing(a.open("c")) as c:
        assert c.size == 3 * MiB
        assert c.read(0, 20) == first[:10] + b"clone" + first[15:20]
        assert c.read(1 * MiB, 2 * MiB) == bytes(2 * MiB)
        c.write(3 * MiB - 5, b"12345")
    assert set(gc_roots(str(tmp_path / "elsewhere"), url)) == {bytes.fromhex(snap.root)}
    assert set(b.gc_roots()) == {bytes.fromhex(snap.root)}
    b.delete("v-1")  # the clone names the map, not the snapshot's head
    with contextlib.closing(a.open("c")) as c:
        assert c.read(0, 5) == first[:5]
    a.delete("c")
    b.delete("v")
    assert a.list() == [] and b.list() == []
    assert objects(cluster, volumes_namespace(namespace)) == ["index"]


def test_second_writer_is_refused(hosts):
    a, b = hosts(), hosts()
    a.create("v", 1 * MiB, block_size=BS)
    vol = a.open("v")
    with pytest.raises(Conflict):
        b.open("v")
    with pytest.raises(Conflict):
        a.open("v")  # a second writer in the same process too
    with pytest.raises(Conflict):
        b.delete("v")
    with pytest.raises(Conflict):
        b.snapshot("v", "s")
    vol.write(0, b"mine")
    vol.close()
    with contextlib.closing(b.open("v")) as again:
        assert again.read(0, 4) == b"mine"


def test_a_stale_token_cannot_write(hosts):
    a, b = hosts(), hosts()
    a.create("v", 1 * MiB, block_size=BS)
    vol = a.open("v")
    vol.write(0, b"first")
    vol.flush()
    # Another host fences the writer (an administrator, or a migration): the token moves on.
    head = b.heads.get("v")
    b.heads.put(head.replace(token=head.token + 1), head.version)
    with pytest.raises(LeaseLost):
        vol.write(0, b"stale")
    with pytest.raises(LeaseLost):
        vol.zero(0, 4096)
    with pytest.raises(LeaseLost):
        vol.flush()
    vol.lease.release()
    vol.delta.close()
    with contextlib.closing(b.open("v")) as again:
        assert again.read(0, 5) == b"first"


def test_a_holder_that_stops_renewing_loses_its_lease(hosts, cluster):
    a = hosts(lease_s=LEASE_S)
    b = hosts(lease_s=LEASE_S, lease_wait_s=LEASE_S + 5)
    a.create("v", 1 * MiB, block_size=BS)
    vol = a.open("v")
    vol.write(0, b"before")
    a.heads._stop.set()  # its renewals stop (a host cut off from the cluster)
    start = time.monotonic()
    with contextlib.closing(b.open("v")) as taken:  # waits until the lock expires
        assert time.monotonic() - start >= LEASE_S - 1
        assert a.heads.pool.addr in blocklisted(cluster)  # it never released: fenced
        with pytest.raises(LeaseLost):
            vol.write(0, b"late")
        taken.write(0, b"taken")
    with pytest.raises(LeaseLost):
        vol.flush()
    vol.lease.release()
    vol.delta.close()


def test_renewal_keeps_an_idle_lease(hosts):
    a, b = hosts(lease_s=LEASE_S), hosts(lease_s=LEASE_S)
    a.create("v", 1 * MiB, block_size=BS)
    with contextlib.closing(a.open("v")) as vol:
        time.sleep(2.5 * LEASE_S)  # idle, longer than a lease
        with pytest.raises(Conflict):
            b.open("v")
        vol.write(0, b"still mine")


CRASHER = textwrap.dedent("""
    import sys
    from archipelago import Volumes
    from archipelago.rados import open_rados_stores
    from pithos.blocker import Blocker
    from pithos.blocker.urls import open_block_store
    url, lease_s = sys.argv[1], int(sys.argv[2])
    heads, deltas = open_rados_stores(url, lease_s=lease_s)
    vols = Volumes(Blocker(open_block_store(url)), heads, deltas)
    vol = vols.open("v")
    vol.write(0, b"A" * 8192)
    vol.write(6 * 1024 * 1024 + 100, b"B" * 5000)
    vol.flush()
    vol.write(8192, b"C" * 8192)      # never flushed
    vol.write(0, b"D" * 4096)         # over a durably marked sector: reads new or old
    vol.write(9 * 1024 * 1024, b"E" * 4096)  # a chunk first written after the flush
    vol.delta._wait_seq(vol.delta._seq)  # the data reached the OSD; its bits never will
    print("ready", heads.pool.addr, flush=True)
    sys.stdin.read()
""")


def test_kill_9_after_flush_loses_nothing_and_the_lease_expires(hosts, url, cluster):
    a = hosts()
    a.create("v", 12 * MiB, block_size=BS)
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, url, str(LEASE_S)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dead = ""
    try:
        line = proc.stdout.readline() if readable(proc.stdout, 60) else b""
        assert line.startswith(b"ready "), proc.stderr.read1().decode()
        dead = line.split()[1].decode()
        with pytest.raises(Conflict):
            a.open("v")  # the holder is alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
    b = hosts(lease_wait_s=LEASE_S + 10)
    start = time.monotonic()
    try:
        vol = b.open("v")  # once the dead holder's lock expires; it is fenced (harmless)
        assert dead in blocklisted(cluster)
    finally:
        unblock(cluster, dead)
    with contextlib.closing(vol):
        assert time.monotonic() - start < LEASE_S + 10
        got = vol.read(0, 16384)
        assert got[:4096] in (b"D" * 4096, b"A" * 4096)
        assert got[4096:8192] == b"A" * 4096
        assert got[8192:] in (b"C" * 8192, bytes(8192))
        assert vol.read(6 * MiB + 100, 5000) == b"B" * 5000
        # Unflushed data under clear bits was repaired away: a partial write there shows
        # zeros around it, not the dead writer's bytes.
        assert vol.read(9 * MiB, 4096) == bytes(4096)
        vol.write(9 * MiB + 10, b"xy")
        assert vol.read(9 * MiB, 16) == bytes(10) + b"xy" + bytes(4)
        if got[8192:] == bytes(8192):
            vol.write(8192 + 1, b"z")
            assert vol.read(8192, 4) == b"\0z\0\0"


def test_unflushed_writes_are_repaired_on_open(hosts):
    """As tests/test_archipelago_volumes.py, in process: the data of writes whose bits never
    became durable must not show through (reads past the base read the delta directly)."""
    a = hosts()
    a.create("v", 8 * MiB, block_size=BS)
    vol = a.open("v")
    vol.write(0, b"a" * 8192)
    vol.flush()
    vol.write(8192, b"b" * 8192)
    vol.write(5 * MiB, b"c" * 100)  # a new chunk: only its intent is durable
    vol.delta.close()  # kill -9: no flush
    vol.lease.release()
    with contextlib.closing(a.open("v")) as again:
        assert again.read(0, 8192) == b"a" * 8192
        assert again.read(8192, 8192) == bytes(8192)
        assert again.read(5 * MiB, 4096) == bytes(4096)
        again.write(5 * MiB + 200, b"d")
        assert again.read(5 * MiB, 4096) == bytes(200) + b"d" + bytes(3895)


def test_trim_frees_space_and_objects(hosts, cluster, namespace):
    a = hosts()
    a.create("v", 16 * MiB, block_size=BS)
    with contextlib.closing(a.open("v")) as vol:
        vol.write(0, os.urandom(8 * MiB))
        vol.flush()
        full = a.deltas.allocated_bytes("v", 0)
        vol.zero(0, 8 * MiB)
        vol.flush()
        assert vol.read(0, 8 * MiB) == bytes(8 * MiB)
        vol.write(CHUNK_SIZE + 4096, b"x" * 4096)
        vol.zero(CHUNK_SIZE, 3 * 4096)  # zero op inside a chunk: the object is truncated
        assert vol.read(CHUNK_SIZE, 3 * 4096) == bytes(3 * 4096)
    assert full >= 8 * MiB
    assert a.deltas.allocated_bytes("v", 0) < 64 * KiB


def test_threads_share_one_open_volume(hosts):
    """As the NBD server's connections do: writes, zeroes, reads and flushes from several
    threads through one Volume, then the content on another host."""
    import random
    import threading

    a, b = hosts(), hosts()
    size = 16 * MiB
    a.create("v", size, block_size=BS)
    model = bytearray(size)
    vol = a.open("v")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        rng = random.Random(k)
        lo, hi = k * size // 4, (k + 1) * size // 4  # each thread its own quarter
        try:
            for i in range(60):
                off = rng.randrange(lo, hi - 1)
                n = min(rng.randrange(1, 300 * KiB), hi - off)
                if i % 7 == 3:
                    vol.zero(off, n)
                    model[off:off + n] = bytes(n)
                else:
                    data = pattern(k * 100 + i, n)
                    vol.write(off, data, fua=i % 11 == 5)
                    model[off:off + n] = data
                if i % 5 == 0:
                    assert vol.read(off, n) == model[off:off + n]
                if i % 13 == 0:
                    vol.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    vol.close()
    with contextlib.closing(b.open("v")) as again:
        assert again.read(0, size) == model


def test_head_compare_and_swap_and_index(hosts):
    a, b = hosts(), hosts()
    head = a.create("v", 1 * MiB, block_size=BS)
    assert head.version == 1
    moved = b.heads.put(head.replace(size=2 * MiB), head.version)
    assert moved.version == 2 and a.get("v").size == 2 * MiB
    with pytest.raises(VersionConflict):
        a.heads.put(head.replace(size=3 * MiB), head.version)
    with pytest.raises(VersionConflict):
        a.create("v", 1 * MiB, block_size=BS)
    with pytest.raises(VersionConflict):
        a.heads.delete("v", head.version)
    with pytest.raises(NotFound):
        a.heads.delete("nope", 1)
    with pytest.raises(NotFound):
        a.open("nope")
    # A crash between indexing a name and creating its head leaves a key names() skips.
    a.heads._index_add("ghost", "n0")
    assert a.heads.names() == ["v"]
    a.create("ghost", 1 * MiB, block_size=BS)
    assert b.heads.names() == ["ghost", "v"]
    b.heads.delete("v", 2)
    assert a.heads.names() == ["ghost"]
    with pytest.raises(VersionConflict):
        a.heads.put(moved.replace(size=4 * MiB), moved.version)


# -- the state machine of tests/test_archipelago_volumes.py on RADOS ---------------------------

_machine_pool: RadosPool | None = None


class RadosVolumeMachine(VolumeMachine):
    """The same rules and invariants, with heads and deltas in a fresh RADOS namespace (blocks
    in memory: the subject here is the mutable stores)."""

    def __init__(self) -> None:
        super().__init__()
        self.vols.close()  # the local ones the parent made
        assert _machine_pool is not None
        self.ns = f"test-machine-{uuid.uuid4().hex}"
        self.vols = Volumes(Blocker(MemoryBlockStore(), block_size=BS),
                            RadosHeadStore(_machine_pool, self.ns),
                            RadosDeltaStore(_machine_pool, self.ns))

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            purge(_machine_pool.cluster, self.ns)


@pytest.fixture(scope="module")
def machine_pool(cluster):
    global _machine_pool
    _machine_pool = RadosPool(POOL, CONF)
    yield _machine_pool
    _machine_pool.close()
    _machine_pool = None


TestRadosVolumeMachine = RadosVolumeMachine.TestCase
TestRadosVolumeMachine.settings = settings(max_examples=15, stateful_step_count=25,
                                           deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _machine_needs_the_pool(request):
    if request.cls is TestRadosVolumeMachine:
        request.getfixturevalue("machine_pool")
    yield


# -- archipelago serve over RADOS, read and written by real NBD clients -------------------------

NBD_TOOLS = ["qemu-io", "nbdinfo"]


class RadosServer:
    """`archipelago serve --blocks rados://...` on a data directory of its own."""

    def __init__(self, data_dir: str, url: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archipelago.cli", "serve", "--data-dir", data_dir,
             "--blocks", url, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline() if readable(self.proc.stdout, 30) else b""
        if not line.startswith(b"listening on "):
            self.stop()
            raise RuntimeError(f"archipelago serve did not start: {line!r}")
        self.address = line.decode().strip().removeprefix("listening on ")

    def uri(self, name: str) -> str:
        return f"nbd://{self.address}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0 and "Pattern verification failed" not in out, (cmd, out)
    return out


@pytest.mark.skipif(any(shutil.which(t) is None for t in NBD_TOOLS),
                    reason="qemu-utils / libnbd-bin not installed")
def test_serve_over_rados_across_hosts(hosts, url, tmp_path):
    a = hosts(lease_wait_s=10)
    a.create("disk", 8 * MiB)
    with contextlib.closing(a.open("disk")) as vol:
        vol.write(0, b"\xa1" * MiB)
        vol.write(5 * MiB, b"\xb2" * MiB)
    server = RadosServer(str(tmp_path / "server-host"), url)
    try:
        assert "export-size: 8388608" in run("nbdinfo", server.uri("disk"))
        run("qemu-io", "-f", "raw", "-c", "read -P 0xa1 0 1M", "-c", "read -P 0 1M 4M",
            "-c", "read -P 0xb2 5M 1M", "-c", "write -P 0xc3 2M 64k", "-c", "flush",
            server.uri("disk"))
        a.snapshot("disk", "disk-1")  # the server let the volume go when the client left
        run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0xc3 2M 64k", server.uri("disk-1"))
        listing = subprocess.run(
            [sys.executable, "-m", "archipelago.cli", "volume", "list", "--json",
             "--data-dir", str(tmp_path / "cli-host"), "--blocks", url],
            capture_output=True, timeout=60, check=True).stdout
        assert b'"disk-1"' in listing and b'"disk"' in listing
    finally:
        server.stop()
    with contextlib.closing(a.open("disk")) as vol:
        assert vol.read(2 * MiB, 64 * KiB) == b"\xc3" * (64 * KiB)

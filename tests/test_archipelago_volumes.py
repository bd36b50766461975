"""Volumes, snapshots and clones through the Python API, against a bytearray model.

The block store is a MemoryBlockStore (the test double of the block store); heads and deltas are
the real local implementations in a temporary directory."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from archipelago import LeaseLost, Volumes, gc_roots
from archipelago.delta import LocalDeltaStore
from archipelago.heads import LocalHeadStore
from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore
from pithos.core.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidArgument,
    NoSpace,
    NotFound,
    VersionConflict,
)

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB  # small blocks: folds span several blocks with little data


def make_volumes(path, store=None) -> Volumes:
    blocker = Blocker(store or MemoryBlockStore(), block_size=BS)
    vdir = os.path.join(path, "volumes")
    return Volumes(blocker, LocalHeadStore(vdir), LocalDeltaStore(vdir))


@pytest.fixture
def vols(tmp_path):
    v = make_volumes(str(tmp_path))
    yield v
    v.close()


def test_fresh_volume_reads_zeros_and_takes_no_space(vols):
    vols.create("v", 8 * MiB, block_size=BS)
    with contextlib.closing(vols.open("v")) as vol:
        assert vol.read(0, 8 * MiB) == bytes(8 * MiB)
    assert vols.info("v")["delta_bytes"] < 64 * KiB


def test_writes_partial_sectors_zero_trim_and_read_back(vols):
    vols.create("v", 2 * MiB, block_size=BS)
    model = bytearray(2 * MiB)
    with contextlib.closing(vols.open("v")) as vol:
        for off, data in [(5, b"a" * 10), (4090, b"b" * 20), (100_000, os.urandom(300_000)),
                          (2 * MiB - 3, b"xyz")]:
            vol.write(off, data)
            model[off:off + len(data)] = data
        vol.zero(4000, 200_000)
        model[4000:204_000] = bytes(200_000)
        assert vol.read(0, 2 * MiB) == model
        vol.flush()
    with contextlib.closing(vols.open("v")) as vol:
        assert vol.read(0, 2 * MiB) == model


def test_trim_frees_space(vols):
    vols.create("v", 16 * MiB, block_size=BS)
    with contextlib.closing(vols.open("v")) as vol:
        vol.write(0, os.urandom(8 * MiB))
        vol.flush()
        full = vols.deltas.allocated_bytes("v", 0)
        vol.zero(0, 8 * MiB)
        vol.flush()
        assert vol.read(0, 8 * MiB) == bytes(8 * MiB)
    assert full >= 8 * MiB
    assert vols.deltas.allocated_bytes("v", 0) < 1 * MiB


def test_small_write_does_not_copy_a_block(vols, tmp_path):
    """A 4 KiB write into a clone of a big image costs about 4 KiB, not a 64 KiB block."""
    vols.create("img", 4 * MiB, block_size=BS)
    with contextlib.closing(vols.open("img")) as vol:
        vol.write(0, os.urandom(4 * MiB))
    vols.snapshot("img", "img-1")
    vols.clone("img-1", "c")
    with contextlib.closing(vols.open("c")) as vol:
        vol.write(BS + 4096, b"z" * 4096)
        vol.flush()
    assert vols.deltas.allocated_bytes("c", 0) <= 16 * KiB


def test_snapshot_is_immutable_and_clones_are_independent(vols):
    vols.create("v", 1 * MiB, block_size=BS)
    with contextlib.closing(vols.open("v")) as vol:
        vol.write(0, b"1" * 200_000)
    snap = vols.snapshot("v", "s1")
    assert snap.readonly and snap.root
    vols.clone("s1", "a")
    vols.clone("s1", "b")
    with contextlib.closing(vols.open("a")) as a, contextlib.closing(vols.open("b")) as b:
        a.write(10, b"A" * 100)
        b.write(20, b"B" * 100)
        assert a.read(0, 200)[10:20] == b"A" * 10 and b.read(0, 200)[10:20] == b"1" * 10
    with contextlib.closing(vols.open("v")) as vol:
        vol.write(0, b"2" * 10)
    with contextlib.closing(vols.open("s1")) as s:
        assert s.readonly
        assert s.read(0, 200_000) == b"1" * 200_000
        with pytest.raises(Forbidden):
            s.write(0, b"x")


def test_snapshots_dedup_against_each_other(vols):
    vols.create("v", 1 * MiB, block_size=BS)
    data = os.urandom(1 * MiB)
    with contextlib.closing(vols.open("v")) as vol:
        vol.write(0, data)
    s1 = vols.snapshot("v", "s1")
    vols.create("w", 1 * MiB, block_size=BS)
    with contextlib.closing(vols.open("w")) as vol:
        vol.write(0, data)
    s2 = vols.snapshot("w", "s2")
    assert s1.root == s2.root  # same content, same map: stored once
    vols.clone("s1", "c")
    s3 = vols.snapshot("c", "s3")  # nothing written: the same map again
    assert s3.root == s1.root


def test_resize_grows_and_refuses_to_shrink(vols):
    vols.create("v", 1 * MiB, block_size=BS)
    with contextlib.closing(vols.open("v")) as vol:
        vol.write(MiB - 10, b"x" * 10)
    vols.resize("v", 3 * MiB)
    with pytest.raises(InvalidArgument):
        vols.resize("v", 2 * MiB)
    with contextlib.closing(vols.open("v")) as vol:
        assert vol.size == 3 * MiB
        assert vol.read(MiB - 10, 20) == b"x" * 10 + bytes(10)
        vol.write(3 * MiB - 5, b"12345")
        with pytest.raises(NoSpace):
            vol.write(3 * MiB - 4, b"12345")
    vols.snapshot("v", "s")
    assert vols.get("s").size == 3 * MiB


def test_lease_one_writer_and_fencing(vols):
    vols.create("v", 1 * MiB, block_size=BS)
    first = vols.open("v")
    with pytest.raises(Conflict):
        vols.open("v")
    with pytest.raises(Conflict):
        vols.delete("v")
    # Another host takes the volume over (as after a migration): the head's token moves on.
    head = vols.heads.get("v")
    vols.heads.put(head.replace(token=head.token + 1), head.version)
    with pytest.raises(LeaseLost):
        first.write(0, b"stale")
    with pytest.raises(LeaseLost):
        first.flush()
    first.lease.release()
    first.delta.close()
    with contextlib.closing(vols.open("v")) as vol:
        assert vol.read(0, 5) == bytes(5)


def test_head_compare_and_swap(vols):
    head = vols.create("v", 1 * MiB, block_size=BS)
    vols.heads.put(head.replace(size=2 * MiB), head.version)
    with pytest.raises(VersionConflict):
        vols.heads.put(head.replace(size=3 * MiB), head.version)
    with pytest.raises(VersionConflict):
        vols.create("v", 1 * MiB, block_size=BS)


def test_names_sizes_and_missing(vols):
    for bad in ["", ".x", "a/b", "-x", "x" * 200, "a b"]:
        with pytest.raises(InvalidArgument):
            vols.create(bad, MiB)
    with pytest.raises(InvalidArgument):
        vols.create("v", 1000)
    with pytest.raises(NotFound):
        vols.open("nope")
    with pytest.raises(NotFound):
        vols.clone("nope", "x")


def test_delete_and_gc_roots(tmp_path, vols):
    vols.create("v", 1 * MiB, block_size=BS)
    with contextlib.closing(vols.open("v")) as vol:
        vol.write(0, b"data")
    s = vols.snapshot("v", "s")
    vols.clone("s", "c")
    roots = set(vols.gc_roots())
    assert roots == {bytes.fromhex(s.root)}
    assert set(gc_roots(str(tmp_path))) == roots
    vols.delete("s")  # the clone names the map, not the snapshot's head
    with contextlib.closing(vols.open("c")) as vol:
        assert vol.read(0, 4) == b"data"
    vols.delete("c")
    vols.delete("v")
    assert vols.list() == []
    assert not any(n.startswith(("delta", "bits"))
                   for d in os.listdir(tmp_path / "volumes") if not d.startswith(".")
                   for n in os.listdir(tmp_path / "volumes" / d))


def test_unflushed_writes_after_a_crash_read_old_or_new(vols):
    """A writer that dies without flushing: its flushed writes stay, the rest read as before
    (the bitmap marks of unflushed writes were never durable), never garbage."""
    vols.create("v", 1 * MiB, block_size=BS)
    vol = vols.open("v")
    vol.write(0, b"a" * 8192)
    vol.flush()
    vol.write(8192, b"b" * 8192)  # never flushed
    vol.write(0, b"c" * 4096)  # sector already marked durably: reads new
    # Simulate kill -9: drop the files and the lease without a flush.
    vol.delta.close()
    vol.lease.release()
    with contextlib.closing(vols.open("v")) as again:
        got = again.read(0, 16384)
        assert got[:4096] == b"c" * 4096
        assert got[4096:8192] == b"a" * 4096
        assert got[8192:] in (b"b" * 8192, bytes(8192))


def test_corrupt_base_block_is_an_integrity_error(tmp_path):
    store = LocalBlockStore(str(tmp_path / "blocks"))
    vols = make_volumes(str(tmp_path), store)
    vols.create("v", 1 * MiB, block_size=BS)
    with contextlib.closing(vols.open("v")) as vol:
        vol.write(0, os.urandom(BS))
    snap = vols.snapshot("v", "s")
    first = next(iter(vols.mapper(BS).entries(bytes.fromhex(snap.root))))[0]
    from tests import block_damage

    block_damage.write_stored(store, first, b"rot" + block_damage.stored(store, first)[3:])
    fresh = make_volumes(str(tmp_path), LocalBlockStore(str(tmp_path / "blocks")))
    with contextlib.closing(fresh.open("s")) as s, pytest.raises(IntegrityError):
        s.read(0, 4096)
    fresh.close()
    vols.close()


# -- the state machine -------------------------------------------------------------------------

SIZE = 256 * KiB


class VolumeMachine(RuleBasedStateMachine):
    """Random writes, zeroes, trims, snapshots, clones, flushes and reopens of several volumes,
    each checked against a bytearray; snapshots must never change."""

    volumes = Bundle("volumes")
    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        import tempfile
        self.dir = tempfile.TemporaryDirectory()
        self.vols = make_volumes(self.dir.name)
        self.model: dict[str, bytearray] = {}
        self.snaps: dict[str, bytes] = {}
        self.open: dict[str, object] = {}
        self.n = 0

    def teardown(self) -> None:
        for vol in self.open.values():
            vol.close()
        self.vols.close()
        self.dir.cleanup()

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _vol(self, name):
        if name not in self.open:
            self.open[name] = self.vols.open(name)
        return self.open[name]

    @rule(target=volumes)
    def create(self):
        name = self._name("v")
        self.vols.create(name, SIZE, block_size=BS)
        self.model[name] = bytearray(SIZE)
        return name

    @rule(name=volumes, offset=st.integers(0, SIZE - 1), length=st.integers(1, 80 * KiB),
          fua=st.booleans(), seed=st.integers(0, 255))
    def write(self, name, offset, length, fua, seed):
        length = min(length, SIZE - offset)
        data = bytes((seed + i * 7) & 0xFF for i in range(length))
        self._vol(name).write(offset, data, fua)
        self.model[name][offset:offset + length] = data

    @rule(name=volumes, offset=st.integers(0, SIZE - 1), length=st.integers(1, 120 * KiB))
    def zero(self, name, offset, length):
        length = min(length, SIZE - offset)
        self._vol(name).zero(offset, length)
        self.model[name][offset:offset + length] = bytes(length)

    @rule(name=volumes, offset=st.integers(0, SIZE // 4096 - 1).map(lambda s: s * 4096),
          sectors=st.integers(1, 40))
    def trim_aligned(self, name, offset, sectors):
        length = min(sectors * 4096, SIZE - offset)
        self._vol(name).zero(offset, length)
        self.model[name][offset:offset + length] = bytes(length)

    @rule(name=volumes)
    def flush(self, name):
        self._vol(name).flush()

    @rule(name=volumes)
    def reopen(self, name):
        vol = self.open.pop(name, None)
        if vol is not None:
            vol.close()

    @rule(target=snapshots, name=volumes)
    def snapshot(self, name):
        snap = self._name("s")
        self.vols.snapshot_open(self._vol(name), snap)
        self.snaps[snap] = bytes(self.model[name])
        return snap

    @rule(target=volumes, snap=snapshots)
    def clone(self, snap):
        name = self._name("c")
        self.vols.clone(snap, name)
        self.model[name] = bytearray(self.snaps[snap])
        return name

    @rule(name=consumes(volumes))
    def delete(self, name):
        vol = self.open.pop(name, None)
        if vol is not None:
            vol.close()
        self.vols.delete(name)
        del self.model[name]

    @rule(name=volumes, offset=st.integers(0, SIZE - 1), length=st.integers(0, SIZE))
    def read_range(self, name, offset, length):
        length = min(length, SIZE - offset)
        assert self._vol(name).read(offset, length) == self.model[name][offset:offset + length]

    @invariant()
    def snapshots_never_change(self):
        for snap, content in self.snaps.items():
            with contextlib.closing(self.vols.open(snap)) as s:
                assert s.read(0, SIZE) == content

    @invariant()
    def volumes_match(self):
        for name, content in self.model.items():
            assert self._vol(name).read(0, SIZE) == content


TestVolumeMachine = VolumeMachine.TestCase
TestVolumeMachine.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])

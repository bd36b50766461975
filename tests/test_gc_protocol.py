"""The protocol between writers and the garbage collector, as a hypothesis state machine.

Writers of several processes (each with its writer leases over one real SQLite catalog and
its liveness locks) begin, put new blocks, reuse blocks others stored (touch, or put again
if gone; or, as a hashmap upload does, touch only those stamped before the time the
writer's lease pins: WriterLeases.pin), pause (other steps run meanwhile, for as long as
the machine likes), commit their maps, or die with their process (kill -9: its lock goes,
its row stays).  Collectors take
their mark start and the leases, mark, sweep batch by batch, or crash between any two steps;
committed maps are also dropped again, making garbage.  Blocks live in a MemoryBlockStore,
and again in a LocalBlockStore whose blocks are all packed (pithos.blocker.packs), where a
compaction by another store on the same directory (another process) may run between steps.

Invariants, after every step:
- every committed map is whole: its pages and blocks are all present;
- every writer in flight of a live process still has every block it put or touched.
And a writer whose commit fails never counts as committed (here: it cannot fail, as no
process of the machine loses its lock while alive).

The clock margin is 0: the margin only covers clock skew between hosts, and without it the
sweeps reach as far as the protocol lets them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore
from pithos.blocker.store import BlockStore
from pithos.catalog import Catalog
from pithos.catalog.leases import FileLiveness, WriterLeases, oldest_live_writer
from pithos.core.hashing import block_hash
from pithos.mapper import Mapper
from pithos.mapper.gc import Collection, GcReport, mark

BLOCK = 64


class Writer:
    def __init__(self, process: int, ticket) -> None:
        self.process = process
        self.ticket = ticket
        self.blocks: list[bytes] = []  # the data of each block it put or touched


class GcRun:
    def __init__(self, run: Collection) -> None:
        self.run = run
        self.batches: list[list[tuple[bytes, int]]] | None = None


class WritersAndCollector(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="gc-protocol-")
        self.catalog = Catalog(f"sqlite:///{self.dir}/catalog.sqlite")
        self.lock_dir = os.path.join(self.dir, "catalog.sqlite-leases")
        self.blocker = Blocker(self.make_store(), block_size=4096)  # (map pages are blocks)
        self.mapper = Mapper(self.blocker, fanout=4)  # (deep trees: pages are writes too)
        self.processes: dict[int, WriterLeases] = {}
        self.dead: set[int] = set()
        self.next_process = 0
        self.live_writers: list[Writer] = []
        self.roots: list[bytes] = []  # committed and not dropped: the collector's roots
        self.log: list[bytes] = []  # every root ever committed, in order (for late roots)
        self.gc: GcRun | None = None
        self.data_seq = 0

    def make_store(self) -> BlockStore:
        return MemoryBlockStore()

    def teardown(self) -> None:
        for leases in self.processes.values():
            leases.liveness.close()
        self.catalog.close()
        self.blocker.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def fresh_data(self) -> bytes:
        self.data_seq += 1
        return self.data_seq.to_bytes(8, "big") * (BLOCK // 8)

    # -- processes and writers ----------------------------------------------------------------

    @initialize()
    def two_processes(self) -> None:
        self.start_process()
        self.start_process()

    def start_process(self) -> None:
        # (refresh_s=0: a busy process moves its row forward at every writer's end, as far as
        # the writers in flight, pinned ones included, let it.)
        self.processes[self.next_process] = WriterLeases(
            self.catalog, liveness=FileLiveness(self.lock_dir), idle_clear_s=0, refresh_s=0)
        self.next_process += 1

    def alive(self) -> list[int]:
        return sorted(set(self.processes) - self.dead)

    def writer(self, pick: int) -> Writer | None:
        return self.live_writers[pick % len(self.live_writers)] if self.live_writers else None

    @rule(pick=st.integers(0, 10))
    def begin(self, pick: int) -> None:
        alive = self.alive()
        process = alive[pick % len(alive)]
        self.live_writers.append(Writer(process, self.processes[process].begin()))

    @rule(pick=st.integers(0, 10), count=st.integers(1, 3))
    def put_new(self, pick: int, count: int) -> None:
        writer = self.writer(pick)
        if writer is None:
            return
        data = [self.fresh_data() for _ in range(count)]
        self.blocker.put_many(data)
        writer.blocks += data

    @rule(pick=st.integers(0, 10), which=st.integers(0, 1000))
    def reuse(self, pick: int, which: int) -> None:
        """Name a block some other writer stored (dedup): touch it, or put it again if it is
        gone (the writer has the bytes, as an upload does)."""
        writer = self.writer(pick)
        if writer is None or self.data_seq == 0:
            return
        data = ((which % self.data_seq) + 1).to_bytes(8, "big") * (BLOCK // 8)
        h = block_hash(data)
        if self.blocker.touch_many([h]):
            self.blocker.put_many([data])
        writer.blocks.append(data)

    @rule(pick=st.integers(0, 10), which=st.integers(0, 1000))
    def reuse_pinned(self, pick: int, which: int) -> None:
        """`reuse` as a hashmap upload names the chunks it sent a moment before: a block
        stamped at or after the time the writer's lease pins is only found, not touched.
        (One of the last few blocks made: those whose stamps fall near the pinned time.)"""
        writer = self.writer(pick)
        if writer is None or self.data_seq == 0:
            return
        seq = self.data_seq - which % min(self.data_seq, 3)
        data = seq.to_bytes(8, "big") * (BLOCK // 8)
        since = self.processes[writer.process].pin(writer.ticket)
        if self.blocker.touch_many([block_hash(data)], since):
            self.blocker.put_many([data])
        writer.blocks.append(data)

    @rule(pick=st.integers(0, 10))
    def commit(self, pick: int) -> None:
        writer = self.writer(pick)
        if writer is None:
            return
        leases = self.processes[writer.process]
        hashes = [block_hash(d) for d in writer.blocks]
        root = self.mapper.store_entries(hashes, [BLOCK] * len(hashes))
        with leases.commit_guard(writer.ticket):
            self.roots.append(root)
            self.log.append(root)
        leases.end(writer.ticket)
        self.live_writers.remove(writer)

    @rule(pick=st.integers(0, 10))
    def give_up(self, pick: int) -> None:
        writer = self.writer(pick)
        if writer is not None:
            self.processes[writer.process].end(writer.ticket)
            self.live_writers.remove(writer)

    @rule(pick=st.integers(0, 10))
    def idle_clear(self, pick: int) -> None:
        alive = self.alive()
        self.processes[alive[pick % len(alive)]].clear_if_idle()

    @rule(pick=st.integers(0, 10))
    def kill(self, pick: int) -> None:
        """kill -9: the process's locks go with it, its rows stay, its writers never end.
        Another process starts in its place."""
        alive = self.alive()
        process = alive[pick % len(alive)]
        liveness = self.processes[process].liveness
        assert isinstance(liveness, FileLiveness)
        for fd in liveness._held.values():
            os.close(fd)  # (no unlink, no row deleted: nothing runs after kill -9)
        liveness._held.clear()
        self.dead.add(process)
        self.live_writers = [w for w in self.live_writers if w.process != process]
        self.start_process()

    @rule(pick=st.integers(0, 100))
    def drop(self, pick: int) -> None:
        """A version deleted: its map stops being a root (its blocks may become garbage)."""
        if self.roots:
            self.roots.pop(pick % len(self.roots))

    # -- the collector ----------------------------------------------------------------------

    @rule()
    def gc_start(self) -> None:
        """A collector starts (if one was running, it crashed: it simply stops)."""
        import time

        started = time.time()  # the mark start first, then the leases
        oldest = oldest_live_writer(self.catalog, FileLiveness(self.lock_dir))
        seen = len(self.log)

        def late_roots() -> list[bytes]:
            nonlocal seen
            found, seen = self.log[seen:], len(self.log)
            return found

        self.gc = GcRun(Collection(self.blocker, started=started, oldest_upload=oldest,
                                   late_roots=late_roots, clock_margin_s=0.0))
        self.gc.run.mark(list(self.roots))

    @precondition(lambda self: self.gc is not None)
    @rule(size=st.integers(1, 4), to_the_end=st.booleans())
    def gc_sweep_some(self, size: int, to_the_end: bool) -> None:
        assert self.gc is not None
        if self.gc.batches is None:
            # The scan of the store: candidates as the store lists them now.
            found = [c for batch in self.gc.run.candidates() for c in batch]
            self.gc.batches = [found[i:i + size] for i in range(0, len(found), size)]
        while self.gc.batches:
            self.gc.run.sweep(self.gc.batches.pop(0))
            if not to_the_end:
                return
        self.gc.run.finish()
        self.gc = None

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def committed_maps_are_whole(self) -> None:
        report = GcReport(dry_run=True)
        named = mark(self.blocker, self.roots, report)
        assert report.unwalkable_roots == []
        assert self.blocker.missing(sorted(named)) == []

    @invariant()
    def writers_in_flight_keep_their_blocks(self) -> None:
        for writer in self.live_writers:
            hashes = [block_hash(d) for d in writer.blocks]
            assert self.blocker.missing(hashes) == [], "a live writer lost a block"


WritersAndCollector.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestWritersAndCollector = WritersAndCollector.TestCase


class WritersAndCollectorOnPacks(WritersAndCollector):
    """The same protocol over packed blocks: a put or touch and a conditional delete meet in
    the index's transactions, and compaction moves records under both."""

    def make_store(self) -> BlockStore:
        # Small packs, so that most are sealed (and compactable) within a few steps.
        return LocalBlockStore(os.path.join(self.dir, "blocks"), io_threads=2,
                               pack_max=1 << 20, pack_min_batch=1, pack_roll_bytes=512)

    @rule(min_garbage=st.sampled_from([0.0, 0.5]))
    def compact(self, min_garbage: float) -> None:
        """Another process rewrites the packs nobody appends to (the writers' own pack is
        held, as a live writer's is)."""
        with LocalBlockStore(os.path.join(self.dir, "blocks"), io_threads=1) as other:
            other.compact(min_garbage)


WritersAndCollectorOnPacks.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestWritersAndCollectorOnPacks = WritersAndCollectorOnPacks.TestCase


def _sweep_all(blocker: Blocker, catalog: Catalog, lock_dir: str) -> None:
    """A whole collector run with no roots: every block it may take is garbage."""
    import time

    started = time.time()
    run = Collection(blocker, started=started,
                     oldest_upload=oldest_live_writer(catalog, FileLiveness(lock_dir)),
                     clock_margin_s=0.0)
    run.mark([])
    for batch in run.candidates():
        run.sweep(batch)
    run.finish()


def _pinned_scenario(tmp_path, *, older_writer: bool) -> tuple[Blocker, bytes]:
    """Process 1's writer puts a block and gives up (garbage, its process idle and its row
    cleared); process 0's writer W then names it as a hashmap upload does (touching it
    only if stamped before W's pinned time); if `older_writer`, an older writer of process
    0 was in flight throughout and ends before the collector runs.  Returns the store and
    the block's hash: W, still in flight, must find it present after a whole sweep."""
    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite")
    lock_dir = str(tmp_path / "catalog.sqlite-leases")
    blocker = Blocker(MemoryBlockStore(), block_size=4096)
    p0, p1 = (WriterLeases(catalog, liveness=FileLiveness(lock_dir), idle_clear_s=0,
                           refresh_s=0) for _ in range(2))
    older = p0.begin() if older_writer else None
    v = p1.begin()
    data = b"x" * BLOCK
    blocker.put_many([data])
    p1.end(v)
    p1.clear_if_idle()
    w = p0.begin()
    h = block_hash(data)
    assert blocker.touch_many([h], p0.pin(w)) == []
    if older is not None:
        p0.end(older)  # the row may not move past what W pinned
    _sweep_all(blocker, catalog, lock_dir)
    return blocker, h


def test_a_writer_naming_an_older_block_touches_it_whatever_its_pin(tmp_path):
    blocker, h = _pinned_scenario(tmp_path, older_writer=False)
    assert blocker.missing([h]) == [], "a live writer lost a block it named"


def test_a_pinned_writer_keeps_the_row_back_when_older_writers_end(tmp_path):
    blocker, h = _pinned_scenario(tmp_path, older_writer=True)
    assert blocker.missing([h]) == [], "a live writer lost a block it named"

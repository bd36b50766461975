"""The protocol between readers that quarantine, writers that put, and the disk that damages,
as a hypothesis state machine interleaving their steps against a model (one block's stored
bytes, or None), on the memory and local stores.

A reader's quarantine is two steps: it reads the stored bytes, and later (other steps between)
finds them damaged and quarantines with what it read.  Invariants: a quarantine moves the
block only if its bytes are still those read (so a copy stored afresh in between is never
moved); a put stores the block afresh when it is absent or of another size, and leaves one of
the same size (damaged or not) as it is; a read returns the block only when it is whole,
and never NotFound for a block that was stored and is held in quarantine.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore
from pithos.core.errors import IntegrityError, NotFound
from pithos.core.hashing import block_hash

GOOD = bytes(range(256)) * 40
HASH = block_hash(GOOD)


class QuarantineProtocol(RuleBasedStateMachine):
    local = False
    pack_min_batch = 5  # (the store's default: a put of one block is a file)

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp() if self.local else None
        store = LocalBlockStore(self.dir, io_threads=2, pack_min_batch=self.pack_min_batch) \
            if self.dir else MemoryBlockStore()
        self.blocker = Blocker(store, hash_threads=1)
        self.stored: bytes | None = None  # the model
        self.ever_stored = False
        self.reads: list[bytes] = []  # bytes readers read and have not yet acted on

    def teardown(self) -> None:
        self.blocker.close()
        if self.dir:
            shutil.rmtree(self.dir)

    def _store_raw(self, data: bytes) -> None:
        """The disk changes the block's bytes behind everyone's back."""
        store = self.blocker.store
        if isinstance(store, MemoryBlockStore):
            store._blobs[HASH] = data
        else:
            from tests import block_damage

            block_damage.write_stored(store, HASH, data)  # (its file, or its pack record)

    @rule()
    def put(self) -> None:
        self.blocker.put(GOOD)
        if self.stored is None or len(self.stored) != len(GOOD):
            self.stored = GOOD
        self.ever_stored = True

    @precondition(lambda self: self.stored)
    @rule(at=st.integers(0, len(GOOD) - 1), truncate=st.booleans())
    def damage(self, at: int, truncate: bool) -> None:
        assert self.stored
        at %= len(self.stored)
        damaged = self.stored[:at] if truncate else \
            self.stored[:at] + bytes([self.stored[at] ^ 0x40]) + self.stored[at + 1:]
        self._store_raw(damaged)
        self.stored = damaged

    @precondition(lambda self: self.stored is not None)
    @rule()
    def reader_reads(self) -> None:
        (data,) = self.blocker.store.get_many([HASH])
        assert data == self.stored
        self.reads.append(data)

    @precondition(lambda self: self.reads)
    @rule(which=st.integers(0, 7))
    def reader_quarantines(self, which: int) -> None:
        seen = self.reads.pop(which % len(self.reads))
        if seen == GOOD:
            return  # verified: a reader quarantines only what fails
        moved = self.blocker.store.quarantine_many([(HASH, seen)])
        assert moved == ([HASH] if self.stored == seen else [])
        if moved:
            self.stored = None

    @rule()
    def read(self) -> None:
        try:
            assert self.blocker.get(HASH) == GOOD
            assert self.stored == GOOD
        except IntegrityError:
            assert self.stored != GOOD
            assert self.ever_stored
            self.stored = None  # moved aside by this read (or held there already)
        except NotFound:
            assert self.stored is None and not self.ever_stored

    @invariant()
    def store_matches_the_model(self) -> None:
        missing = self.blocker.store.missing([HASH])
        assert missing == ([] if self.stored is not None else [HASH])
        if self.ever_stored and self.stored is None:
            assert self.blocker.store.quarantined([HASH]) == [HASH]


class LocalQuarantineProtocol(QuarantineProtocol):
    local = True


class PackedQuarantineProtocol(QuarantineProtocol):
    local = True
    pack_min_batch = 1  # the block is a record in a pack (pithos.blocker.packs)


@pytest.mark.parametrize("machine", [QuarantineProtocol, LocalQuarantineProtocol,
                                     PackedQuarantineProtocol],
                         ids=["memory", "local", "packed"])
def test_quarantine_protocol(machine):
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(machine, settings=settings(max_examples=60,
                                                         stateful_step_count=30,
                                                         deadline=None))

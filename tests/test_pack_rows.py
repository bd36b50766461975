"""The packs index rows a process keeps (pithos/blocker/pack_rows.py): rows it wrote or read
are answered again without the index, and never once another process removed them (a
collector's sweep, a quarantine) or compacted their pack away; a kept stamp is never newer
than the index's (a touch that skips a fresh row relies on it).  Two Packs objects on one
directory stand for two processes (each keeps its own rows and maps the shared stamp); one
test removes from a real second process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pithos.blocker.packs import Packs
from pithos.core.hashing import block_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATAS = [bytes([i]) * (100 + 37 * i) for i in range(8)]
ITEMS = [(block_hash(d), d) for d in DATAS]


def open_packs(root) -> Packs:
    root = str(root)
    return Packs(root, os.path.join(root, "quarantine"), os.path.join(root, "tmp"))


def index_stamps(root) -> dict[bytes, float]:
    with sqlite3.connect(os.path.join(str(root), "packs", "index.sqlite")) as db:
        return {bytes(h): s for h, s in db.execute("SELECT hash, stamp FROM blocks")}


def put_first(packs: Packs, n: int) -> list[bytes]:
    """Put the first `n` items through `packs`; their hashes."""
    packs.put(ITEMS[:n])
    return [h for h, _ in ITEMS[:n]]


@pytest.fixture
def two(tmp_path):
    os.makedirs(tmp_path / "tmp")
    a, b = open_packs(tmp_path), open_packs(tmp_path)
    yield a, b
    a.close()
    b.close()


def test_rows_a_process_wrote_are_answered_without_reading_the_index(two):
    a, b = two
    hashes = put_first(a, 4)
    rows = a.lookup(hashes)
    assert set(rows) == set(hashes)
    assert a._reader is None  # no look-up connection opened: every row was kept
    # Another process asks the index (and then keeps what it read).
    assert b.lookup(hashes) == rows
    assert b._reader is not None
    statements: list[str] = []
    b._reader.set_trace_callback(statements.append)
    assert b.lookup(hashes) == rows
    assert statements == []
    # An absence is always asked: the other process may have written the row since.
    assert b.lookup([ITEMS[5][0]]) == {}
    a.put([ITEMS[5]])
    assert set(b.lookup([ITEMS[5][0]])) == {ITEMS[5][0]}
    assert statements  # (both times from the index)


def test_rows_another_process_removed_are_not_answered(two):
    a, b = two
    hashes = put_first(a, 4)
    assert set(a.lookup(hashes)) == set(hashes)
    assert b.delete([hashes[0]]) == [hashes[0]]
    assert set(a.lookup(hashes)) == set(hashes[1:])
    assert b.delete([hashes[1]], cutoff=time.time() + 1) == [hashes[1]]  # a sweep's delete
    assert set(a.lookup(hashes)) == set(hashes[2:])
    # A quarantine (the stored length is not the one expected: damaged) moves it aside.
    assert b.quarantine(hashes[2], None, size=len(DATAS[2]) + 1) is True
    assert set(a.lookup(hashes)) == {hashes[3]}
    assert a.get(hashes) == {hashes[3]: DATAS[3]}


def test_a_row_removed_by_another_process_for_real_is_not_answered(tmp_path):
    os.makedirs(tmp_path / "tmp")
    a = open_packs(tmp_path)
    try:
        a.put(ITEMS[:2])
        assert set(a.lookup([ITEMS[0][0]])) == {ITEMS[0][0]}
        script = ("import os, sys; from pithos.blocker.packs import Packs\n"
                  "r = sys.argv[1]\n"
                  "p = Packs(r, os.path.join(r, 'quarantine'), os.path.join(r, 'tmp'))\n"
                  "print(len(p.delete([bytes.fromhex(sys.argv[2])])))")
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path), ITEMS[0][0].hex()],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.strip() == "1"
        assert a.lookup([ITEMS[0][0], ITEMS[1][0]]).keys() == {ITEMS[1][0]}
    finally:
        a.close()


def test_a_kept_row_whose_pack_was_compacted_away_is_read_where_it_went(two):
    a, b = two
    hashes = put_first(a, 3)
    before = a.lookup(hashes)
    a.close()  # (its pack sealed: compactable)
    a2 = open_packs(os.path.dirname(a.dir))
    try:
        a2.put(ITEMS[:3])  # a second copy of each (the rows move to a2's pack) ...
        kept = a2.lookup(hashes)
        assert all(kept[h][0] != before[h][0] for h in hashes)
        a2.close()
        a3 = open_packs(os.path.dirname(a.dir))
        assert set(a3.lookup(hashes)) == set(hashes)  # kept by a3 now
        report = b.compact(min_garbage=0.0)  # ... and the packs compacted by another
        assert report["removed"] + report["compacted"] >= 1
        assert a3.get(hashes) == dict(zip(hashes, DATAS[:3], strict=True))
        assert a3.read(hashes[1], 5, 10) == DATAS[1][5:15]
        a3.close()
    finally:
        a2.close()


def test_a_touch_of_fresh_rows_keeps_their_stamps_as_the_index_has_them(two):
    a, _ = two
    a.put(ITEMS[:2])
    time.sleep(0.02)
    since = time.time()
    a.put(ITEMS[2:4])  # stamped since `since`: fresh; the first two are not
    hashes = [h for h, _ in ITEMS[:4]]
    root = os.path.dirname(a.dir)
    stamps = index_stamps(root)
    assert set(a.refresh(hashes, fresh_since=since)) == set(hashes)
    after = index_stamps(root)
    assert all(after[h] > stamps[h] for h in hashes[:2])  # stamped anew
    assert all(after[h] == stamps[h] for h in hashes[2:])  # only read
    assert {h: row[3] for h, row in a.lookup(hashes).items()} == after
    a.refresh(hashes)  # all stamped anew, in the index and in what is kept
    assert {h: row[3] for h, row in a.lookup(hashes).items()} == index_stamps(root)


@settings(max_examples=40, stateful_step_count=25, deadline=None)
class TwoProcessesOnOnePacksDirectory(RuleBasedStateMachine):
    """Puts, deletes (plain and a sweep's), quarantines, touches (those of a hashmap upload:
    rows put since the last put began are fresh) and compactions through
    either of two Packs on one directory: each answers every look-up and read as the index
    holds it, and no kept stamp is newer than the index's."""

    @initialize(root=st.uuids())
    def start(self, root) -> None:
        import tempfile

        self.root = tempfile.mkdtemp(prefix=f"packrows-{root.hex[:8]}-")
        os.makedirs(os.path.join(self.root, "tmp"))
        self.packs = [open_packs(self.root), open_packs(self.root)]
        self.present: set[int] = set()
        self.last_put = 0.0

    def teardown(self) -> None:
        import shutil

        for p in getattr(self, "packs", []):
            p.close()
        if hasattr(self, "root"):
            shutil.rmtree(self.root, ignore_errors=True)

    @rule(who=st.integers(0, 1), which=st.sets(st.integers(0, 7), min_size=1, max_size=4))
    def put(self, who, which) -> None:
        self.last_put = time.time()
        self.packs[who].put([ITEMS[i] for i in sorted(which)])
        self.present |= which

    @rule(who=st.integers(0, 1), which=st.sets(st.integers(0, 7), min_size=1, max_size=3),
          sweep=st.booleans())
    def delete(self, who, which, sweep) -> None:
        gone = self.packs[who].delete([ITEMS[i][0] for i in sorted(which)],
                                      cutoff=time.time() + 1 if sweep else None)
        assert set(gone) == {ITEMS[i][0] for i in which & self.present}
        self.present -= which

    @rule(who=st.integers(0, 1), i=st.integers(0, 7))
    def quarantine(self, who, i) -> None:
        moved = self.packs[who].quarantine(ITEMS[i][0], None, size=len(DATAS[i]) + 1)
        assert moved is (True if i in self.present else None)
        self.present.discard(i)

    @rule(who=st.integers(0, 1), which=st.sets(st.integers(0, 7), min_size=1),
          fresh=st.booleans())
    def touch(self, who, which, fresh) -> None:
        found = self.packs[who].refresh([ITEMS[i][0] for i in sorted(which)],
                                        fresh_since=self.last_put if fresh else None)
        assert set(found) == {ITEMS[i][0] for i in which & self.present}

    @rule(who=st.integers(0, 1))
    def reopen(self, who) -> None:  # (seals its pack: compactable)
        self.packs[who].close()
        self.packs[who] = open_packs(self.root)

    @rule(who=st.integers(0, 1))
    def compact(self, who) -> None:
        self.packs[who].compact(min_garbage=0.0)

    @invariant()
    def both_answer_as_the_index(self) -> None:
        if not hasattr(self, "packs"):
            return
        want = {ITEMS[i][0]: DATAS[i] for i in self.present}
        stamps = index_stamps(self.root)
        assert set(stamps) == set(want)
        for p in self.packs:
            rows = p.lookup([h for h, _ in ITEMS])
            assert set(rows) == set(want)
            assert all(rows[h][3] <= stamps[h] for h in rows)
            assert p.get([h for h, _ in ITEMS]) == want


test_two_processes_on_one_packs_directory = TwoProcessesOnOnePacksDirectory.TestCase

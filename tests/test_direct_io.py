"""Large pack appends go past the page cache (pithos.blocker.direct_io): the bytes written
direct are the records, at aligned offsets, padded; small and large batches of several
threads share a pack; a file system that refuses O_DIRECT is written the usual way."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import random
import threading

import pytest
from conftest import native_module
from hypothesis import given
from hypothesis import strategies as st

from pithos.blocker import Blocker, LocalBlockStore, _gather_py, direct_io
from pithos.blocker.packs import DIRECT_MIN_BYTES
from pithos.core.hashing import block_hash
from tests.test_blocker_packs import assert_every_row_names_its_whole_record, index_rows


def test_write_direct_writes_the_parts_back_to_back_then_zeros_to_the_alignment(tmp_path):
    rng = random.Random(5)
    # Parts of odd sizes across more than two of the buffers' pieces.
    parts: list[bytes | memoryview] = []
    while sum(len(p) for p in parts) < 2 * direct_io.PIECE + 12345:
        parts.append(rng.randbytes(rng.randint(1, 300_000)))
    parts.append(memoryview(rng.randbytes(777)))
    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.write(b"x" * direct_io.ALIGN)  # what is before the write stays
    fd = direct_io.open_direct(path)
    if fd is None:
        pytest.fail(f"{tmp_path}'s file system refuses O_DIRECT: this test needs one that takes it")
    try:
        end = direct_io.write_direct(fd, parts, direct_io.ALIGN)
        with pytest.raises(ValueError):
            direct_io.write_direct(fd, [b"y"], end + 1)
    finally:
        os.close(fd)
    data = b"".join(bytes(p) for p in parts)
    assert end == direct_io.ALIGN + direct_io.round_up(len(data))
    with open(path, "rb") as f:
        written = f.read()
    assert written == b"x" * direct_io.ALIGN + data + bytes(end - direct_io.ALIGN - len(data))


gather_native, gather_mark = native_module("pithos.blocker._gather")

_part = st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(bytearray),
                  st.binary(max_size=300).map(lambda b: memoryview(b"ab" + b)[2:]))


@gather_mark
@given(st.lists(_part, max_size=12), st.integers(0, 1500), st.data())
def test_gather_twins_fill_the_same_bytes_and_answer_the_same(parts, room, data):
    """From any place in the parts (the answer of a previous call, or a wrong one)."""
    index = data.draw(st.integers(-1, len(parts) + 1))
    skip = data.draw(st.integers(-1, 310))
    results = []
    for impl in (_gather_py, gather_native):
        dest = bytearray(b"\xee" * room)
        try:
            results.append((impl.gather_into(dest, parts, index, skip), bytes(dest)))
        except ValueError as exc:
            results.append((type(exc), None))
    assert results[0] == results[1]
    if results[0][1] is None:
        return
    (next_index, next_skip, filled), dest = results[0]
    flat = b"".join(bytes(p) for p in parts[index:])[skip:]
    assert filled == min(room, len(flat))
    assert dest == flat[:filled] + b"\xee" * (room - filled)
    # Where it stopped is where the bytes it did not copy begin.
    rest = b"".join(bytes(p) for p in parts[next_index:])[next_skip:]
    assert rest == flat[filled:]


@gather_mark
def test_gather_lets_every_buffer_go_after_a_refusal():
    grown, dest = bytearray(b"abc"), bytearray(10)
    with pytest.raises(TypeError):
        gather_native.gather_into(dest, [grown, 5], 0, 0)
    grown.extend(b"d")  # (BufferError if a buffer were still held)
    dest.extend(b"e")
    with pytest.raises(BufferError):
        gather_native.gather_into(b"read-only", [b"x"], 0, 0)


def test_write_direct_uses_the_native_copy_when_built():
    built = gather_native is not None and os.environ.get("PITHOS_PURE") != "1"
    assert direct_io.GATHER_IS_NATIVE is built


def _batches(seed: int, n: int) -> list[list[tuple[bytes, bytes]]]:
    """Batches of CDC-sized blocks: some far under DIRECT_MIN_BYTES, some well over it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        count = rng.randint(5, 8) if i % 2 else rng.randint(80, 200)  # (5: packed at all)
        datas = [rng.randbytes(rng.randint(1, 64 * 1024)) for _ in range(count)]
        out.append([(block_hash(d), d) for d in datas])
    return out


def _put_from_threads(path: str, batches: list[list[tuple[bytes, bytes]]],
                      threads: int = 3) -> None:
    with LocalBlockStore(path, pack_roll_bytes=8 << 20) as store:
        errors: list[BaseException] = []

        def put(mine: list[list[tuple[bytes, bytes]]]) -> None:
            try:
                for batch in mine:
                    store.put_many(batch)
            except BaseException as exc:  # (reported by the test's thread)
                errors.append(exc)

        running = [threading.Thread(target=put, args=(batches[i::threads],))
                   for i in range(threads)]
        for t in running:
            t.start()
        for t in running:
            t.join()
        assert errors == []


def _first_offsets(path: str, batches: list[list[tuple[bytes, bytes]]]
                   ) -> list[tuple[bool, int, int, int]]:
    """(whether the batch is large, its pack, the offset of its first record, its bytes) of
    each batch."""
    where = {h: (pack, offset) for h, pack, offset, _ in index_rows(path)}
    out = []
    for b in batches:
        size = sum(len(d) + 40 for _, d in b)
        out.append((size >= DIRECT_MIN_BYTES, *where[b[0][0]], size))
    return out


def test_small_and_direct_batches_of_several_threads_share_packs_and_read_back(tmp_path):
    path = str(tmp_path / "b")
    batches = _batches(11, 24)
    _put_from_threads(path, batches)
    every = {h: d for batch in batches for h, d in batch}
    with LocalBlockStore(path) as store:
        assert Blocker(store).get_many(list(every)) == list(every.values())  # verified
    assert_every_row_names_its_whole_record(path)
    assert all(o % direct_io.ALIGN == 0 for large, _, o, _ in _first_offsets(path, batches)
               if large)


def test_a_large_batch_after_a_small_one_begins_aligned(tmp_path):
    """One thread, small and large batches in turn: a buffered large batch would begin
    where the small one before it ended, anywhere; a direct one begins aligned."""
    path = str(tmp_path / "b")
    batches = _batches(13, 12)
    _put_from_threads(path, batches, threads=1)
    firsts = _first_offsets(path, batches)
    assert sum(large for large, *_ in firsts) == 6
    padded = 0
    for (_, pack0, start0, size0), (large, pack1, start1, _) in itertools.pairwise(firsts):
        if large and pack1 == pack0:
            assert start1 == direct_io.round_up(start0 + size0)
            padded += start1 > start0 + size0
    assert padded  # (some small batch ended between two aligned offsets)


def test_a_file_system_refusing_o_direct_is_written_the_usual_way(tmp_path, monkeypatch):
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # (as tmpfs before Linux 6.6)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    path = str(tmp_path / "b")
    batches = _batches(12, 8)
    _put_from_threads(path, batches)
    monkeypatch.setattr(os, "open", real_open)
    every = {h: d for batch in batches for h, d in batch}
    with LocalBlockStore(path) as store:
        assert Blocker(store).get_many(list(every)) == list(every.values())
    assert_every_row_names_its_whole_record(path)
    # Nothing padded: the records lie back to back, each batch after the one before.
    rows = sorted((p, o, n) for _, p, o, n in index_rows(path))
    for (p1, o1, n1), (p2, o2, _) in itertools.pairwise(rows):
        assert p1 != p2 or o2 == o1 + 40 + n1


def test_threads_opening_a_new_stores_packs_at_once_all_store(tmp_path):
    """Threads whose first packed puts meet on a new store each open the packs (one object
    is kept: LocalBlockStore._packs_rw takes no lock) and so the index.  Its journal mode is
    set once per object and under the writer lock: set on every connection, one of them
    failed at once with "database is locked", busy timeout or not, while another set it."""
    for attempt in range(30):
        batches = _batches(attempt, 16)[1::2]  # (small ones: no time spent writing)
        with LocalBlockStore(str(tmp_path / f"b{attempt}")) as store:
            _put_at_once(store, batches)


def _put_at_once(store: LocalBlockStore, batches: list[list[tuple[bytes, bytes]]]) -> None:
    """A thread per batch, all putting at the same moment."""
    barrier = threading.Barrier(len(batches))
    errors: list[BaseException] = []

    def put(batch: list[tuple[bytes, bytes]]) -> None:
        try:
            barrier.wait()
            store.put_many(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_device_refusing_a_direct_write_gets_it_through_the_page_cache(tmp_path,
                                                                          monkeypatch):
    """O_DIRECT taken at open, but a write refused with EINVAL (a device whose alignment
    is not ALIGN): that batch and the pack's later ones are written the usual way, in the
    room taken for them; nothing is lost, and the batch's caller sees no error."""
    real_pwrite = os.pwrite
    refused = []

    def refusing(fd, data, offset):
        if os.get_blocking(fd) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing)
    path = str(tmp_path / "b")
    batches = _batches(14, 10)
    _put_from_threads(path, batches, threads=1)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert len(refused) == 1  # the first large batch; none after it tried
    every = {h: d for batch in batches for h, d in batch}
    with LocalBlockStore(path) as store:
        assert Blocker(store).get_many(list(every)) == list(every.values())
    assert_every_row_names_its_whole_record(path)

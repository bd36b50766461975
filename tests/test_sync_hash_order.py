"""The order the sync client hashes files in (pithos.sync.scan.hash_order): the largest
first, so that its upload is not the end of the run; beside it in the first lanes, files of
a few MiB, so that uploads begin as soon as a few MiB are hashed; then the rest, largest
first."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from pithos.sync.scan import HASH_LANES, QUICK_START_BYTES, hash_order


def listed(sizes: list[int]) -> list[tuple[str, os.stat_result]]:
    return [(f"f{i}", os.stat_result((0o100644, 0, 0, 1, 0, 0, n, 0, 0, 0)))
            for i, n in enumerate(sizes)]


@given(st.lists(st.integers(0, 64 << 20), max_size=40))
def test_the_largest_then_quick_starters_then_the_rest_largest_first(sizes):
    files = listed(sizes)
    order = hash_order(files)
    assert sorted(name for name, _ in order) == sorted(name for name, _ in files)
    got = [st.st_size for _, st in order]
    if not got:
        return
    assert got[0] == max(sizes)
    rest = sorted(sizes, reverse=True)[1:]
    quick = [n for n in rest if n <= QUICK_START_BYTES][:HASH_LANES - 1]
    assert got[1:1 + len(quick)] == quick
    tail = got[1 + len(quick):]
    assert tail == sorted(tail, reverse=True)


def test_the_sync_benchs_first_lanes():
    mib = 1 << 20
    sizes = [128 * mib, 25 * mib, 23 * mib, 21 * mib, 3 * mib, 2 * mib, mib, 300_000, 10_000]
    got = [st.st_size for _, st in hash_order(listed(sizes))]
    assert got == [128 * mib, 2 * mib, mib, 300_000, 10_000, 25 * mib, 23 * mib, 21 * mib,
                   3 * mib]


def test_files_hashed_in_reused_buffers_are_hashed_as_alone(tmp_path):
    """hash_files hands a finished file's cutter buffer to the next large file: every file's
    chunk list and MD5 are those it has hashed on its own (hash_file), whatever the bytes
    the buffer held before (large and small files, more files than lanes, one that ends
    exactly at a piece)."""
    import random

    from pithos.sync.scan import READ_SIZE, hash_file, hash_files

    rng = random.Random(5)
    sizes = [3 * READ_SIZE + 12345, READ_SIZE, READ_SIZE - 1, 2 * READ_SIZE, 70_000, 0,
             READ_SIZE + 7] * 3
    names = []
    for i, n in enumerate(sizes):
        name = f"f{i}"
        (tmp_path / name).write_bytes(rng.randbytes(n))
        names.append(name)
    listed_ = [(n, os.stat(tmp_path / n)) for n in names]
    together = dict(hash_files(str(tmp_path), listed_))
    for name, st_ in listed_:
        alone = hash_file(str(tmp_path), name, st_)
        got = together[name]
        assert got.md5 == alone.md5 and list(got.chunks) == list(alone.chunks), name

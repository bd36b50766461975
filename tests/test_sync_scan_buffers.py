"""The sync client's scan hashes files eight at a time, each cut in a buffer of its own, and
hands a finished file's buffer to the next large one (pithos.sync.scan.hash_files)."""

from __future__ import annotations

import os


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

"""The order a scan hashes a folder's files in: the small ones (sent by one plain PUT each)
first, so that their uploads keep the server busy while the large ones are hashed, then the
others largest first (a large file hashed last was the end of a run by itself)."""

from __future__ import annotations

import random

from pithos.sync.scan import HASH_LANES, READ_SIZE, SMALL_FILE_BYTES, Ignore, scan
from pithos.sync.state import State


def test_small_files_are_hashed_before_large_ones_and_large_ones_largest_first(tmp_path):
    rng = random.Random(7)
    folder = tmp_path / "f"
    folder.mkdir()
    # More of each kind than there are lanes, so that the order files start in decides
    # which are done first.
    small = {f"s{i}": rng.randrange(1, SMALL_FILE_BYTES + 1) for i in range(HASH_LANES + 3)}
    small["s-edge"] = SMALL_FILE_BYTES
    large = {f"l{i}": (i % 4 + 1) * READ_SIZE + SMALL_FILE_BYTES + 1
             for i in range(HASH_LANES + 3)}
    for name, size in {**small, **large}.items():
        (folder / name).write_bytes(rng.randbytes(size))
    state = State(str(folder))
    order: list[str] = []
    result = scan(str(folder), state, Ignore(str(folder)), lambda line: None,
                  lambda f: order.append(f.path))
    state.close()
    assert set(result.files) == set(small) | set(large)
    assert sorted(order[:len(small)]) == sorted(small), order
    # The large ones start largest first: with more files than lanes, each of the largest
    # is done before any of the smallest starts.
    done = order[len(small):]
    largest = [n for n, size in large.items() if size == max(large.values())]
    smallest = [n for n, size in large.items() if size == min(large.values())]
    assert max(done.index(n) for n in largest) < max(done.index(n) for n in smallest), done

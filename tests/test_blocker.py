import os

import pytest

from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore
from pithos.core.errors import IntegrityError, InvalidArgument, NotFound
from pithos.core.hashing import block_hash
from tests import block_damage


@pytest.fixture(params=["memory", "local", "packed"])
def blocker(request, tmp_path):
    # "packed": every small block a record in a pack (pithos.blocker.packs), even alone.
    store = MemoryBlockStore() if request.param == "memory" else \
        LocalBlockStore(tmp_path / "b", pack_min_batch=1 if request.param == "packed" else 5)
    b = Blocker(store, block_size=64 * 1024)
    yield b
    b.close()


def corrupt(blocker, h):
    """Damage a stored block behind the blocker's back, as a failing disk would."""
    store = blocker.store
    if isinstance(store, MemoryBlockStore):
        blob = store._blobs[h]  # (every bit of the first byte flipped: never a no-op)
        store._blobs[h] = bytes([blob[0] ^ 0xFF]) + blob[1:]
    else:  # (a file of its own, or a record in a pack)
        block_damage.flip(store, h, len(block_damage.stored(store, h)) // 2, 0xFF)


def path_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_put_names_blocks_by_hash(blocker):
    blocks = [b"a" * 100, b"b" * 64 * 1024, b""]
    hashes = blocker.put_many(blocks)
    assert hashes == [block_hash(b) for b in blocks]
    assert blocker.get_many(hashes) == blocks
    assert blocker.missing(hashes) == []


def test_duplicates_are_stored_once(blocker):
    hashes = blocker.put_many([b"same"] * 5 + [b"other"])
    assert len(set(hashes)) == 2
    assert len(list(blocker.iterate())) == 2


def test_oversized_block_is_refused_and_nothing_stored(blocker):
    with pytest.raises(InvalidArgument):
        blocker.put_many([b"ok", b"x" * (64 * 1024 + 1)])
    assert list(blocker.iterate()) == []


def test_corrupt_block_is_never_served(blocker):
    good, bad = blocker.put_many([b"good" * 100, b"bad" * 100])
    corrupt(blocker, bad)
    with pytest.raises(IntegrityError) as info:
        blocker.get_many([good, bad])
    assert info.value.hashes == [bad]
    with pytest.raises(IntegrityError):
        blocker.read(bad, 0, 1)
    assert blocker.get(good) == b"good" * 100
    assert blocker.check([good, bad, block_hash(b"absent")]) == ([bad], [block_hash(b"absent")])


def test_read_range_is_verified(blocker):
    h = blocker.put(bytes(range(256)) * 4)
    assert blocker.read(h, 10, 5) == bytes(range(10, 15))
    assert blocker.read(h, 1020, 100) == bytes(range(252, 256))
    with pytest.raises(InvalidArgument):
        blocker.read(h, -1, 1)


def test_missing_block(blocker):
    with pytest.raises(NotFound):
        blocker.get(block_hash(b"never stored"))


def test_delete(blocker):
    a, b = blocker.put_many([b"a", b"b"])
    assert blocker.delete_many([a]) == 1
    assert blocker.missing([a, b]) == [a]


# -- verified ranges (Blocker.read_range_into, pithos/blocker/ranges.py) ---------------------


def _range(blocker, h, offset, length):
    buf = bytearray(length)
    blocker.read_range_into(h, offset, memoryview(buf))
    return bytes(buf)


@pytest.mark.parametrize("offset,length", [(0, 1), (5, 40_000), (16_384, 16_384),
                                           (60_000, 10_000), (65_000, 536)])
def test_ranges_are_the_blocks_bytes_with_zeros_past_its_end(blocker, offset, length):
    data = os.urandom(64 * 1024 - 7)
    (h,) = blocker.put_many([data])
    want = data[offset:offset + length]
    want += bytes(length - len(want))
    assert _range(blocker, h, offset, length) == want  # the first read verifies it whole
    for other in range(3):  # push it out of the few blocks kept whole: pieces are checked
        blocker.put_many([os.urandom(1000)])
        _range(blocker, blocker.put_many([os.urandom(100 + other)])[0], 0, 10)
    assert _range(blocker, h, offset, length) == want


def test_a_range_of_a_block_damaged_before_its_first_read_is_refused(blocker):
    (h,) = blocker.put_many([os.urandom(64 * 1024)])
    corrupt(blocker, h)
    with pytest.raises(IntegrityError):
        _range(blocker, h, 0, 4096)


def test_a_range_of_a_block_damaged_after_its_first_read_is_refused(blocker):
    """Once verified whole, later ranges are checked piece by piece against what was verified:
    damage found later is an IntegrityError, never served."""
    data = os.urandom(64 * 1024)
    (h,) = blocker.put_many([data])
    assert _range(blocker, h, 0, 10) == data[:10]
    for n in range(10):  # more than the blocks kept whole
        _range(blocker, blocker.put_many([os.urandom(100 + n)])[0], 0, 10)
    corrupt(blocker, h)  # one byte
    refused = []
    for at in range(0, len(data), 16_384):
        try:
            assert _range(blocker, h, at, 16_384) == data[at:at + 16_384]
        except IntegrityError:
            refused.append(at)
    # Undamaged pieces read before the damaged one are served (each checked); from the damaged
    # one on, the block is refused: a failed piece drops what was verified, and the block,
    # verified whole again, fails.
    assert refused and refused == list(range(refused[0], len(data), 16_384))

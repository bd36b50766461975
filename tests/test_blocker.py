import os

import pytest

from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore
from pithos.core.errors import IntegrityError, InvalidArgument, NotFound
from pithos.core.hashing import block_hash


@pytest.fixture(params=["memory", "local"])
def blocker(request, tmp_path):
    store = MemoryBlockStore() if request.param == "memory" else LocalBlockStore(tmp_path / "b")
    b = Blocker(store, block_size=64 * 1024)
    yield b
    b.close()


def corrupt(blocker, h):
    """Damage a stored block behind the blocker's back, as a failing disk would."""
    store = blocker.store
    if isinstance(store, MemoryBlockStore):
        store._blobs[h] = b"X" + store._blobs[h][1:]
    else:
        path = store._path(h)
        data = bytearray(path_bytes(path))
        data[len(data) // 2] ^= 0xFF
        os.chmod(path, 0o644)
        with open(path, "wb") as f:
            f.write(bytes(data))


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

"""Damage a block stored by a LocalBlockStore behind its back, as a failing disk would,
wherever it lives: its own file, or its record in a pack (pithos.blocker.packs)."""

from __future__ import annotations

import contextlib
import os
import sqlite3

from pithos.blocker import LocalBlockStore
from pithos.core.stamp import SharedStamp


def write_stored(store: LocalBlockStore, hash_: bytes, data: bytes) -> None:
    """The stored bytes of `hash_` become `data` (no longer than they were, for a packed
    block: a shorter one is a record whose index row says it is shorter)."""
    where = store.locate(hash_)
    assert where is not None, "no such block"
    os.chmod(where.path, 0o644)
    if where.path == store._path(hash_):
        with open(where.path, "wb") as f:
            f.write(data)
        return
    assert len(data) <= where.length
    with open(where.path, "r+b") as f:
        f.seek(where.offset)
        f.write(data)
    if len(data) < where.length:
        # Closed here, not whenever it is collected: the last connection's close removes
        # the index's WAL, which a caller's rmtree of the store then found gone.
        with contextlib.closing(sqlite3.connect(
                os.path.join(store.path, "packs", "index.sqlite"))) as db, db:
            db.execute("UPDATE blocks SET length = ? WHERE hash = ?", (len(data), hash_))
        # A row changed behind the store's back, as a remover would: every process drops
        # the rows it keeps (pithos/blocker/pack_rows.py).
        stamp = SharedStamp(os.path.join(store.path, "packs", "index.stamp"))
        stamp.bump()
        stamp.close()


def stored(store: LocalBlockStore, hash_: bytes) -> bytes:
    """The bytes stored for `hash_`, read past the store."""
    where = store.locate(hash_)
    assert where is not None, "no such block"
    with open(where.path, "rb") as f:
        f.seek(where.offset)
        return f.read(where.length)


def flip(store: LocalBlockStore, hash_: bytes, offset: int, mask: int = 0x10) -> None:
    """One byte of the stored block flips."""
    data = bytearray(stored(store, hash_))
    data[offset] ^= mask
    write_stored(store, hash_, bytes(data))


def truncate(store: LocalBlockStore, hash_: bytes, length: int) -> None:
    write_stored(store, hash_, stored(store, hash_)[:length])

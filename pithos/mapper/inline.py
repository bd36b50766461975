"""Small objects kept inline: the map their content would have, named without storing it.

A small object's content may live in its catalog row instead of blocks (docs/design.md,
"Small objects inline").  Its version still carries the root its content would have as
blocks, so ETags, X-Object-Hash, hashmaps, dedup and conditional requests see the same
hashes whichever way it is kept.  That root is only a name here: no block and no page of it
is stored, so it is never walked.  Content is kept inline only when its map is at most one
entry (the whole content one block: see `ObjectService.store`), which these functions assume.
"""

from __future__ import annotations

from typing import Any

from pithos.core.errors import IntegrityError
from pithos.core.hashing import block_hash, merkle_root, to_hex
from pithos.mapper import codec

# What was last derived here from one content (its block hash, root and object hash, each
# when first asked), with that content, as one tuple (read whole: a pool thread's entry is
# never paired with another's content).  A small GET derives them from the same row's bytes
# twice: for its X-Object-Hash, then in `verified` before they are served.  Kept by
# identity, and only for `bytes`, which cannot change under it.
_last: tuple[Any, list[bytes | None]] = (None, [])


def _derived(data: bytes) -> list[bytes | None]:
    global _last
    last = _last
    if last[0] is data:
        return last[1]
    slots: list[bytes | None] = [None, None, None]
    if type(data) is bytes:
        _last = (data, slots)
    return slots


def _content_hash(data: bytes) -> bytes:
    slots = _derived(data)
    found = slots[0]
    if found is None:
        found = slots[0] = block_hash(data)
    return found


def inline_entries(data: bytes) -> list[tuple[bytes, int]]:
    """The entries of `data` stored as one block (none when empty): what a fixed-block
    build of it gives (a zero block is named by the same hash)."""
    return [(_content_hash(data), len(data))] if data else []


def inline_root(data: bytes) -> bytes:
    """The root of the map of `data` as one block: the hash of its only (leaf) page."""
    slots = _derived(data)
    found = slots[1]
    if found is None:
        entries = inline_entries(data)
        found = slots[1] = block_hash(codec.encode_leaf([h for h, _ in entries],
                                                        [n for _, n in entries]))
    return found


def inline_object_hash(data: bytes) -> bytes:
    """X-Object-Hash of `data` as one block (Mapper.object_hash of its map)."""
    slots = _derived(data)
    found = slots[2]
    if found is None:
        found = slots[2] = merkle_root([h for h, _ in inline_entries(data)])
    return found


def verified(root: bytes, data: bytes) -> bytes:
    """`data`, once checked against the root its version names: IntegrityError if the bytes
    kept in the row are not the content that root names (never served)."""
    if inline_root(data) != root:
        raise IntegrityError(f"the inline content of map {to_hex(root)} does not match it",
                             [root])
    return data

"""Binary forms of the hash lists and hashmaps the sync protocol sends, beside their JSON
forms (which stay for Pithos clients): raw 32-byte hashes, no hex, no JSON, nothing worth
deflating.  On a GB of 16 KiB chunks the JSON forms were ~4.5 MB each, hexed, dumped and
deflated by the client and inflated, parsed and unhexed by the server, twice (`?missing`
and the hashmap PUT).

- A hash list (`POST ?missing` with Content-Type HASHES_TYPE, and its answer): the hashes
  back to back, 32 bytes each.
- A hashmap (`PUT ?hashmap&format=binary`): entries back to back, each a hash (32 bytes)
  and its block's length (4 bytes, big-endian); the object's size is the lengths' sum.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pithos.core.hashing import HASH_SIZE

HASHES_TYPE = "application/vnd.pithos.hashes"
HASHMAP_FORMAT = "binary"  # ?hashmap&format=binary
ENTRY = struct.Struct(">32sI")


def pack_hashes(hashes: Sequence[bytes]) -> bytes:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ValueError(f"a hash is {HASH_SIZE} bytes")
    return b"".join(hashes)


def unpack_hashes(body: bytes | bytearray | memoryview) -> list[bytes]:
    """The hashes of a binary hash list (bytes each, whatever buffer it came in); ValueError
    saying why if it is not one."""
    view = memoryview(body)
    if view.nbytes % HASH_SIZE:
        raise ValueError(f"a binary hash list is {HASH_SIZE}-byte hashes back to back: "
                         f"{view.nbytes} bytes is not a whole number of them")
    return [bytes(view[i:i + HASH_SIZE]) for i in range(0, view.nbytes, HASH_SIZE)]


def pack_hashmap(hashes: Sequence[bytes], lengths: Sequence[int]) -> bytes:
    if len(hashes) != len(lengths):
        raise ValueError("as many lengths as hashes")
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ValueError(f"a hash is {HASH_SIZE} bytes")
    return b"".join(map(ENTRY.pack, hashes, lengths))


def unpack_hashmap(body: bytes | bytearray | memoryview) -> tuple[list[bytes], list[int]]:
    """(hashes, lengths) of a binary hashmap; ValueError saying why if it is not one (the
    caller checks the lengths against its block size)."""
    n = memoryview(body).nbytes
    if n % ENTRY.size:
        raise ValueError(f"a binary hashmap is {ENTRY.size}-byte entries (a {HASH_SIZE}-byte "
                         f"hash, a 4-byte big-endian length): {n} bytes is not a "
                         "whole number of them (truncated?)")
    hashes: list[bytes] = []
    lengths: list[int] = []
    for h, n in ENTRY.iter_unpack(body):
        hashes.append(h)
        lengths.append(n)
    return hashes, lengths

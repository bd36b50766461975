"""The chunker the sync client cuts files with: content-defined (FastCDC, `pithos.core.cdc`,
4/16/64 KiB), so an insert in the middle of a file changes only the chunks around it.  Each
chunk is a block named by its BLAKE3; the server stores it as one map entry of its own
length, so a hashmap PUT names exactly the chunks the client cut."""

from __future__ import annotations

from pithos.core.cdc import AVG_SIZE, MAX_SIZE, MIN_SIZE, Chunker


def new_chunker() -> Chunker:
    return Chunker(MIN_SIZE, AVG_SIZE, MAX_SIZE)

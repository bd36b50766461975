"""Parts copied back to back into a buffer: the pure twin of native/gather.pyx (built into
pithos.blocker._gather), for pithos.blocker.direct_io."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def gather_into(dest: Any, parts: Sequence[Any], index: int, skip: int
                ) -> tuple[int, int, int]:
    """Copy parts[index][skip:], parts[index + 1], ... back to back into `dest` (a writable
    buffer) until it is full or the parts run out; returns (index, skip, filled): where the
    next copy begins (a part, and how many of its bytes are copied already) and how many
    bytes of `dest` were filled."""
    if not 0 <= index <= len(parts):
        raise ValueError(f"index {index} is not within the {len(parts)} parts")
    if skip < 0:
        raise ValueError(f"skip {skip} is negative")
    out = memoryview(dest).cast("B")
    room, fill = out.nbytes, 0
    while index < len(parts) and room:
        data = memoryview(parts[index]).cast("B")
        if skip > data.nbytes:
            raise ValueError(f"skip {skip} is past the end of part {index}")
        take = min(data.nbytes - skip, room)
        out[fill:fill + take] = data[skip:skip + take]
        fill += take
        room -= take
        if skip + take == data.nbytes:
            index, skip = index + 1, 0
        else:
            skip += take
    return index, skip, fill

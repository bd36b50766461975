"""An open volume (read-write, holding the lease) or snapshot (read-only).

Reads merge the base map and the delta sector by sector (the overlay bitmap says which);
writes go to the delta in place; zero and trim punch holes.  See delta.py for the invariants
and docs/volumes.md for the whole design.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from archipelago import overlay
from archipelago.base import BaseView
from archipelago.delta import SECTOR_SHIFT, Delta, sectors
from archipelago.heads import SECTOR_SIZE, Head, Lease
from pithos.core.errors import Forbidden, InvalidArgument, NoSpace

_MASK = SECTOR_SIZE - 1


class Volume:
    """Byte-addressed access to a volume or snapshot.  Thread-safe: an NBD export's
    connections share one Volume."""

    def __init__(self, head: Head, base: BaseView, delta: Delta | None = None,
                 lease: Lease | None = None) -> None:
        self.head = head
        self.name = head.name
        self.size = head.size
        self.base = base
        self.delta = delta
        self.lease = lease
        self.readonly = delta is None
        self._lock = threading.Lock()
        self.closed = False

    # -- checks ------------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int, writing: bool) -> None:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        if offset + length > self.size:
            msg = (f"range [{offset}, {offset + length}) past the end of {self.name} "
                   f"({self.size} bytes)")
            raise NoSpace(msg) if writing else InvalidArgument(msg)

    def _writable(self) -> Delta:
        if self.delta is None:
            raise Forbidden(f"{self.name} is read-only")
        if self.lease is not None:
            self.lease.check()
        return self.delta

    # -- reading -----------------------------------------------------------------------------

    def read_into(self, buf: memoryview, offset: int) -> None:
        """Fill `buf` with the volume's bytes at `offset`."""
        length = len(buf)
        self._check_range(offset, length, writing=False)
        if length == 0:
            return
        delta = self.delta
        if delta is None:
            self.base.read_into(buf, offset)
            return
        if offset >= self.base.size:
            # Past the base map, a clear bit has a hole under it: the delta alone is right.
            delta.pread_into(buf, offset)
            return
        s0, s1 = offset >> SECTOR_SHIFT, sectors(offset + length)
        for in_delta, a, b in overlay.runs(delta.bits, s0, s1):
            lo = max(a << SECTOR_SHIFT, offset)
            hi = min(b << SECTOR_SHIFT, offset + length)
            part = buf[lo - offset:hi - offset]
            if in_delta:
                delta.pread_into(part, lo)
            else:
                self.base.read_into(part, lo)

    def read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.read_into(memoryview(buf), offset)
        return buf

    # -- writing -----------------------------------------------------------------------------

    def _prefill(self, delta: Delta, sector: int) -> None:
        """Copy one unmarked sector's current content into the delta and mark it, so a write
        of part of it keeps the rest.  Caller holds the lock."""
        lo = sector << SECTOR_SHIFT
        if overlay.count(delta.bits, sector, sector + 1) or lo >= self.base.size:
            return  # already in the delta, or a hole over no base: reads zeros as it should
        n = min(SECTOR_SIZE, self.size - lo)
        buf = bytearray(n)
        self.base.read_into(memoryview(buf), lo)
        delta.pwrite(buf, lo)
        overlay.mark(delta.bits, sector, sector + 1)
        delta.dirty(sector, sector + 1)

    def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Write `data` at `offset`.  Durable on return only with `fua` (or after flush)."""
        length = len(data)
        self._check_range(offset, length, writing=True)
        delta = self._writable()
        if length == 0:
            return
        end = offset + length
        s0, s1 = offset >> SECTOR_SHIFT, sectors(end)
        if offset & _MASK or (end & _MASK and end < self.size):
            with self._lock:
                if offset & _MASK:
                    self._prefill(delta, s0)
                if end & _MASK and end < self.size:
                    self._prefill(delta, s1 - 1)
        delta.pwrite(data, offset)
        # Mark after the data is in place: a reader never sees a marked sector without it.
        if overlay.mark(delta.bits, s0, s1):
            delta.dirty(s0, s1)
        if fua:
            delta.sync()

    def zero(self, offset: int, length: int, fua: bool = False) -> None:
        """Make `[offset, offset + length)` read zeros; whole sectors take no space."""
        self._check_range(offset, length, writing=True)
        delta = self._writable()
        end = offset + length
        first = (offset + _MASK) >> SECTOR_SHIFT  # first whole sector
        last = end >> SECTOR_SHIFT if end < self.size else sectors(end)  # end of whole ones
        if last <= first:
            if length:
                self.write(offset, bytes(length), fua)
            return
        if offset < first << SECTOR_SHIFT:
            self.write(offset, bytes((first << SECTOR_SHIFT) - offset))
        hi = min(last << SECTOR_SHIFT, self.size)
        if hi < end:
            self.write(hi, bytes(end - hi))
        delta.punch(first << SECTOR_SHIFT, hi - (first << SECTOR_SHIFT))
        # Over the base (or over data already marked), the zeros must shadow it.
        shadow = offset < self.base.size or overlay.count(delta.bits, first, last)
        if shadow and overlay.mark(delta.bits, first, last):
            delta.dirty(first, last)
        if fua:
            delta.sync()

    def flush(self) -> None:
        """Everything written so far is durable on return (FLUSH means durable)."""
        if self.delta is None:
            return
        if self.lease is not None:
            self.lease.check()
        self.delta.sync()

    # -- folding (snapshots) -----------------------------------------------------------------

    def touched_spans(self, block_size: int) -> Iterator[tuple[int, int, bytes | None]]:
        """The entries of the volume's next map: (start, length, base hash or None).  None
        marks an entry whose content changed (some sector of it is in the delta) or that lies
        past the base map and has data; those must be read and stored anew."""
        assert self.delta is not None
        bits = self.delta.bits
        base = self.base
        for i, h in enumerate(base.hashes):
            start, n = base.entry_span(i)
            if start >= self.size:
                return
            n = min(n, self.size - start)
            touched = overlay.count(bits, start >> SECTOR_SHIFT, sectors(start + n))
            yield start, n, (None if touched or n != base.lengths[i] else h)
        pos = base.size
        while pos < self.size:
            n = min(block_size, self.size - pos)
            touched = overlay.count(bits, pos >> SECTOR_SHIFT, sectors(pos + n))
            yield pos, n, (None if touched else b"")  # b"": zeros, never written
            pos += n

    def close(self) -> None:
        """Flush and let go of the delta and the lease.  Repeat-safe."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.delta is not None:
                try:
                    self.flush()
                finally:
                    self.delta.close()
        finally:
            if self.lease is not None:
                self.lease.release()

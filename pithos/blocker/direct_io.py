"""Writes that bypass the page cache (O_DIRECT), for large batches the writer syncs anyway.

A buffered write copies every byte into page-cache pages the kernel must first find
(allocating them: on a virtual machine whose host took back the guest's free memory, each is
a fault on the host as well) and later write back; the fdatasync that follows waits for that
write-back.  For a batch of a few MiB that is synced at once and not read back soon (a sync
client's chunks, a copy's records), that is all cost: measured on a 1 GB first sync, the pack
appends' copies into the page cache were a fifth of the server's CPU, and 90 appends of
8 MiB, each synced, took 0.9-1.8 s of CPU buffered against 0.14 s direct.

O_DIRECT asks the offset, the length and the buffer's address be multiples of the device's
logical block size: ALIGN (4096) covers 512-byte and 4 KiB devices.  The parts are copied
into page-aligned buffers of a small pool (a memory copy in warm memory, ~10x cheaper than
the page cache's; natively, without the GIL: native/gather.pyx) and written in pieces of
`PIECE` bytes, the last one padded with zeros up to ALIGN.  A file system that refuses
O_DIRECT (EINVAL at open) is written the usual way.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Iterator, Sequence

from pithos.blocker import _gather_py
from pithos.core.locks import native_lock
from pithos.core.native import load

# gather_into(dest, parts, index, skip) -> (index, skip, filled): native/gather.pyx, the
# copy without the GIL and without a Python step per part, or its pure twin.
gather, GATHER_IS_NATIVE = load("pithos.blocker._gather", _gather_py)

ALIGN = 4096
PIECE = 4 << 20  # bytes per write, and each buffer's size
_KEPT = 4  # buffers kept for reuse (more in use at once are made, and dropped after)


def round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def open_direct(path: str) -> int | None:
    """A second descriptor on the file at `path`, for direct writes; None where the file
    system does not take them (tmpfs before Linux 6.6, some FUSE and network file systems).
    Open it before the file's mode is made read-only."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


class _Buffers:
    """Page-aligned buffers of PIECE bytes (anonymous maps), reused: the memory stays
    resident and warm instead of being mapped and faulted in anew for each batch."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = native_lock()  # (pool threads take it; nothing inside yields)

    @contextlib.contextmanager
    def one(self) -> Iterator[mmap.mmap]:
        with self._lock:
            buf = self._free.pop() if self._free else mmap.mmap(-1, PIECE)
        try:
            yield buf
        finally:
            with self._lock:
                kept = len(self._free) < _KEPT
                if kept:
                    self._free.append(buf)
            if not kept:
                buf.close()


_buffers = _Buffers()


def write_direct(fd: int, parts: Sequence[bytes | memoryview], at: int) -> int:
    """Write `parts` back to back at `at` (a multiple of ALIGN) through `fd` (opened with
    O_DIRECT), the end padded with zeros to ALIGN; returns the padded end."""
    if at % ALIGN:
        raise ValueError(f"a direct write begins at a multiple of {ALIGN}, not at {at}")
    with _buffers.one() as buf:
        view = memoryview(buf)
        try:
            index = skip = 0
            while index < len(parts):
                index, skip, fill = gather.gather_into(view, parts, index, skip)
                if fill == PIECE:
                    at = _write_all(fd, view, at)
                elif fill:  # (the parts ran out)
                    padded = round_up(fill)
                    view[fill:padded] = bytes(padded - fill)
                    at = _write_all(fd, view[:padded], at)
        finally:
            view.release()
    return at


def _write_all(fd: int, view: memoryview, at: int) -> int:
    done = 0
    while done < view.nbytes:
        n = os.pwrite(fd, view[done:], at + done)
        if n <= 0 or n % ALIGN:
            # (A direct write is all or nothing but for a full disk, where it is short: the
            # rest would be unaligned.  Report it as the disk's refusal it is.)
            raise OSError(errno.ENOSPC, "a direct write was cut short (disk full?)")
        done += n
    return at + done

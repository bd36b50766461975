"""The delta: a volume's own mutable data, kept in place at sector grain (4 KiB).

A guest write goes to the delta at its own offset (pwrite, no copy of a 4 MiB block) and sets
the bits of its sectors in the overlay bitmap ("this sector is in the delta, not in the base
map").  Zeroed and trimmed sectors are punched out of the delta (they take no space) and also
marked: a marked sector whose delta bytes are a hole reads zeros.  At snapshot time the delta is
folded into content-addressed blocks and a new, empty generation starts.

Invariants (MUST):
- A sector whose bit is clear has a hole in the delta.  Runtime keeps it by marking right after
  writing; a crash may leave data of an unflushed write under a clear bit, so `open` punches
  every delta extent under clear bits before anything reads (`repair`).
- Bits only go from clear to set within a generation.  So a torn bitmap write at a crash mixes
  old and new bits of one flush, and every mix is a valid state.
- FLUSH: fdatasync the delta, then write the bitmap pages changed since the last flush and
  fdatasync the bitmap.  A bit is never durable before the data it points to.

`DeltaStore` / `Delta` are the interface (RADOS later: one object per extent of the volume,
with an omap bitmap); `LocalDeltaStore` keeps `delta.<generation>` (sparse file of the volume's
size) and `bits.<generation>` (the bitmap) in the volume's directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from abc import ABC, abstractmethod

from archipelago import overlay
from archipelago.heads import SECTOR_SIZE
from pithos.core.errors import BackendError, NoSpace
from pithos.core.files import fsync_dir

SECTOR_SHIFT = 12
assert 1 << SECTOR_SHIFT == SECTOR_SIZE
# The bitmap is written back in pages: 4 KiB of bitmap covers 32768 sectors (128 MiB).
BITMAP_PAGE = 4096
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_fallocate.restype = ctypes.c_int
_GEN = re.compile(r"(delta|bits)\.(\d+)\Z")


def sectors(size: int) -> int:
    return (size + SECTOR_SIZE - 1) >> SECTOR_SHIFT


def bitmap_bytes(size: int) -> int:
    return (sectors(size) + 7) >> 3


def _os_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return NoSpace(f"{what}: {exc.strerror}")
    return BackendError(f"{what}: {exc}")


class Delta(ABC):
    """The delta of one generation of one volume, opened by its (single) writer.

    `bits` is the live overlay bitmap (one bit per sector); callers mark sectors with
    `archipelago.overlay.mark` after writing them and report the change with `dirty`."""

    bits: bytearray

    @abstractmethod
    def pread_into(self, buf: memoryview, offset: int) -> None:
        """Fill `buf` with the delta bytes at `offset` (holes read zeros)."""

    @abstractmethod
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write in place.  Not durable until `sync`."""

    @abstractmethod
    def punch(self, offset: int, length: int) -> None:
        """Make `[offset, offset + length)` a hole (reads zeros, takes no space)."""

    @abstractmethod
    def dirty(self, first_sector: int, end_sector: int) -> None:
        """Note that bits of these sectors changed (to be written back by `sync`)."""

    @abstractmethod
    def sync(self, data_only: bool = False) -> None:
        """Make every write and mark so far durable (data first, then the bitmap).  With
        `data_only`, only the data (for FUA writes of sectors already marked durably)."""

    @abstractmethod
    def resize(self, size: int) -> None:
        """Grow to `size` bytes (new sectors unmarked, reading zeros).  Durable on return."""

    @abstractmethod
    def allocated_bytes(self) -> int:
        """Bytes of storage the delta takes (data and bitmap)."""

    @abstractmethod
    def close(self) -> None:
        """Release the files; does not sync."""


class DeltaStore(ABC):
    @abstractmethod
    def open(self, name: str, generation: int, size: int) -> Delta:
        """Open (creating it empty if absent) generation `generation` of a volume's delta,
        repaired (see the module's invariants).  Only the lease holder may call this."""

    @abstractmethod
    def remove(self, name: str, keep: int | None = None) -> None:
        """Remove every generation of a volume's delta but `keep` (None: all).  Repeat-safe."""

    @abstractmethod
    def allocated_bytes(self, name: str, generation: int) -> int:
        """Storage taken by one generation (0 if it does not exist yet)."""


class LocalDelta(Delta):
    def __init__(self, data_path: str, bits_path: str, size: int) -> None:
        self._data_path = data_path
        created = not os.path.exists(data_path)
        self._fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._bfd = os.open(bits_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if created or os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            nbytes = bitmap_bytes(size)
            if os.fstat(self._bfd).st_size < nbytes:
                os.ftruncate(self._bfd, nbytes)
            if created:
                os.fsync(self._fd)
                os.fsync(self._bfd)
                fsync_dir(os.path.dirname(data_path))
            self.bits = bytearray(nbytes)
            got = os.preadv(self._bfd, [self.bits], 0)
            if got != nbytes:
                raise BackendError(f"short bitmap {bits_path}: {got} of {nbytes} bytes")
            self._size = size
            self._dirty_pages: set[int] = set()
            self.repair()
        except BaseException:
            self.close()
            raise

    def repair(self) -> None:
        """Punch every delta extent lying under clear bits: data of writes that were never
        marked durably (the server died before a flush) must not show through."""
        offset = 0
        fd = self._fd
        while offset < self._size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return  # no data past offset
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), self._size)
            s0, s1 = start >> SECTOR_SHIFT, sectors(end)
            for in_delta, a, b in overlay.runs(self.bits, s0, s1):
                if not in_delta:
                    lo = max(a << SECTOR_SHIFT, start)
                    self.punch(lo, min(b << SECTOR_SHIFT, end) - lo)
            offset = max(end, start + 1)

    def pread_into(self, buf: memoryview, offset: int) -> None:
        n = os.preadv(self._fd, [buf], offset)
        if n < len(buf):  # past the end of the file (a racing resize): zeros
            buf[n:] = bytes(len(buf) - n)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        try:
            n = os.pwrite(self._fd, data, offset)
            while n < len(data):
                n += os.pwrite(self._fd, memoryview(data)[n:], offset + n)
        except OSError as exc:
            raise _os_error(exc, "cannot write the delta") from exc

    def punch(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        if _fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset,
                      length) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise _os_error(OSError(err, os.strerror(err)), "cannot punch the delta")
            # No hole punching on this file system: zeros take space, but read the same.
            self.pwrite(bytes(length), offset)

    def dirty(self, first_sector: int, end_sector: int) -> None:
        if end_sector <= first_sector:
            return
        first = (first_sector >> 3) // BITMAP_PAGE
        last = ((end_sector - 1) >> 3) // BITMAP_PAGE
        self._dirty_pages.update(range(first, last + 1))

    def sync(self, data_only: bool = False) -> None:
        try:
            # Copy the dirty bitmap pages first, then sync the data: a bit set by a concurrent
            # write after the copy waits for the next sync, so no durable bit ever names data
            # that was not synced before it (data written before its bit is marked).
            pages, self._dirty_pages = self._dirty_pages, set()
            copies = [(page * BITMAP_PAGE,
                       bytes(self.bits[page * BITMAP_PAGE:(page + 1) * BITMAP_PAGE]))
                      for page in sorted(pages)]
            os.fdatasync(self._fd)
            if data_only and not pages:
                return
            for lo, chunk in copies:
                os.pwrite(self._bfd, chunk, lo)
            if pages:
                os.fdatasync(self._bfd)
        except OSError as exc:
            raise _os_error(exc, "cannot sync the delta") from exc

    def resize(self, size: int) -> None:
        if size < self._size:
            raise ValueError("a delta only grows")
        nbytes = bitmap_bytes(size)
        try:
            self.sync()
            os.ftruncate(self._fd, size)
            os.ftruncate(self._bfd, nbytes)
            os.fsync(self._fd)
            os.fsync(self._bfd)
        except OSError as exc:
            raise _os_error(exc, "cannot grow the delta") from exc
        self.bits.extend(bytes(nbytes - len(self.bits)))
        self._size = size

    def allocated_bytes(self) -> int:
        return os.fstat(self._fd).st_blocks * 512 + os.fstat(self._bfd).st_blocks * 512

    def close(self) -> None:
        for attr in ("_fd", "_bfd"):
            fd = getattr(self, attr, None)
            if fd is not None:
                setattr(self, attr, None)
                with contextlib.suppress(OSError):
                    os.close(fd)


class LocalDeltaStore(DeltaStore):
    """Deltas beside the heads: `<path>/<name>/delta.<gen>` and `bits.<gen>`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _paths(self, name: str, generation: int) -> tuple[str, str]:
        vdir = os.path.join(self.path, name)
        return (os.path.join(vdir, f"delta.{generation}"),
                os.path.join(vdir, f"bits.{generation}"))

    def open(self, name: str, generation: int, size: int) -> Delta:
        data, bits = self._paths(name, generation)
        try:
            return LocalDelta(data, bits, size)
        except OSError as exc:
            raise _os_error(exc, f"cannot open the delta of {name!r}") from exc

    def remove(self, name: str, keep: int | None = None) -> None:
        vdir = os.path.join(self.path, name)
        try:
            entries = os.listdir(vdir)
        except FileNotFoundError:
            return
        removed = False
        for entry in entries:
            m = _GEN.match(entry)
            if m and (keep is None or int(m.group(2)) != keep):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(vdir, entry))
                removed = True
        if removed:
            fsync_dir(vdir)

    def allocated_bytes(self, name: str, generation: int) -> int:
        total = 0
        for path in self._paths(name, generation):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(path).st_blocks * 512
        return total

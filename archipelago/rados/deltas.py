"""Volume deltas in RADOS: data objects of CHUNK_SIZE and an omap bitmap (see the package
docstring)."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from archipelago import overlay
from archipelago.delta import BITMAP_PAGE, SECTOR_SHIFT, Delta, DeltaStore, bitmap_bytes, sectors
from archipelago.heads import check_name
from archipelago.rados.pool import (
    BITS_OP_BYTES,
    CHUNK_SIZE,
    MAX_INFLIGHT_BYTES,
    MAX_INFLIGHT_OPS,
    READ_PIECE_BYTES,
    RadosPool,
)
from pithos.blocker.rados_io import (
    OMAP_PAGE,
    Done,
    errno_of,
    omap_items,
    operate,
    rados_error,
    raise_failed,
    remove_objects,
    stat_objects,
)
from pithos.core.errors import (
    BackendError,
    PithosError,
)

# -- deltas ----------------------------------------------------------------------------------

def _pieces(offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
    """(chunk, offset in the chunk, length, offset in the caller's buffer) of a byte range."""
    pos = 0
    while pos < length:
        chunk, lo = divmod(offset + pos, CHUNK_SIZE)
        n = min(CHUNK_SIZE - lo, length - pos)
        yield chunk, lo, n, pos
        pos += n


class RadosDelta(Delta):
    def __init__(self, store: RadosDeltaStore, name: str, generation: int, size: int) -> None:
        self._store = store
        self._pool = store.pool
        self._io = store.io
        self.name = name
        self.generation = generation
        self._data_prefix = store.data_prefix(name, generation)
        self._bits_obj = store.bits_obj(name, generation)
        self._size = size
        self._cond = threading.Condition()
        self._pending: dict[int, tuple[str, int]] = {}  # seq -> (object, bytes)
        self._pending_bytes = 0
        self._per_object: dict[str, int] = {}
        self._seq = 0
        self._failure: PithosError | None = None
        self._intended: set[int] = set()  # chunks with durable c./w. keys this session
        self._intent_lock = threading.Lock()
        self._dirty_pages: set[int] = set()
        self._dirty_lock = threading.Lock()
        self._closed = False
        nbytes = bitmap_bytes(size)
        self.bits = bytearray(nbytes)
        self._load_bits(nbytes)
        self._chunks: set[int] = set()
        written: list[int] = []
        for key, _ in omap_items(self._pool, self._io, self._bits_obj):
            if key.startswith("c."):
                self._chunks.add(int(key[2:], 16))
            elif key.startswith("w."):
                written.append(int(key[2:], 16))
        self.repair(written)

    def _data_obj(self, chunk: int) -> str:
        return f"{self._data_prefix}{chunk:08x}"

    def _load_bits(self, nbytes: int) -> None:
        rados = self._pool.rados
        pos = 0
        while pos < nbytes:
            want = min(READ_PIECE_BYTES, nbytes - pos)
            try:
                got = self._io.read(self._bits_obj, want, pos)
            except rados.ObjectNotFound:
                return  # a new generation: every bit clear
            except rados.Error as exc:
                raise rados_error(errno_of(exc), f"cannot read the bitmap of {self.name!r}") \
                    from exc
            self.bits[pos:pos + len(got)] = got
            if len(got) < want:
                return  # the bitmap was written shorter (before a resize): the rest is clear
            pos += want

    def repair(self, chunks: Iterable[int]) -> None:
        """Zero every sector under a clear bit in these chunks (data of writes whose bits
        never became durable), then forget that they were written."""
        chunks = sorted(set(chunks))
        if not chunks:
            return
        total = sectors(self._size)
        pool, io = self._pool, self._io
        removes: list[str] = []
        zeroes: list[tuple[str, list[tuple[int, int]]]] = []
        for chunk in chunks:
            s0 = chunk * CHUNK_SIZE >> SECTOR_SHIFT
            s1 = min(total, (chunk + 1) * CHUNK_SIZE >> SECTOR_SHIFT)
            runs = overlay.runs(self.bits, s0, s1) if s0 < s1 else []
            if not any(in_delta for in_delta, _, _ in runs):
                removes.append(self._data_obj(chunk))
                continue
            base = chunk * CHUNK_SIZE
            clear = [((a << SECTOR_SHIFT) - base, (b - a) << SECTOR_SHIFT)
                     for in_delta, a, b in runs if not in_delta]
            if clear:
                zeroes.append((self._data_obj(chunk), clear))
        remove_objects(pool, io, removes, f"the delta of {self.name!r}")

        def start(i: int, done: Done) -> tuple[Any, Any]:
            obj, ranges = zeroes[i]
            op = io.create_write_op()
            try:
                for lo, n in ranges:
                    pool.zero(io, op, lo, n)
                return io.operate_aio_write_op(op, obj, oncomplete=done), op
            except BaseException:
                op.release()
                raise

        codes = pool.run_aio(len(zeroes), start)
        raise_failed(codes, f"cannot repair the delta of {self.name!r}", ok=(0, -errno.ENOENT))
        keys = [f"w.{chunk:08x}" for chunk in chunks]
        for i in range(0, len(keys), OMAP_PAGE):
            code = operate(pool, io, self._bits_obj,
                            lambda op, i=i: io.remove_omap_keys(op, keys[i:i + OMAP_PAGE]))
            if code < 0 and code != -errno.ENOENT:
                raise rados_error(-code, f"cannot repair the delta of {self.name!r}")

    # -- the pipeline of asynchronous ops ----------------------------------------------------

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise BackendError(f"the delta of {self.name!r} is closed")

    def _submit(self, obj: str, nbytes: int, start: Callable[[Callable[..., None]], Any],
                op: Any = None, missing_ok: bool = False) -> None:
        """Start one aio op on `obj` (`start(oncomplete)`), waiting for room in the window."""
        with self._cond:
            while self._pending and (len(self._pending) >= MAX_INFLIGHT_OPS
                                     or self._pending_bytes + nbytes > MAX_INFLIGHT_BYTES):
                self._cond.wait()
            self._seq += 1
            seq = self._seq
            self._pending[seq] = (obj, nbytes)
            self._pending_bytes += nbytes
            self._per_object[obj] = self._per_object.get(obj, 0) + 1

        def done(completion: Any) -> None:  # librados' thread: no librados calls but release
            code = completion.get_return_value()
            if op is not None:
                op.release()
            self._finish(seq, code, missing_ok)

        try:
            start(done)
        except self._pool.rados.Error as exc:
            if op is not None:
                op.release()
            self._finish(seq, -errno_of(exc), missing_ok)

    def _finish(self, seq: int, code: int, missing_ok: bool) -> None:
        with self._cond:
            entry = self._pending.pop(seq, None)
            if entry is None:
                return
            obj, nbytes = entry
            self._pending_bytes -= nbytes
            left = self._per_object[obj] - 1
            if left:
                self._per_object[obj] = left
            else:
                del self._per_object[obj]
            if code < 0 and not (missing_ok and code == -errno.ENOENT) \
                    and self._failure is None:
                self._failure = rados_error(-code, f"cannot write the delta of {self.name!r}")
            self._cond.notify_all()

    def _wait_objects(self, objs: Iterable[str]) -> None:
        with self._cond:
            for obj in objs:
                while obj in self._per_object:
                    self._cond.wait()

    def _wait_seq(self, barrier: int) -> None:
        """Until every op numbered <= barrier has finished."""
        with self._cond:
            while self._pending and min(self._pending) <= barrier:
                self._cond.wait()

    def _intend(self, chunk: int) -> None:
        """Durably note that `chunk` may hold data before any of it is written."""
        if chunk in self._intended:
            return
        with self._intent_lock:
            if chunk in self._intended:
                return
            keys = (f"c.{chunk:08x}", f"w.{chunk:08x}")
            code = operate(self._pool, self._io, self._bits_obj,
                            lambda op: self._io.set_omap(op, keys, (b"", b"")))
            if code < 0:
                raise rados_error(-code, f"cannot write the delta of {self.name!r}")
            self._chunks.add(chunk)
            self._intended.add(chunk)

    # -- Delta -------------------------------------------------------------------------------

    def pread_into(self, buf: memoryview, offset: int) -> None:
        pieces = list(_pieces(offset, len(buf)))
        self._wait_objects(self._data_obj(chunk) for chunk, _, _, _ in pieces)
        rados = self._pool.rados
        results: dict[int, tuple[int, bytes | None]] = {}
        if len(pieces) == 1:
            chunk, lo, n, pos = pieces[0]
            try:
                results[pos] = (0, self._io.read(self._data_obj(chunk), n, lo))
            except rados.ObjectNotFound:
                results[pos] = (-errno.ENOENT, None)
            except rados.Error as exc:
                results[pos] = (-errno_of(exc), None)
        else:
            by_name = {self._data_obj(chunk): (lo, n, pos) for chunk, lo, n, pos in pieces}

            objs = list(by_name)
            io = self._io

            def start(i: int, done: Done) -> tuple[Any, Any]:
                lo, n, pos = by_name[objs[i]]

                def got(completion: Any, data: bytes | None) -> None:
                    code = completion.get_return_value()
                    results[pos] = (code, data[:code] if data is not None and code >= 0
                                    else None)
                    done()
                return io.aio_read(objs[i], n, lo, got), None

            codes = self._pool.run_aio(len(objs), start)
            for obj, code in zip(by_name, codes, strict=True):
                if code < 0:
                    results[by_name[obj][2]] = (code, None)
        for _, _, n, pos in pieces:
            code, data = results[pos]
            if code < 0 and code != -errno.ENOENT:
                raise rados_error(-code, f"cannot read the delta of {self.name!r}")
            got = len(data) if data else 0
            if data:
                buf[pos:pos + got] = data
            if got < n:  # absent chunk, or past its end: zeros
                buf[pos + got:pos + n] = bytes(n - got)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._raise_failure()
        view = memoryview(data).cast("B")
        io = self._io
        for chunk, lo, n, pos in _pieces(offset, len(view)):
            self._intend(chunk)
            piece = bytes(view[pos:pos + n])
            obj = self._data_obj(chunk)
            self._submit(obj, n, lambda done, obj=obj, piece=piece, lo=lo:
                         io.aio_write(obj, piece, lo, oncomplete=done))

    def punch(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        self._raise_failure()
        io, pool = self._io, self._pool
        for chunk, lo, n, _ in _pieces(offset, length):
            obj = self._data_obj(chunk)
            chunk_end = min(CHUNK_SIZE, self._size - chunk * CHUNK_SIZE)
            if lo == 0 and n >= chunk_end:
                self._submit(obj, 0, lambda done, obj=obj: io.aio_remove(obj, oncomplete=done),
                             missing_ok=True)
                continue
            op = io.create_write_op()
            try:
                pool.zero(io, op, lo, n)
            except BaseException:
                op.release()
                raise
            self._submit(obj, 0, lambda done, obj=obj, op=op:
                         io.operate_aio_write_op(op, obj, oncomplete=done), op=op)

    def dirty(self, first_sector: int, end_sector: int) -> None:
        if end_sector <= first_sector:
            return
        first = (first_sector >> 3) // BITMAP_PAGE
        last = ((end_sector - 1) >> 3) // BITMAP_PAGE
        with self._dirty_lock:
            self._dirty_pages.update(range(first, last + 1))

    def sync(self, data_only: bool = False) -> None:
        self._raise_failure()
        with self._dirty_lock:
            pages, self._dirty_pages = self._dirty_pages, set()
        # Copy the pages first: every bit in the copy was set after its data was submitted,
        # so waiting for the ops submitted so far makes all of that data durable first.
        copies = [(page, bytes(self.bits[page * BITMAP_PAGE:(page + 1) * BITMAP_PAGE]))
                  for page in sorted(pages)]
        with self._cond:
            barrier = self._seq
        try:
            self._wait_seq(barrier)
            self._raise_failure()
            if data_only and not copies:
                return
            self._write_pages(copies)
        except BaseException:
            with self._dirty_lock:
                self._dirty_pages.update(pages)
            raise

    def _write_pages(self, copies: list[tuple[int, bytes]]) -> None:
        io = self._io
        i = 0
        while i < len(copies):
            batch = []
            size = 0
            while i < len(copies) and size < BITS_OP_BYTES:
                batch.append(copies[i])
                size += len(copies[i][1])
                i += 1

            def build(op: Any, batch: list[tuple[int, bytes]] = batch) -> None:
                for page, chunk in batch:
                    op.write(chunk, page * BITMAP_PAGE)

            code = operate(self._pool, io, self._bits_obj, build)
            if code < 0:
                raise rados_error(-code, f"cannot write the bitmap of {self.name!r}")

    def resize(self, size: int) -> None:
        if size < self._size:
            raise ValueError("a delta only grows")
        self.sync()
        # New sectors are clear, and a short bitmap object reads as clear past its end.
        self.bits.extend(bytes(bitmap_bytes(size) - len(self.bits)))
        self._size = size

    def allocated_bytes(self) -> int:
        return self._store.allocated_bytes(self.name, self.generation)

    def close(self) -> None:
        if self._closed:
            return
        with self._cond:
            while self._pending:  # no op may outlive the delta
                self._cond.wait()
        self._closed = True
        self._store._open.discard(self)


class RadosDeltaStore(DeltaStore):
    """Deltas in one namespace of a RADOS pool (the head store's, by default)."""

    def __init__(self, pool: RadosPool, namespace: str = "volumes") -> None:
        self.io = pool.ioctx(namespace)
        self.pool = pool.retain()
        self.namespace = namespace
        self._open: set[RadosDelta] = set()
        self._closed = False

    @staticmethod
    def registry_obj(name: str) -> str:
        return f"delta/{check_name(name)}"

    @staticmethod
    def bits_obj(name: str, generation: int) -> str:
        return f"bits/{check_name(name)}/{int(generation)}"

    @staticmethod
    def data_prefix(name: str, generation: int) -> str:
        return f"data/{check_name(name)}/{int(generation)}/"

    def open(self, name: str, generation: int, size: int) -> Delta:
        code = operate(self.pool, self.io, self.registry_obj(name),
                        lambda op: self.io.set_omap(op, (str(int(generation)),), (b"",)))
        if code < 0:
            raise rados_error(-code, f"cannot open the delta of {name!r}")
        delta = RadosDelta(self, name, generation, size)
        self._open.add(delta)
        return delta

    def _chunk_objects(self, name: str, generation: int) -> list[str]:
        prefix = self.data_prefix(name, generation)
        return [prefix + key[2:] for key, _ in
                omap_items(self.pool, self.io, self.bits_obj(name, generation), "c.")]

    def remove(self, name: str, keep: int | None = None) -> None:
        registry = self.registry_obj(name)
        generations = [int(k) for k, _ in omap_items(self.pool, self.io, registry)
                       if k.isdigit()]
        gone = [g for g in generations if keep is None or g != keep]
        for g in gone:
            # Chunks, then the bitmap naming them, then the registry key naming the bitmap:
            # an interrupted removal is finished by the next one.
            remove_objects(self.pool, self.io, self._chunk_objects(name, g),
                            f"the delta of {name!r}")
            remove_objects(self.pool, self.io, [self.bits_obj(name, g)],
                            f"the delta of {name!r}")
            code = operate(self.pool, self.io, registry,
                            lambda op, g=g: self.io.remove_omap_keys(op, (str(g),)))
            if code < 0 and code != -errno.ENOENT:
                raise rados_error(-code, f"cannot remove the delta of {name!r}")
        if keep is None:
            remove_objects(self.pool, self.io, [registry], f"the delta of {name!r}")

    def allocated_bytes(self, name: str, generation: int) -> int:
        objects = [self.bits_obj(name, generation), *self._chunk_objects(name, generation)]
        return sum(s or 0 for s in stat_objects(self.pool, self.io, objects))

    def close(self) -> None:
        """Close the deltas still open (waiting for their writes in flight, without a
        flush), then the connection."""
        if self._closed:
            return
        self._closed = True
        for delta in list(self._open):
            delta.close()
        self.io.close()
        self.pool.close()



"""RadosBlockStore: one RADOS object per block in a Ceph pool, durable on return.

Layout in the pool (and the store's namespace, "" by default):

    <hex hash>      one object per block: its bytes, plus one omap key `pithos.put_ns` holding
                    the time of the last put (ns since the epoch, ASCII), which gives `age_s`,
                    and one `pithos.gen` set at its creation (see the quarantine, below)

Objects whose names are not 64 lowercase hex digits are not blocks: `iterate` skips them, so
other data may share the pool (in another namespace preferably).

Damaged blocks (`quarantine_many`) are moved to the namespace `<namespace>.quarantine`, one
object per hex hash.  RADOS has no rename, so a move is a copy and a conditional remove: the
block is read with its generation, its bytes compared with those the reader found damaged,
copied into the quarantine namespace, and removed by one write op that compares its
generation: an omap key `pithos.gen` that its create sets to a random value and a refresh
leaves alone.  A block stored afresh since the read has another generation, and stays; a
re-put of the damaged one (a refresh) changes nothing, so a busy block cannot starve its
quarantine (as an object version, which every refresh bumps, would).  A crash between the
copy and the remove leaves the damaged block in place with a copy in quarantine: the next read
finds the damage again.

Put, in batches through aio with at most `queue_depth` ops in flight:

1. a stat of every block of the batch (a read: nothing is journaled);
2. for the absent ones, an exclusive create: one write op that creates the object (EEXIST if
   present), writes its bytes and sets `pithos.put_ns`.  A RADOS write op is a transaction:
   the object appears complete with its time, or not at all.  EEXIST means a concurrent writer
   stored the same bytes a moment ago: the put is done;
3. for the present ones, a *refresh*: one write op that asserts the object exists and sets
   `pithos.put_ns`.  The assertion is an `omap_cmp` on a key that is never set (an absent key
   compares as empty, so it holds on every existing object); on an absent object the OSD
   answers ENOENT and the op changes nothing, so a refresh never creates an empty object under
   a hash.  A block deleted between its stat and its refresh is created as in 2.

So a present block never ships its bytes again.

A conditional delete (`delete_if_put_before`) is one write op per block that compares
`pithos.put_ns` on the OSD (`omap_cmp`: present, and less than the cutoff) and removes the object
only if both hold; the OSD runs an object's ops one at a time, so a refresh is wholly before the
delete (which then fails the compare: ECANCELED) or after it (and finds no object).  omap_cmp
compares bytes, not numbers: every put time is 19 digits (the years 2001 to 2286), and the cutoff
is written as 19 digits too.  Stat first rather than refresh first: a
refresh that fails is still journaled by the OSD (as an error entry of the PG log), and cost
about 550 us of OSD time per new 4 MiB block here (7% of the write rate), a stat 70-130 us.
RADOS acknowledges a write once it is committed on every replica, so a put is durable when its
completion returns.

Connecting, errno translation, retries and the aio window are the shared RADOS plumbing of
pithos/blocker/rados_io.py: transient errors (timeouts, EAGAIN, lost connections) are retried a
bounded number of times, batch by batch for only the ops that failed; anything else maps to
`NoSpace` (ENOSPC, EDQUOT, EFBIG) or `BackendError(transient=...)`.  The `rados` module
(Debian's python3-rados) is imported when a store is made, so this package imports on machines
without Ceph.

The timestamp needs omap, so the pool must be replicated (erasure-coded pools have no omap).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pithos.blocker.rados_io import (
    Done,
    RadosConnection,
    Start,
    errno_of,
    rados_error,
    raise_failed,
    stat_objects,
)
from pithos.blocker.store import BlockStore, BlockWriter, BufferedBlockWriter
from pithos.core.errors import InvalidArgument, NotFound
from pithos.core.locks import native_lock
from pithos.core.offload import Offload

PUT_TIME_KEY = "pithos.put_ns"
# Set once, when the block is created (random): tells a block stored afresh from the one read.
GENERATION_KEY = "pithos.gen"
# Never set on any object: omap_cmp(absent key == "") holds exactly when the object exists.
_EXISTS_GUARD_KEY = "pithos.exists"
_HEX_LEN = 64
_HEX_DIGITS = frozenset("0123456789abcdef")
# Put times (ns since the epoch) have this many digits from 2001 to 2286, so that in that span
# their order as strings, which omap_cmp compares, is their order as numbers.
_PUT_NS_DIGITS = 19
# Sizes of the hash batches that `iterate` stats at a time.
_ITERATE_STAT_BATCH = 512
QUARANTINE_SUFFIX = ".quarantine"
# A blob up to this size is created without a stat first (`_put_pieces`): its bytes cost less
# to send than a round trip to the OSD (a map page, a content-defined chunk; a 4 MiB block is
# stat'ed first, so that a present one's bytes are not sent again).
CREATE_FIRST_BYTES = 64 * 1024
# A quarantine that keeps finding the block stored afresh while it reads it gives up after
# this many reads; the block stays, and the next reader tries again.
_QUARANTINE_TRIES = 5


def _is_block_name(name: str) -> bool:
    return len(name) == _HEX_LEN and _HEX_DIGITS.issuperset(name)


class RadosBlockStore(BlockStore):
    """Blocks as objects of the RADOS pool `pool`, in `namespace`.

    `conf_path` is a ceph.conf (None: librados' default search); `client_id` the cephx user
    (its keyring is found through the conf).  `queue_depth` bounds the aio ops in flight per
    batch.  An op that gets no answer in `op_timeout_s` fails with ETIMEDOUT, which counts as
    transient: each failed op is retried up to `retries` times, `retry_delay_s` apart (doubling).
    Timeouts are whole seconds, as librados takes them.
    `read_size`: a block of up to this many bytes is read in one op, a larger one takes more,
    so it should be the block size.
    """

    def __init__(self, pool: str, conf_path: str | os.PathLike[str] | None = None, *,
                 namespace: str = "", client_id: str = "admin", queue_depth: int = 16,
                 op_timeout_s: int = 30, connect_timeout_s: int = 30,
                 retries: int = 3, retry_delay_s: float = 0.2,
                 read_size: int = 4 * 1024 * 1024, offload: Offload | None = None) -> None:
        if min(queue_depth, read_size, op_timeout_s, connect_timeout_s) < 1 or retries < 0:
            raise InvalidArgument("queue depth, read size and timeouts must be positive "
                                  "(librados takes whole seconds), retries >= 0")
        self._conn = RadosConnection(
            pool, conf_path, client_id=client_id, op_timeout_s=op_timeout_s,
            connect_timeout_s=connect_timeout_s, queue_depth=queue_depth, retries=retries,
            retry_delay_s=retry_delay_s)
        self._rados = self._conn.rados
        self._cluster = self._conn.cluster
        self.pool = pool
        self.namespace = namespace
        self._read_size = read_size
        try:
            self._ioctx = self._conn.ioctx(namespace)
        except BaseException:
            self._conn.shutdown()
            raise
        # Where blocking librados waits run (pithos.core.offload): off the event loop under one.
        self._offload = offload or Offload.threads(1, name="rados")
        self._own_offload = offload is None
        self._closed = False
        # Quarantines run one at a time on ioctxs of their own, so that the object version
        # of a read (get_last_version) is that read's.  Taken on the offload's pool threads:
        # a native lock (pithos/core/locks.py), held across blocking librados calls only.
        self._quarantine_lock = native_lock()
        self._quarantine_ioctxs: tuple[Any, Any] | None = None

    @property
    def retried_ops(self) -> int:
        """How many ops were retried after a transient error (for tests and monitoring)."""
        return self._conn.retried_ops

    # -- the batch engine (the window and the retries: rados_io.RadosConnection) -------------

    def _batch(self, count: int, start: Start) -> list[int]:
        if count:
            # Under an event loop (`pithos serve`), waiting for completions must leave the
            # loop's thread, as the LocalBlockStore's file calls do, or one request's RADOS
            # round trips stall all.
            return self._offload.run(self._conn.run_aio, count, start)
        return self._conn.run_aio(count, start)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._conn.call(fn, *args)

    # -- BlockStore --------------------------------------------------------------------------

    def _refresh(self, names: Sequence[str]) -> list[int]:
        """Set the put time of each named object that exists, never creating one; the return
        code of each (0, or -ENOENT for an absent object)."""
        io = self._ioctx
        rados = self._rados

        def start(i: int, done: Done) -> tuple[Any, Any]:
            op = io.create_write_op()
            op.omap_cmp(_EXISTS_GUARD_KEY, "", rados.LIBRADOS_CMPXATTR_OP_EQ)
            io.set_omap(op, (PUT_TIME_KEY,), (str(time.time_ns()).encode(),))
            return io.operate_aio_write_op(op, names[i], done, mtime=int(time.time())), op

        codes = self._batch(len(names), start)
        raise_failed(codes, "cannot refresh blocks", ok=(0, -errno.ENOENT))
        return codes

    def _create(self, names: Sequence[str], datas: Sequence[Sequence[bytes]],
                which: Sequence[int]) -> list[int]:
        """Create the objects `which` (indexes into names and datas) with their bytes and put
        time, each in one exclusive write op; one that exists already is left as it is (its
        code -EEXIST, in the codes returned in the order of `which`).  Each object's bytes
        are given as its pieces, in order: written by one op, so atomically."""
        io = self._ioctx
        rados = self._rados

        def start(k: int, done: Done) -> tuple[Any, Any]:
            i = which[k]
            op = io.create_write_op()
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            pieces = [piece for piece in datas[i] if piece]
            if pieces:  # (an empty block is the create alone: no write of 0 bytes)
                op.write_full(pieces[0])
                for piece in pieces[1:]:
                    op.append(piece)
            io.set_omap(op, (PUT_TIME_KEY, GENERATION_KEY),
                        (str(time.time_ns()).encode(), os.urandom(8).hex().encode()))
            return io.operate_aio_write_op(op, names[i], done, mtime=int(time.time())), op

        codes = self._batch(len(which), start)
        raise_failed(codes, "cannot store blocks", ok=(0, -errno.EEXIST))
        return codes

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        # Not a PartsStore (yet): a RADOS object is read and verified whole.
        unique = dict(items)  # the caller vouches that equal hashes name equal bytes
        # librados takes bytes only (an upload's pieces may come as bytearrays).
        self._put_pieces(list(unique), [[d if type(d) is bytes else bytes(d)]
                                        for d in unique.values()])

    def open_writer(self) -> BlockWriter:
        return _PiecesWriter(self)

    def _put_pieces(self, hashes: Sequence[bytes], datas: Sequence[Sequence[bytes]]) -> None:
        """put_many of blobs given as their pieces (bytes), each blob's hash once.  A blob of
        at most CREATE_FIRST_BYTES is created at once (its exclusive create fails on an
        object that exists, which is then handled as a larger one: one op for a new blob
        instead of a stat and a create, one more for a present one); a larger one is
        stat'ed first, so that its bytes are not sent to an OSD that has them."""
        names = [h.hex() for h in hashes]
        lengths = [sum(len(piece) for piece in pieces) for pieces in datas]
        first = [i for i, n in enumerate(lengths) if n <= CREATE_FIRST_BYTES]
        made = self._create(names, datas, first)
        which = [i for i, code in zip(first, made, strict=True) if code == -errno.EEXIST]
        which += [i for i, n in enumerate(lengths) if n > CREATE_FIRST_BYTES]
        sizes = self._stat_many([hashes[i] for i in which])
        absent: list[int] = []
        present: list[int] = []
        for i, size in zip(which, sizes, strict=True):
            if size is not None and size != lengths[i]:
                # Damaged (see BlockStore.put_many): moved aside and stored afresh.
                self._off_loop(self._quarantine_one, hashes[i], None, lengths[i])
                size = None
            (present if size is not None else absent).append(i)
        self._create(names, datas, absent)
        codes = self._refresh([names[i] for i in present])
        # Deleted between its stat and its refresh: store it again.
        self._create(names, datas,
                     [i for i, code in zip(present, codes, strict=True) if code == -errno.ENOENT])

    def touch_many(self, hashes: Sequence[bytes], fresh_since: float | None = None
                   ) -> list[bytes]:
        # (Every object refreshed, `fresh_since` or not: its age is the OSD's mtime, on
        # another host's clock, and the refresh is one op of the round trip a look-up takes.)
        unique = list(dict.fromkeys(hashes))
        codes = self._refresh([h.hex() for h in unique])
        return [h for h, code in zip(unique, codes, strict=True) if code == -errno.ENOENT]

    def get_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        unique = list(dict.fromkeys(hashes))
        found: list[bytes | None] = [None] * len(unique)
        io = self._ioctx
        # One byte more than the usual block: a full-size block is then known whole from its
        # first read (a read of exactly `size` bytes may have more behind it).
        size = self._read_size + 1

        def start(i: int, done: Done) -> tuple[Any, Any]:
            def read(completion: Any, data: bytes | None) -> None:
                try:
                    n = completion.get_return_value()
                    # (The binding leaves an empty object's buffer at full length: trust n.)
                    found[i] = data[:n] if data is not None and n >= 0 else None
                finally:
                    done()  # always, or the batch would wait for it forever
            return io.aio_read(unique[i].hex(), size, 0, read), None

        codes = self._batch(len(unique), start)
        raise_failed(codes, "cannot read blocks", ok=(0, -errno.ENOENT))
        absent = [h for h, code in zip(unique, codes, strict=True) if code == -errno.ENOENT]
        if absent:
            raise NotFound(f"{len(absent)} block(s) not found", absent)
        by_hash: dict[bytes, bytes] = {}
        for h, data in zip(unique, found, strict=True):
            assert data is not None
            if len(data) == size:  # there may be more: read the rest
                data += self._read_range(h, size, 1 << 62)
            by_hash[h] = data
        return [by_hash[h] for h in hashes]

    def _read_range(self, hash_: bytes, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        while length > 0:
            want = min(length, self._read_size)
            try:
                chunk: bytes = self._call(self._ioctx.read, hash_.hex(), want, offset)
            except self._rados.ObjectNotFound:
                raise NotFound("block not found", [hash_]) from None
            except self._rados.Error as exc:
                raise rados_error(errno_of(exc), "cannot read block") from exc
            parts.append(chunk)
            if len(chunk) < want:
                break
            offset += want
            length -= want
        return b"".join(parts)

    def read(self, hash_: bytes, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        if length == 0:
            # A RADOS read of length 0 means "to the end": ask only whether it exists.
            if self.missing([hash_]):
                raise NotFound("block not found", [hash_])
            return b""
        return self._read_range(hash_, offset, length)

    def _stat_many(self, hashes: Sequence[bytes], io: Any = None) -> list[int | None]:
        """The size of each blob (of the ioctx `io`, by default the blocks'), None if absent."""
        if not hashes:
            return []
        sizes: list[int | None] = self._off_loop(
            stat_objects, self._conn, io or self._ioctx, [h.hex() for h in hashes],
            "cannot stat blocks")
        return sizes

    def sizes(self, hashes: Sequence[bytes]) -> list[int | None]:
        unique = list(dict.fromkeys(hashes))
        found = dict(zip(unique, self._stat_many(unique), strict=True))
        return [found[h] for h in hashes]

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        unique = list(dict.fromkeys(hashes))
        return [h for h, size in zip(unique, self._stat_many(unique), strict=True)
                if size is None]

    # -- quarantine ---------------------------------------------------------------------------

    def _quarantine_io(self) -> tuple[Any, Any]:
        """(blocks, quarantine) ioctxs for quarantines alone; call with the lock held."""
        if self._quarantine_ioctxs is None:
            blocks = self._conn.ioctx(self.namespace)
            quarantine = self._conn.ioctx(self.namespace + QUARANTINE_SUFFIX)
            self._quarantine_ioctxs = (blocks, quarantine)
        return self._quarantine_ioctxs

    def _open_quarantine_io(self) -> Any:
        with self._quarantine_lock:
            return self._quarantine_io()[1]

    def _generation(self, io: Any, name: str) -> str:
        """The block's `pithos.gen` ("" for a block stored before it was kept)."""
        op = io.create_read_op()
        try:
            values, _ = io.get_omap_vals_by_keys(op, (GENERATION_KEY,))
            self._call(io.operate_read_op, op, name)
            return next((v.decode() for k, v in values if k == GENERATION_KEY), "")
        finally:
            op.release()

    def _quarantine_one(self, hash_: bytes, seen: bytes | None, size: int = 0) -> bool:
        """Move the block into the quarantine namespace if it is the damaged one: its bytes
        are `seen`, or (`seen` None) its size is not `size`; whether it was moved."""
        rados = self._rados
        name = hash_.hex()
        with self._quarantine_lock:
            io, qio = self._quarantine_io()
            for _ in range(_QUARANTINE_TRIES):
                try:
                    generation = self._generation(io, name)
                    stored_size, _ = self._call(io.stat, name)
                    data = self._call(io.read, name, stored_size + 1, 0)
                    if self._generation(io, name) != generation:
                        continue  # stored afresh while we read: read that one
                except rados.ObjectNotFound:
                    return False
                if data != seen if seen is not None else len(data) == size:
                    return False  # stored afresh since it was read
                try:
                    self._call(qio.stat, name)
                    kept = True
                except rados.ObjectNotFound:
                    kept = False
                self._call(qio.write_full, name, data)
                op = io.create_write_op()
                try:
                    # The generation read (an absent key compares as ""): a block stored
                    # afresh since has another, and stays; a refresh leaves it as it was.
                    op.omap_cmp(GENERATION_KEY, generation, rados.LIBRADOS_CMPXATTR_OP_EQ)
                    op.remove()
                    self._call(io.operate_write_op, op, name)
                    return True
                except rados.Error as exc:
                    if errno_of(exc) not in (errno.ECANCELED, errno.ENOENT):
                        raise
                finally:
                    op.release()
                if not kept:  # not moved after all: no copy of ours is left behind
                    with contextlib.suppress(rados.ObjectNotFound):
                        self._call(qio.remove_object, name)
        return False

    def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, a run of blocking librados calls: off the event loop under one, as
        `_batch` waits for completions."""
        return self._offload.run(fn, *args)

    def quarantine_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        return self._off_loop(self._quarantine_many, items) if items else []

    def _quarantine_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        moved = []
        for hash_, seen in {h: (h, bytes(d)) for h, d in items}.values():
            try:
                if self._quarantine_one(hash_, seen):
                    moved.append(hash_)
            except self._rados.Error as exc:
                raise rados_error(errno_of(exc), "cannot quarantine block") from exc
        return moved

    def quarantined(self, hashes: Sequence[bytes] | None = None) -> list[bytes]:
        qio = self._off_loop(self._open_quarantine_io)
        if hashes is None:
            try:
                return sorted(bytes.fromhex(obj.key) for obj in qio.list_objects()
                              if _is_block_name(obj.key))
            except self._rados.Error as exc:
                raise rados_error(errno_of(exc), "cannot list quarantined blocks") from exc
        unique = list(dict.fromkeys(hashes))
        return [h for h, size in zip(unique, self._stat_many(unique, qio), strict=True)
                if size is not None]

    def delete_many(self, hashes: Sequence[bytes]) -> int:
        unique = list(dict.fromkeys(hashes))
        io = self._ioctx

        def start(i: int, done: Done) -> tuple[Any, Any]:
            return io.aio_remove(unique[i].hex(), done), None

        codes = self._batch(len(unique), start)
        raise_failed(codes, "cannot delete blocks", ok=(0, -errno.ENOENT))
        return sum(1 for code in codes if code == 0)

    def delete_if_put_before(self, hashes: Sequence[bytes], cutoff: float) -> list[bytes]:
        unique = list(dict.fromkeys(hashes))
        cutoff_ns = int(cutoff * 1e9)
        if cutoff_ns < 10 ** (_PUT_NS_DIGITS - 1):
            return []  # before 2001: nothing this store put is older
        if cutoff_ns >= 10 ** _PUT_NS_DIGITS:
            raise InvalidArgument(f"cutoff {cutoff} is after the year 2286")
        limit = str(cutoff_ns)
        io = self._ioctx
        rados = self._rados

        def start(i: int, done: Done) -> tuple[Any, Any]:
            op = io.create_write_op()
            # Dated (a block not put by this store has no time: never removed), and older.
            op.omap_cmp(PUT_TIME_KEY, "", rados.LIBRADOS_CMPXATTR_OP_GT)
            op.omap_cmp(PUT_TIME_KEY, limit, rados.LIBRADOS_CMPXATTR_OP_LT)
            op.remove()
            return io.operate_aio_write_op(op, unique[i].hex(), done), op

        codes = self._batch(len(unique), start)
        raise_failed(codes, "cannot delete blocks", ok=(0, -errno.ENOENT, -errno.ECANCELED))
        return [h for h, code in zip(unique, codes, strict=True) if code == 0]

    def iterate(self, start_after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        # RADOS lists objects in placement order, not by name: the names are listed, kept
        # (32 bytes each, about 80 bytes with Python's overhead: 10 million blocks, i.e. 40 TB
        # of 4 MiB blocks, take 800 MB) and sorted; the sizes are then fetched in batches.
        after = b"" if start_after is None else start_after
        try:
            names = sorted(h for h in (bytes.fromhex(obj.key)
                                       for obj in self._ioctx.list_objects()
                                       if _is_block_name(obj.key))
                           if h > after)
        except self._rados.Error as exc:
            raise rados_error(errno_of(exc), "cannot list blocks") from exc
        for i in range(0, len(names), _ITERATE_STAT_BATCH):
            batch = names[i:i + _ITERATE_STAT_BATCH]
            for h, size in zip(batch, self._stat_many(batch), strict=True):
                if size is not None:  # else deleted since it was listed
                    yield h, size

    def age_s(self, hashes: Sequence[bytes]) -> list[float | None]:
        put_ns: list[int | None] = [None] * len(hashes)
        iterators: list[Any] = [None] * len(hashes)
        io = self._ioctx

        def start(i: int, done: Done) -> tuple[Any, Any]:
            op = io.create_read_op()
            iterators[i], _ = io.get_omap_vals_by_keys(op, (PUT_TIME_KEY,))
            return io.operate_aio_read_op(op, hashes[i].hex(), done), op

        codes = self._batch(len(hashes), start)
        raise_failed(codes, "cannot read block ages", ok=(0, -errno.ENOENT))
        now_ns = time.time_ns()
        ages: list[float | None] = []
        for i, code in enumerate(codes):
            if code == -errno.ENOENT:
                ages.append(None)
                continue
            for key, value in iterators[i]:
                if key == PUT_TIME_KEY:
                    put_ns[i] = int(value)
            # An object not put by this store has no time: call it new, so that a sweep by
            # age never removes what it cannot date.
            stamp = put_ns[i]
            ages.append(0.0 if stamp is None else max(0.0, (now_ns - stamp) / 1e9))
        return ages

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ioctx in self._quarantine_ioctxs or ():
            ioctx.close()
        self._ioctx.close()
        self._conn.shutdown()
        if self._own_offload:
            self._offload.close()


class _PiecesWriter(BufferedBlockWriter):
    """A streamed upload's pieces kept as they came and written at commit by one op, a write
    of the first and appends of the rest: joined first, each 4 MiB block was copied once more
    on the worker (a tenth of its CPU for a large PUT on RADOS was such copies)."""

    def __init__(self, store: RadosBlockStore) -> None:
        super().__init__(store)
        self._rados_store = store

    def commit(self, hash_: bytes) -> None:
        pieces, self._pieces = self._pieces, []
        self._rados_store._put_pieces([hash_], [pieces])

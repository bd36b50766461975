"""Volume heads and deltas in RADOS: every host sharing the Ceph cluster sees the same volumes.

`RadosHeadStore` and `RadosDeltaStore` implement the interfaces of heads.py and delta.py over
one pool and one namespace (by default `<block namespace>.volumes`, beside the block store's
namespace, see `open_rados_stores`).  Layout of the namespace:

    index                     omap: one key per head name (value: the nonce of its creation)
    head/<name>               the head, JSON (as head.json locally); omap `v` = its version
                              (the compare-and-swap guard), `n` = the creation nonce, `holder`
                              = the lease holder's client (JSON: addr, client, cookie, desc)
                              from its acquire until its clean release
    lease/<name>              the writer lease: an exclusive RADOS lock (`archipelago.lease`)
                              with a cookie and a duration
    delta/<name>              omap: one key per delta generation that may exist
    bits/<name>/<gen>         the overlay bitmap of one generation (one bit per 4 KiB sector);
                              omap `c.<chunk>`: chunk objects that may exist, `w.<chunk>`:
                              chunks written since the delta was last opened (to repair)
    data/<name>/<gen>/<chunk> the volume's own data for the 4 MiB chunk `<chunk>` (8 hex
                              digits) of the volume, in place, sparse; absent chunks read zeros

Heads (MUST): a put is one RADOS write op on `head/<name>`: `omap_cmp(v == expected)` then the
new JSON and version; the OSD applies the op atomically or not at all (ECANCELED: the version
moved; ENOENT: the head is gone), and acknowledges it once durable.  A create is an exclusive
create (EEXIST: the name is taken) after the name is put in `index` (so `names` is one omap
listing, not a scan of the pool); a delete removes the head under the same guard, then its index
key if it still carries the head's nonce.  `names` skips index keys whose head does not exist
(left by a crash between the two steps).

Leases (MUST): `acquire` takes the lock of `lease/<name>` with a fresh cookie and a duration of
`lease_s` seconds (a second writer gets EBUSY: Conflict; a holder that dies loses the lock when
the duration runs out), fences the previous holder if it never released (Fencing, below), then
bumps the head's token and records itself as the holder by compare-and-swap.  A thread renews the
locks every `lease_s / 3` (MUST_RENEW: a lock that expired or was taken is lost, never quietly
re-taken).  A holder trusts its lease only until `lease_s` after it sent its last successful
renewal, so it stops writing before the lock can expire on the OSD.  `check` (before every
write, zero and flush) costs nothing while the head is unchanged: the holder watches
`head/<name>`, every put notifies the watchers (and waits for their acks, up to a timeout), and
the first check after a notification re-reads the token: LeaseLost if it moved.  Without a
working watch, every check reads the head.

Fencing (MUST): a check cannot recall a write that a stalled holder (SIGSTOP, a long pause, a
partition) had already checked, or queued in librados: it could land after the next holder's.
So the holder records its RADOS client instance (its address: the one client that sends its
lock, head and delta ops) in the head's omap key `holder`, in the op that bumps the token, and
a release clears it (only while it is still its own) before unlocking, once the holder's writes
are finished (Volume.close closes the delta first).  After taking the lock, `acquire` reads
`holder`: a record left there means the previous holder never released (its lock expired or was
broken).  Unless it is this very client instance (one client's ops to one object apply in
order), `acquire` blocklists that address for `BLOCKLIST_S` (`osd blocklist add`) and waits for
the latest OSD map, then bumps the token under a guard on `holder` too (a record that changed
meanwhile is read again).  The OSDs reject every op of the fenced client from then on, those it
sent before included, and an op of ours makes an OSD first catch up with our map.  The fenced
holder's ops fail with ESHUTDOWN: its lease is lost, its delta poisoned.  A blocklist that fails
(the cephx user may not: docs/ceph.md) fails the acquire: never a takeover unfenced.  Not
covered: a thread stalled between its check and its send for longer than the entry lasts (an
op already queued in librados dies after `op_timeout_s`), and, within one process, a stalled
write of an old handle after the volume was opened again (the NBD server opens a volume again
only after all its connections ended).

Deltas (MUST), the local invariants of delta.py in RADOS terms:
- Writes are asynchronous (up to `MAX_INFLIGHT_OPS` / `MAX_INFLIGHT_BYTES` in flight); RADOS
  applies the writes of one client to one object in order, and a read waits for the writes in
  flight on its chunks.  A failed write poisons the delta: every later write and sync raises.
- Before the first write to a chunk since the delta was opened, `c.<chunk>` and `w.<chunk>` are
  set on the bitmap object (durably, one op): so after a crash the chunks that may hold data of
  unflushed writes are known without listing the pool.  Opening repairs every `w.` chunk (the
  sectors under clear bits are zeroed, a chunk with no set bit is removed), then drops the `w.`
  keys: a clear bit has a hole under it again.
- FLUSH: copy the bitmap pages changed since the last flush, wait until every write submitted
  before the copy is acknowledged (durable), then write the copied pages (one atomic write op
  per 4 MiB of pages).  A bit is never durable before the data it points to.
- Zero/trim: a whole chunk is removed; part of one is zeroed with a `zero` op (which frees the
  space, and truncates when the range reaches the object's end).

Python binding facts this module relies on (python3-rados 16.2):
- `WriteOp.zero(offset, length)` passes its arguments to `rados_write_op_zero` swapped, and a
  zero op of length 0 makes the OSD abort (`ceph_assert(op.extent.length)`).  `RadosPool.zero`
  finds the order the binding uses once per connection with a harmless probe, and never sends a
  zero of length 0.
- `lock_exclusive` creates the locked object if absent; EEXIST means the same client already
  holds the lock with that cookie, EBUSY that another does.
- `Watch.close` whose unwatch fails (ESHUTDOWN once blocklisted, a timeout) raises, but
  librados has freed the watch all the same; the binding then unwatches it again when the
  object is collected: a use after free that kills the process (SIGSEGV, or abort on
  std::bad_alloc).  A watch whose close failed is held by its `RadosPool` until the connection
  is shut down (collected then, it only complains that the connection is shut down).
- `mon_command` of `osd blocklist add` refuses an integer `expire` (EINVAL, "bad or missing
  field 'expire'"): it must be a JSON float.  `osd blocklist ls` in JSON answers two documents
  back to back, the addresses then the (empty) ranges: `[...][]`.
- `Rados.get_addrs()` is the client instance's address as the OSDs and `rados lock info` show
  it (`127.0.0.1:0/<nonce>`); the binding has no `list_lockers`.  Ops of a blocklisted client
  raise `ConnectionShutdown` (errno ESHUTDOWN); once the entry is removed or expires, the same
  connection works again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from archipelago import overlay
from archipelago.delta import BITMAP_PAGE, SECTOR_SHIFT, Delta, DeltaStore, bitmap_bytes, sectors
from archipelago.heads import Head, HeadStore, Lease, LeaseLost, check_name
from pithos.blocker.rados import RADOS_MISSING
from pithos.core.errors import (
    BackendError,
    Conflict,
    InvalidArgument,
    NoSpace,
    NotFound,
    PithosError,
    VersionConflict,
)

CHUNK_SIZE = 4 * 1024 * 1024  # bytes of the volume per data object
assert CHUNK_SIZE % BITMAP_PAGE == 0 and CHUNK_SIZE >> SECTOR_SHIFT << SECTOR_SHIFT == CHUNK_SIZE
LOCK_NAME = "archipelago.lease"
DEFAULT_LEASE_S = 15
NOTIFY_TIMEOUT_MS = 3000
# Seconds the OSD keeps a watch whose client went silent.  librados pings its watches every
# 5 s (the objecter's tick), so less than that breaks live watches; a dead holder's watch
# makes notifies wait NOTIFY_TIMEOUT_MS until it times out.
WATCH_TIMEOUT_S = 10
MAX_INFLIGHT_OPS = 64
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
_BITS_OP_BYTES = 4 * 1024 * 1024  # bitmap bytes per write op (far below osd_max_write_size)
_READ_PIECE = 16 * 1024 * 1024
_HEAD_READ = 64 * 1024
_OMAP_PAGE = 1000
_LOCK_FLAG_MUST_RENEW = 0x2  # LIBRADOS_LOCK_FLAG_MUST_RENEW (not exported by the binding)
HOLDER_KEY = "holder"  # omap key of head/<name>: the lease holder's client (see Fencing)
# Seconds a fenced client stays blocklisted: the mon's default.  Long enough that no op of the
# fenced client is still alive when it ends (librados fails an op after op_timeout_s).
BLOCKLIST_S = 3600
_TRANSIENT = frozenset({errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT,
                        errno.ENOTCONN, errno.ECONNRESET, errno.ECONNREFUSED,
                        errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def _errno_of(exc: BaseException) -> int:
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO


class Blocklisted(BackendError):
    """The OSDs reject this client (EBLOCKLISTED): another host fenced it to take over a
    volume it held (see Fencing)."""


def _error(code: int, what: str) -> PithosError:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return NoSpace(f"{what}: {os.strerror(code)}")
    if code == errno.ESHUTDOWN:  # EBLOCKLISTED
        return Blocklisted(f"{what}: this client is blocklisted: another host took over a "
                           "volume it held", transient=False)
    return BackendError(f"{what}: {os.strerror(code)} (errno {code})",
                        transient=code in _TRANSIENT)


def volumes_namespace(block_namespace: str) -> str:
    """The namespace of the heads and deltas that go with a block store's namespace."""
    return f"{block_namespace}.volumes" if block_namespace else "volumes"


class RadosPool:
    """One connection to a Ceph cluster and one of its pools, shared by the stores made over
    it.  Reference-counted: the creator and every store `retain` it and `close` it; the
    connection ends with the last close."""

    def __init__(self, pool: str, conf_path: str | os.PathLike[str] | None = None, *,
                 client_id: str = "admin", op_timeout_s: int = 30,
                 connect_timeout_s: int = 30) -> None:
        try:
            import rados
        except ImportError as exc:
            raise BackendError(RADOS_MISSING, transient=False) from exc
        self.rados: Any = rados
        self.pool = pool
        timeout = str(int(op_timeout_s))
        self.cluster = rados.Rados(
            conffile=os.fspath(conf_path) if conf_path is not None else "",
            rados_id=client_id,
            conf={"rados_osd_op_timeout": timeout, "rados_mon_op_timeout": timeout,
                  "client_mount_timeout": str(int(connect_timeout_s))})
        try:
            self.cluster.connect(timeout=int(connect_timeout_s))
        except rados.Error as exc:
            self.cluster.shutdown()
            raise BackendError(f"cannot connect to the Ceph cluster: {exc}",
                               transient=True) from exc
        if not self.cluster.pool_exists(pool):
            self.cluster.shutdown()
            raise BackendError(f"no RADOS pool named {pool!r}", transient=False)
        # This client instance as the OSDs know it: what a lease holder records, and what
        # another host blocklists to fence it (see Fencing in the module's docstring).
        self.addr = str(self.cluster.get_addrs())
        self.client = f"client.{self.cluster.get_instance_id()}"
        self._refs = 1
        self._lock = threading.Lock()
        self._zero_swapped: bool | None = None
        self._dead_watches: list[Any] = []  # see keep_watch

    @classmethod
    def from_url(cls, url: str) -> tuple[RadosPool, str]:
        """The pool of a `rados://POOL?conf=...&namespace=NS&id=...` block store URL, and the
        block store's namespace."""
        parts = urlsplit(url)
        if parts.scheme != "rados":
            raise InvalidArgument(f"not a rados:// URL: {url!r}")
        pool = unquote(parts.netloc or parts.path.lstrip("/"))
        if not pool:
            raise InvalidArgument(f"no pool in {url!r} (rados://POOL?conf=...)")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"conf", "namespace", "id"}
        if unknown:
            raise InvalidArgument(f"unknown rados URL parameter(s): {', '.join(sorted(unknown))}")
        return (cls(pool, query.get("conf"), client_id=query.get("id", "admin")),
                query.get("namespace", ""))

    def ioctx(self, namespace: str) -> Any:
        try:
            io = self.cluster.open_ioctx(self.pool)
        except self.rados.Error as exc:
            raise _error(_errno_of(exc), f"cannot open the pool {self.pool!r}") from exc
        io.set_namespace(namespace)
        return io

    def retain(self) -> RadosPool:
        with self._lock:
            if self._refs <= 0:
                raise BackendError("the RADOS connection is closed")
            self._refs += 1
        return self

    def close(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self.cluster.shutdown()
            if self._dead_watches:
                # Collected now, they no longer touch librados; each only complains, through
                # sys.unraisablehook, that the connection is shut down.
                hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
                try:
                    self._dead_watches.clear()
                finally:
                    sys.unraisablehook = hook

    def keep_watch(self, watch: Any) -> None:
        """Hold a watch whose close failed until the connection is shut down (see the
        module's docstring: collecting it before would crash the process)."""
        with self._lock:
            self._dead_watches.append(watch)

    def blocklist(self, addr: str, expire_s: float = BLOCKLIST_S) -> None:
        """Fence the client instance at `addr`: the OSDs reject its every op once they have
        the OSD map with the entry.  Returns once this client has that map, so every op it
        sends afterwards makes an OSD wait for the map first.  Needs the mon cap
        `allow command "osd blocklist" with blocklistop=add` (docs/ceph.md)."""
        if addr == self.addr:
            raise ValueError("a client never blocklists itself")
        cmd = json.dumps({"prefix": "osd blocklist", "blocklistop": "add", "addr": addr,
                          "expire": float(expire_s)})  # an int is refused (EINVAL)
        try:
            code, _, status = self.cluster.mon_command(cmd, b"")
        except self.rados.Error as exc:
            code, status = -_errno_of(exc), str(exc)
        if code < 0:
            hint = (" (the cephx user needs the mon cap 'allow command \"osd blocklist\" with "
                    "blocklistop=add', see docs/ceph.md)" if code in (-errno.EACCES, -errno.EPERM)
                    else "")
            raise BackendError(f"cannot blocklist {addr}: {status or os.strerror(-code)}{hint}",
                               transient=-code in _TRANSIENT)
        try:
            code = self.cluster.wait_for_latest_osdmap()
        except self.rados.Error as exc:
            code = -_errno_of(exc)
        if code < 0:
            raise _error(-code, "cannot get the OSD map after a blocklist")

    def zero(self, io: Any, op: Any, offset: int, length: int) -> None:
        """Add "zero [offset, offset + length)" to a write op, whatever order the binding
        passes the arguments in (see the module's docstring).  `length` > 0."""
        if length <= 0:
            raise ValueError("a zero op of length 0 would abort the OSD")
        if self._zero_swapped is None:
            self._zero_swapped = self._probe_zero(io)
        if self._zero_swapped:
            op.zero(length, offset)
        else:
            op.zero(offset, length)

    def _probe_zero(self, io: Any) -> bool:
        rados = self.rados
        name = f"probe/zero/{uuid.uuid4().hex}"
        try:
            io.write_full(name, b"AAAAAAAA")
            op = io.create_write_op()
            try:
                op.zero(1, 2)  # [1, 3) if right, [2, 3) if swapped: never a length of 0
                io.operate_write_op(op, name)
            finally:
                op.release()
            got = io.read(name, 16)
        except rados.Error as exc:
            raise _error(_errno_of(exc), "cannot probe the zero op") from exc
        finally:
            with contextlib.suppress(rados.Error):
                io.remove_object(name)
        if got == b"A\0\0AAAAA":
            return False
        if got == b"AA\0AAAAA":
            return True
        raise BackendError(f"the rados binding's zero op did something unexpected: {got!r}")


def _omap_items(pool: RadosPool, io: Any, obj: str, prefix: str = ""
                ) -> Iterator[tuple[str, bytes]]:
    """Every omap (key, value) of `obj` whose key starts with `prefix`, in key order; nothing
    if the object does not exist."""
    rados = pool.rados
    after = ""
    while True:
        op = io.create_read_op()
        try:
            it, _ = io.get_omap_vals(op, after, prefix, _OMAP_PAGE)
            io.operate_read_op(op, obj)
            items = [(k, v) for k, v in it]
        except rados.ObjectNotFound:
            return
        except rados.Error as exc:
            raise _error(_errno_of(exc), f"cannot list {obj}") from exc
        finally:
            op.release()
        yield from items
        if len(items) < _OMAP_PAGE:
            return
        after = items[-1][0]


def _operate(pool: RadosPool, io: Any, obj: str, build: Callable[[Any], object]) -> int:
    """Run one write op; its return code (0 or a negative errno)."""
    op = io.create_write_op()
    try:
        build(op)
        io.operate_write_op(op, obj)
        return 0
    except pool.rados.Error as exc:
        return -_errno_of(exc)
    finally:
        op.release()


def _omap_get(pool: RadosPool, io: Any, obj: str, keys: Sequence[str]) -> dict[str, bytes]:
    """The values of these omap keys of `obj` (absent keys, or an absent object: left out)."""
    op = io.create_read_op()
    try:
        it, _ = io.get_omap_vals_by_keys(op, tuple(keys))
        io.operate_read_op(op, obj)
        return {k: v for k, v in it}
    except pool.rados.ObjectNotFound:
        return {}
    except pool.rados.Error as exc:
        raise _error(_errno_of(exc), f"cannot read {obj}") from exc
    finally:
        op.release()


def _wait_all(pool: RadosPool, io: Any, names: Sequence[str],
              start: Callable[[Any, str, Callable[..., None]], Any]) -> list[int]:
    """Run one aio op per name, `start(io, name, oncomplete)`, at most MAX_INFLIGHT_OPS at a
    time; their return codes (0 or a negative errno), in order."""
    codes = [0] * len(names)
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()
    inflight: dict[int, Any] = {}

    def reap() -> None:
        i = finished.get()
        completion = inflight.pop(i)
        completion.wait_for_complete_and_cb()
        codes[i] = completion.get_return_value()

    try:
        for i, name in enumerate(names):
            while len(inflight) >= MAX_INFLIGHT_OPS:
                reap()
            try:
                inflight[i] = start(io, name, lambda *_, i=i: finished.put(i))
            except pool.rados.Error as exc:
                codes[i] = -_errno_of(exc)
    finally:
        while inflight:  # no op may outlive the buffers and callbacks it uses
            reap()
    return codes


def _remove_objects(pool: RadosPool, io: Any, names: Sequence[str], what: str) -> None:
    codes = _wait_all(pool, io, names, lambda io, n, cb: io.aio_remove(n, oncomplete=cb))
    bad = [c for c in codes if c < 0 and c != -errno.ENOENT]
    if bad:
        raise _error(-bad[0], f"cannot remove {what}")


def _stat_objects(pool: RadosPool, io: Any, names: Sequence[str]) -> list[int | None]:
    """The size of each object, None if absent."""
    sizes: list[int | None] = [None] * len(names)
    index = {n: i for i, n in enumerate(names)}

    def start(io: Any, name: str, cb: Callable[..., None]) -> Any:
        def stat(completion: Any, size: int | None, mtime: Any) -> None:
            sizes[index[name]] = size
            cb()
        return io.aio_stat(name, stat)

    codes = _wait_all(pool, io, names, start)
    bad = [c for c in codes if c < 0 and c != -errno.ENOENT]
    if bad:
        raise _error(-bad[0], "cannot stat objects")
    return [None if c == -errno.ENOENT else s for c, s in zip(codes, sizes, strict=True)]


# -- heads and leases ------------------------------------------------------------------------

class RadosLease(Lease):
    """A writer lease: the RADOS lock on `lease/<name>`, renewed by the store's thread, plus
    the fencing token of the head, re-read after every notification of a change."""

    def __init__(self, store: RadosHeadStore, name: str, cookie: str,
                 valid_until: float) -> None:
        self._store = store
        self.name = name
        self.token = 0
        self.cookie = cookie
        self.holder: str | None = None  # our record in the head's `holder` key, once written
        self._valid_until = valid_until
        self._lost: str | None = None
        self._released = False
        self._epoch = 0  # bumped by every notification on the head
        self._checked_epoch = -1  # epoch of the last successful read of the token
        self._watch: Any = None
        self._watch_ok = False
        self._renew_lock = threading.Lock()  # renewals, re-watching and release, one at a time

    # The watch callbacks run on librados' thread: only flags and counters here.
    def _notified(self, *args: Any) -> None:
        self._epoch += 1

    def _watch_error(self, *args: Any) -> None:
        self._watch_ok = False
        self._epoch += 1

    def _start_watch(self) -> None:
        store = self._store
        # The epoch moves before (a check meanwhile reads the head) and after (a put between
        # that read and the registration is caught by the next check).  _watch_ok is set
        # first: an error of the new watch may arrive before watch() returns.
        self._epoch += 1
        self._watch_ok = True
        try:
            self._watch = store.io.watch(store.head_obj(self.name), self._notified,
                                         self._watch_error, max(store.lease_s, WATCH_TIMEOUT_S))
        except store.pool.rados.Error:
            self._watch, self._watch_ok = None, False  # every check reads the head then
        self._epoch += 1

    def _close_watch(self) -> None:
        watch, self._watch, self._watch_ok = self._watch, None, False
        if watch is not None:
            try:
                watch.close()
            except Exception:
                self._store.pool.keep_watch(watch)

    def renew(self) -> bool:
        """Extend the lock by `lease_s`.  False (and the lease is lost) when the lock expired
        or another writer holds it; a transient failure leaves the validity running out."""
        with self._renew_lock:
            if self._released or self._lost:
                return False
            store = self._store
            rados = store.pool.rados
            sent = time.monotonic()
            try:
                store.io.lock_exclusive(store.lease_obj(self.name), LOCK_NAME, self.cookie,
                                        store.lock_desc, store.lease_s, _LOCK_FLAG_MUST_RENEW)
            except (rados.ObjectBusy, rados.ObjectNotFound):
                self._lost = f"lease on {self.name} expired or was taken over"
                return False
            except rados.Error as exc:
                if _errno_of(exc) == errno.ESHUTDOWN:
                    self._lost = (f"lease on {self.name} was taken over: this client is "
                                  "blocklisted")
                return False
            self._valid_until = sent + store.lease_s
            if not self._watch_ok:  # watch again after an error; the next check reads
                self._close_watch()
                self._start_watch()
            return True

    def check(self) -> None:
        if self._released:
            raise LeaseLost(f"lease on {self.name} was released")
        if self._lost is None and time.monotonic() >= self._valid_until - self._store.margin_s:
            self.renew()  # the renewal thread is late: try once here
            if time.monotonic() >= self._valid_until and self._lost is None:
                self._lost = f"lease on {self.name} could not be renewed in time"
        if self._lost is not None:
            raise LeaseLost(self._lost)
        epoch = self._epoch
        if self._watch_ok and epoch == self._checked_epoch:
            return  # no change to the head since the token was last read
        try:
            head = self._store.get(self.name)
        except NotFound:
            self._lost = f"volume {self.name} was deleted"
            raise LeaseLost(self._lost) from None
        except Blocklisted as exc:  # fenced: the renewal thread may not have seen it yet
            self._lost = f"lease on {self.name} was taken over: {exc}"
            raise LeaseLost(self._lost) from exc
        if head.token != self.token:
            self._lost = (f"lease on {self.name} was taken over (token {head.token}, "
                          f"ours {self.token})")
            raise LeaseLost(self._lost)
        self._checked_epoch = epoch

    def release(self) -> None:
        """Give the lease up.  The holder's writes must be finished (Volume.close and
        Volumes.close close the delta first): after a clean release nobody fences them."""
        with self._renew_lock:
            if self._released:
                return
            self._released = True
            store = self._store
            store._forget(self)
            self._close_watch()
            if self.holder is not None:
                # A clean release: our record goes before the lock, so the next holder, which
                # reads it once it has the lock, does not fence us.  Only if it is still ours
                # (ECANCELED: a new holder's; ESHUTDOWN: we were fenced already).
                holder = self.holder
                _operate(store.pool, store.io, store.head_obj(self.name), lambda op: (
                    op.omap_cmp(HOLDER_KEY, holder, store.pool.rados.LIBRADOS_CMPXATTR_OP_EQ),
                    store.io.remove_omap_keys(op, (HOLDER_KEY,))))
            with contextlib.suppress(store.pool.rados.Error):
                store.io.unlock(store.lease_obj(self.name), LOCK_NAME, self.cookie)


class RadosHeadStore(HeadStore):
    """Heads, their index and the writer leases in one namespace of a RADOS pool."""

    def __init__(self, pool: RadosPool, namespace: str = "volumes", *,
                 lease_s: int = DEFAULT_LEASE_S) -> None:
        if int(lease_s) < 2:
            raise InvalidArgument("a lease lasts at least 2 seconds (locks take whole seconds)")
        self.io = pool.ioctx(namespace)
        self.pool = pool.retain()
        self.namespace = namespace
        self.lease_s = int(lease_s)
        self.margin_s = min(1.0, self.lease_s / 10)
        self.lock_desc = f"archipelago on {socket.gethostname()} pid {os.getpid()}"
        self._leases: set[RadosLease] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._closed = False

    # -- object names ------------------------------------------------------------------------

    INDEX = "index"

    @staticmethod
    def head_obj(name: str) -> str:
        return f"head/{check_name(name)}"

    @staticmethod
    def lease_obj(name: str) -> str:
        return f"lease/{check_name(name)}"

    # -- reads -------------------------------------------------------------------------------

    def get(self, name: str) -> Head:
        rados = self.pool.rados
        obj = self.head_obj(name)
        try:
            data = self.io.read(obj, _HEAD_READ)
            while len(data) % _HEAD_READ == 0 and data:  # a head longer than one read
                more = self.io.read(obj, _HEAD_READ, len(data))
                if not more:
                    break
                data += more
        except rados.ObjectNotFound:
            raise NotFound(f"no volume or snapshot named {name!r}") from None
        except rados.Error as exc:
            raise _error(_errno_of(exc), f"cannot read the head of {name!r}") from exc
        try:
            return Head.from_json(json.loads(data))
        except (ValueError, TypeError) as exc:
            raise BackendError(f"head of {name!r} is unreadable: {exc}") from exc

    def names(self) -> list[str]:
        listed = sorted(k for k, _ in _omap_items(self.pool, self.io, self.INDEX))
        sizes = _stat_objects(self.pool, self.io, [f"head/{n}" for n in listed])
        return [n for n, size in zip(listed, sizes, strict=True) if size is not None]

    # -- compare-and-swap --------------------------------------------------------------------

    def _index_add(self, name: str, nonce: str) -> None:
        """Put `name` in the index (VersionConflict if its head already exists)."""
        rados = self.pool.rados
        eq = rados.LIBRADOS_CMPXATTR_OP_EQ
        for _ in range(10):
            code = _operate(self.pool, self.io, self.INDEX, lambda op: (
                op.omap_cmp(name, "", eq),  # an absent key compares as empty
                self.io.set_omap(op, (name,), (nonce.encode(),))))
            if code == 0:
                return
            if code == -errno.ENOENT:  # no index yet
                code = _operate(self.pool, self.io, self.INDEX,
                                lambda op: op.new(rados.LIBRADOS_CREATE_IDEMPOTENT))
                if code < 0:
                    raise _error(-code, "cannot create the volume index")
                continue
            if code != -errno.ECANCELED:
                raise _error(-code, f"cannot index {name!r}")
            # Listed already: the head exists, or a crash (or a racing create) left the key.
            old = _omap_get(self.pool, self.io, self.INDEX, (name,)).get(name)
            if old is None:
                continue
            with contextlib.suppress(NotFound):
                self.get(name)
                raise VersionConflict(f"{name!r} already exists")
            code = _operate(self.pool, self.io, self.INDEX, lambda op, old=old: (
                op.omap_cmp(name, old.decode(), eq),
                self.io.set_omap(op, (name,), (nonce.encode(),))))
            if code == 0:
                return
            if code not in (-errno.ECANCELED, -errno.ENOENT):
                raise _error(-code, f"cannot index {name!r}")
        raise BackendError(f"cannot index {name!r}: too much contention", transient=True)

    def put(self, head: Head, expected_version: int | None) -> Head:
        rados = self.pool.rados
        obj = self.head_obj(head.name)
        if expected_version is None:
            nonce = uuid.uuid4().hex
            self._index_add(head.name, nonce)
            stored = head.replace(version=1)
            body = json.dumps(stored.to_json(), sort_keys=True).encode()
            code = _operate(self.pool, self.io, obj, lambda op: (
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE),
                op.write_full(body),
                self.io.set_omap(op, ("v", "n"), (b"1", nonce.encode()))))
            if code == -errno.EEXIST:
                raise VersionConflict(f"{head.name!r} already exists")
            if code < 0:
                raise _error(-code, f"cannot create the head of {head.name!r}")
            return stored
        stored = head.replace(version=expected_version + 1)
        body = json.dumps(stored.to_json(), sort_keys=True).encode()
        code = _operate(self.pool, self.io, obj, lambda op: (
            op.omap_cmp("v", str(expected_version), rados.LIBRADOS_CMPXATTR_OP_EQ),
            op.write_full(body),
            self.io.set_omap(op, ("v",), (str(stored.version).encode(),))))
        if code == -errno.ENOENT:
            raise VersionConflict(f"{head.name!r} no longer exists")
        if code == -errno.ECANCELED:
            raise VersionConflict(f"{head.name!r} changed (expected version {expected_version})")
        if code < 0:
            raise _error(-code, f"cannot write the head of {head.name!r}")
        self._notify(obj)
        return stored

    def _notify(self, obj: str) -> None:
        """Tell the watchers of a head (its lease holder) that it changed; returns once they
        have seen it, or after NOTIFY_TIMEOUT_MS if one of them does not answer (a holder
        that died: its lock expires on its own)."""
        with contextlib.suppress(self.pool.rados.Error):
            self.io.notify(obj, "", NOTIFY_TIMEOUT_MS)

    def delete(self, name: str, expected_version: int) -> None:
        rados = self.pool.rados
        obj = self.head_obj(name)
        nonce = _omap_get(self.pool, self.io, obj, ("n",)).get("n")
        code = _operate(self.pool, self.io, obj, lambda op: (
            op.omap_cmp("v", str(expected_version), rados.LIBRADOS_CMPXATTR_OP_EQ),
            op.remove()))
        if code == -errno.ENOENT:
            raise NotFound(f"no volume or snapshot named {name!r}")
        if code == -errno.ECANCELED:
            raise VersionConflict(f"{name!r} changed (expected version {expected_version})")
        if code < 0:
            raise _error(-code, f"cannot delete the head of {name!r}")
        if nonce is not None:  # the index key goes only if it is still this head's
            _operate(self.pool, self.io, self.INDEX, lambda op: (
                op.omap_cmp(name, nonce.decode(), rados.LIBRADOS_CMPXATTR_OP_EQ),
                self.io.remove_omap_keys(op, (name,))))
        # The lock object goes too (the holder, if any, is the caller: Volumes.delete).
        with contextlib.suppress(rados.Error):
            self.io.remove_object(self.lease_obj(name))

    # -- leases ------------------------------------------------------------------------------

    def acquire(self, name: str, wait_s: float = 0.0) -> Lease:
        rados = self.pool.rados
        self.get(name)  # NotFound before the lock object is made
        cookie = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while True:
            sent = time.monotonic()
            try:
                self.io.lock_exclusive(self.lease_obj(name), LOCK_NAME, cookie,
                                       self.lock_desc, self.lease_s)
                break
            except (rados.ObjectBusy, rados.ObjectExists):
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise Conflict(f"volume {name!r} is in use: another writer holds its lease") \
                    from None
            except rados.Error as exc:
                raise _error(_errno_of(exc), f"cannot lock {name!r}") from exc
        lease = RadosLease(self, name, cookie, sent + self.lease_s)
        try:
            lease._start_watch()
            head = self._take_over(lease)
            lease.token = head.token
            self._adopt(lease)
        except BaseException:
            lease.release()
            raise
        return lease

    def _take_over(self, lease: RadosLease) -> Head:
        """With the lock held: fence the previous holder if it never released (see Fencing in
        the module's docstring), then bump the token and record us as the holder, in one
        compare-and-swap op on the head and on its `holder` key."""
        rados = self.pool.rados
        eq = rados.LIBRADOS_CMPXATTR_OP_EQ
        name = lease.name
        obj = self.head_obj(name)
        ours = json.dumps({"addr": self.pool.addr, "client": self.pool.client,
                           "cookie": lease.cookie, "desc": self.lock_desc}, sort_keys=True)
        fenced: set[str] = set()
        while True:
            head = self.get(name)
            found = _omap_get(self.pool, self.io, obj, (HOLDER_KEY,)).get(HOLDER_KEY)
            previous = found.decode() if found is not None else ""  # absent compares as ""
            if previous:
                try:
                    addr = str(json.loads(previous)["addr"])
                except (ValueError, TypeError, KeyError) as exc:
                    raise BackendError(f"the holder record of {name!r} is unreadable: "
                                       f"{previous!r}") from exc
                if addr != self.pool.addr and addr not in fenced:
                    try:
                        self.pool.blocklist(addr)
                    except BackendError as exc:
                        raise BackendError(f"cannot take {name!r} over: its previous holder "
                                           f"{previous} did not release it and could not be "
                                           f"fenced: {exc}", transient=exc.transient) from exc
                    fenced.add(addr)
                    # The monitors may have taken a while: the lock must still be ours.
                    if not lease.renew():
                        raise BackendError(f"lost the lock of {name!r} while fencing its "
                                           "previous holder", transient=True)
            new = head.replace(token=head.token + 1, version=head.version + 1)

            def build(op: Any, old: Head = head, new: Head = new, previous: str = previous
                      ) -> None:
                op.omap_cmp("v", str(old.version), eq)
                op.omap_cmp(HOLDER_KEY, previous, eq)
                op.write_full(json.dumps(new.to_json(), sort_keys=True).encode())
                self.io.set_omap(op, ("v", HOLDER_KEY),
                                 (str(new.version).encode(), ours.encode()))

            code = _operate(self.pool, self.io, obj, build)
            if code == 0:
                lease.holder = ours
                self._notify(obj)
                return new
            if code == -errno.ENOENT:
                raise NotFound(f"no volume or snapshot named {name!r}")
            if code != -errno.ECANCELED:
                raise _error(-code, f"cannot write the head of {name!r}")
            # The head changed (a resize elsewhere) or its holder record did: read both again.

    def _adopt(self, lease: RadosLease) -> None:
        with self._lock:
            if self._closed:
                raise BackendError("the head store is closed")
            self._leases.add(lease)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                                 name="archipelago-lease-renewer")
                self._renewer.start()

    def _forget(self, lease: RadosLease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _renew_loop(self) -> None:
        interval = self.lease_s / 3
        while not self._stop.wait(interval):
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                lease.renew()

    def close(self) -> None:
        """Stop renewing; release the leases still held (their volumes were not closed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            leases = list(self._leases)
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        for lease in leases:
            lease.release()
        self.io.close()
        self.pool.close()


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
        for key, _ in _omap_items(self._pool, self._io, self._bits_obj):
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
            want = min(_READ_PIECE, nbytes - pos)
            try:
                got = self._io.read(self._bits_obj, want, pos)
            except rados.ObjectNotFound:
                return  # a new generation: every bit clear
            except rados.Error as exc:
                raise _error(_errno_of(exc), f"cannot read the bitmap of {self.name!r}") \
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
        _remove_objects(pool, io, removes, f"the delta of {self.name!r}")
        ops: dict[str, Any] = {}
        ranges = dict(zeroes)

        def start(io: Any, obj: str, cb: Callable[..., None]) -> Any:
            op = ops[obj] = io.create_write_op()
            for lo, n in ranges[obj]:
                pool.zero(io, op, lo, n)
            return io.operate_aio_write_op(op, obj, oncomplete=cb)

        try:
            codes = _wait_all(pool, io, [obj for obj, _ in zeroes], start)
        finally:
            for op in ops.values():
                op.release()
        bad = [c for c in codes if c < 0 and c != -errno.ENOENT]
        if bad:
            raise _error(-bad[0], f"cannot repair the delta of {self.name!r}")
        keys = [f"w.{chunk:08x}" for chunk in chunks]
        for i in range(0, len(keys), _OMAP_PAGE):
            code = _operate(pool, io, self._bits_obj,
                            lambda op, i=i: io.remove_omap_keys(op, keys[i:i + _OMAP_PAGE]))
            if code < 0 and code != -errno.ENOENT:
                raise _error(-code, f"cannot repair the delta of {self.name!r}")

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
            self._finish(seq, -_errno_of(exc), missing_ok)

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
                self._failure = _error(-code, f"cannot write the delta of {self.name!r}")
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
            code = _operate(self._pool, self._io, self._bits_obj,
                            lambda op: self._io.set_omap(op, keys, (b"", b"")))
            if code < 0:
                raise _error(-code, f"cannot write the delta of {self.name!r}")
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
                results[pos] = (-_errno_of(exc), None)
        else:
            by_name = {self._data_obj(chunk): (lo, n, pos) for chunk, lo, n, pos in pieces}

            def start(io: Any, obj: str, cb: Callable[..., None]) -> Any:
                lo, n, pos = by_name[obj]

                def got(completion: Any, data: bytes | None) -> None:
                    code = completion.get_return_value()
                    results[pos] = (code, data[:code] if data is not None and code >= 0
                                    else None)
                    cb()
                return io.aio_read(obj, n, lo, got)

            codes = _wait_all(self._pool, self._io, list(by_name), start)
            for obj, code in zip(by_name, codes, strict=True):
                if code < 0:
                    results[by_name[obj][2]] = (code, None)
        for _, _, n, pos in pieces:
            code, data = results[pos]
            if code < 0 and code != -errno.ENOENT:
                raise _error(-code, f"cannot read the delta of {self.name!r}")
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
            while i < len(copies) and size < _BITS_OP_BYTES:
                batch.append(copies[i])
                size += len(copies[i][1])
                i += 1

            def build(op: Any, batch: list[tuple[int, bytes]] = batch) -> None:
                for page, chunk in batch:
                    op.write(chunk, page * BITMAP_PAGE)

            code = _operate(self._pool, io, self._bits_obj, build)
            if code < 0:
                raise _error(-code, f"cannot write the bitmap of {self.name!r}")

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
        code = _operate(self.pool, self.io, self.registry_obj(name),
                        lambda op: self.io.set_omap(op, (str(int(generation)),), (b"",)))
        if code < 0:
            raise _error(-code, f"cannot open the delta of {name!r}")
        delta = RadosDelta(self, name, generation, size)
        self._open.add(delta)
        return delta

    def _chunk_objects(self, name: str, generation: int) -> list[str]:
        prefix = self.data_prefix(name, generation)
        return [prefix + key[2:] for key, _ in
                _omap_items(self.pool, self.io, self.bits_obj(name, generation), "c.")]

    def remove(self, name: str, keep: int | None = None) -> None:
        registry = self.registry_obj(name)
        generations = [int(k) for k, _ in _omap_items(self.pool, self.io, registry)
                       if k.isdigit()]
        gone = [g for g in generations if keep is None or g != keep]
        for g in gone:
            # Chunks, then the bitmap naming them, then the registry key naming the bitmap:
            # an interrupted removal is finished by the next one.
            _remove_objects(self.pool, self.io, self._chunk_objects(name, g),
                            f"the delta of {name!r}")
            _remove_objects(self.pool, self.io, [self.bits_obj(name, g)],
                            f"the delta of {name!r}")
            code = _operate(self.pool, self.io, registry,
                            lambda op, g=g: self.io.remove_omap_keys(op, (str(g),)))
            if code < 0 and code != -errno.ENOENT:
                raise _error(-code, f"cannot remove the delta of {name!r}")
        if keep is None:
            _remove_objects(self.pool, self.io, [registry], f"the delta of {name!r}")

    def allocated_bytes(self, name: str, generation: int) -> int:
        objects = [self.bits_obj(name, generation), *self._chunk_objects(name, generation)]
        return sum(s or 0 for s in _stat_objects(self.pool, self.io, objects))

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


def open_rados_stores(blocks_url: str, lease_s: int = DEFAULT_LEASE_S
                      ) -> tuple[RadosHeadStore, RadosDeltaStore]:
    """The head and delta stores that go with a `rados://` block store URL: same cluster and
    pool, namespace `<block namespace>.volumes` (see `volumes_namespace`)."""
    pool, block_ns = RadosPool.from_url(blocks_url)
    try:
        ns = volumes_namespace(block_ns)
        heads = RadosHeadStore(pool, ns, lease_s=lease_s)
        try:
            return heads, RadosDeltaStore(pool, ns)
        except BaseException:
            heads.close()
            raise
    finally:
        pool.close()  # the stores hold their own references

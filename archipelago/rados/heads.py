"""Volume heads and writer leases in RADOS, with fencing (see the package docstring)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from archipelago.heads import Head, HeadStore, Lease, LeaseLost, check_name
from archipelago.rados.pool import (
    DEFAULT_LEASE_S,
    HEAD_READ_BYTES,
    HOLDER_KEY,
    LOCK_FLAG_MUST_RENEW,
    LOCK_NAME,
    NOTIFY_TIMEOUT_MS,
    WATCH_TIMEOUT_S,
    RadosPool,
)
from pithos.blocker.rados_io import (
    Blocklisted,
    errno_of,
    omap_get,
    omap_items,
    operate,
    rados_error,
    stat_objects,
)
from pithos.core.errors import (
    BackendError,
    Conflict,
    InvalidArgument,
    NotFound,
    VersionConflict,
)

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
                                        store.lock_desc, store.lease_s, LOCK_FLAG_MUST_RENEW)
            except (rados.ObjectBusy, rados.ObjectNotFound):
                self._lost = f"lease on {self.name} expired or was taken over"
                return False
            except rados.Error as exc:
                if errno_of(exc) == errno.ESHUTDOWN:
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
                operate(store.pool, store.io, store.head_obj(self.name), lambda op: (
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
            data = self.io.read(obj, HEAD_READ_BYTES)
            while len(data) % HEAD_READ_BYTES == 0 and data:  # a head longer than one read
                more = self.io.read(obj, HEAD_READ_BYTES, len(data))
                if not more:
                    break
                data += more
        except rados.ObjectNotFound:
            raise NotFound(f"no volume or snapshot named {name!r}") from None
        except rados.Error as exc:
            raise rados_error(errno_of(exc), f"cannot read the head of {name!r}") from exc
        try:
            return Head.from_json(json.loads(data))
        except (ValueError, TypeError) as exc:
            raise BackendError(f"head of {name!r} is unreadable: {exc}") from exc

    def names(self) -> list[str]:
        listed = sorted(k for k, _ in omap_items(self.pool, self.io, self.INDEX))
        sizes = stat_objects(self.pool, self.io, [f"head/{n}" for n in listed])
        return [n for n, size in zip(listed, sizes, strict=True) if size is not None]

    # -- compare-and-swap --------------------------------------------------------------------

    def _index_add(self, name: str, nonce: str) -> None:
        """Put `name` in the index (VersionConflict if its head already exists)."""
        rados = self.pool.rados
        eq = rados.LIBRADOS_CMPXATTR_OP_EQ
        for _ in range(10):
            code = operate(self.pool, self.io, self.INDEX, lambda op: (
                op.omap_cmp(name, "", eq),  # an absent key compares as empty
                self.io.set_omap(op, (name,), (nonce.encode(),))))
            if code == 0:
                return
            if code == -errno.ENOENT:  # no index yet
                code = operate(self.pool, self.io, self.INDEX,
                                lambda op: op.new(rados.LIBRADOS_CREATE_IDEMPOTENT))
                if code < 0:
                    raise rados_error(-code, "cannot create the volume index")
                continue
            if code != -errno.ECANCELED:
                raise rados_error(-code, f"cannot index {name!r}")
            # Listed already: the head exists, or a crash (or a racing create) left the key.
            old = omap_get(self.pool, self.io, self.INDEX, (name,)).get(name)
            if old is None:
                continue
            with contextlib.suppress(NotFound):
                self.get(name)
                raise VersionConflict(f"{name!r} already exists")
            code = operate(self.pool, self.io, self.INDEX, lambda op, old=old: (
                op.omap_cmp(name, old.decode(), eq),
                self.io.set_omap(op, (name,), (nonce.encode(),))))
            if code == 0:
                return
            if code not in (-errno.ECANCELED, -errno.ENOENT):
                raise rados_error(-code, f"cannot index {name!r}")
        raise BackendError(f"cannot index {name!r}: too much contention", transient=True)

    def put(self, head: Head, expected_version: int | None) -> Head:
        rados = self.pool.rados
        obj = self.head_obj(head.name)
        if expected_version is None:
            nonce = uuid.uuid4().hex
            self._index_add(head.name, nonce)
            stored = head.replace(version=1)
            body = json.dumps(stored.to_json(), sort_keys=True).encode()
            code = operate(self.pool, self.io, obj, lambda op: (
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE),
                op.write_full(body),
                self.io.set_omap(op, ("v", "n"), (b"1", nonce.encode()))))
            if code == -errno.EEXIST:
                raise VersionConflict(f"{head.name!r} already exists")
            if code < 0:
                raise rados_error(-code, f"cannot create the head of {head.name!r}")
            return stored
        stored = head.replace(version=expected_version + 1)
        body = json.dumps(stored.to_json(), sort_keys=True).encode()
        code = operate(self.pool, self.io, obj, lambda op: (
            op.omap_cmp("v", str(expected_version), rados.LIBRADOS_CMPXATTR_OP_EQ),
            op.write_full(body),
            self.io.set_omap(op, ("v",), (str(stored.version).encode(),))))
        if code == -errno.ENOENT:
            raise VersionConflict(f"{head.name!r} no longer exists")
        if code == -errno.ECANCELED:
            raise VersionConflict(f"{head.name!r} changed (expected version {expected_version})")
        if code < 0:
            raise rados_error(-code, f"cannot write the head of {head.name!r}")
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
        nonce = omap_get(self.pool, self.io, obj, ("n",)).get("n")
        code = operate(self.pool, self.io, obj, lambda op: (
            op.omap_cmp("v", str(expected_version), rados.LIBRADOS_CMPXATTR_OP_EQ),
            op.remove()))
        if code == -errno.ENOENT:
            raise NotFound(f"no volume or snapshot named {name!r}")
        if code == -errno.ECANCELED:
            raise VersionConflict(f"{name!r} changed (expected version {expected_version})")
        if code < 0:
            raise rados_error(-code, f"cannot delete the head of {name!r}")
        if nonce is not None:  # the index key goes only if it is still this head's
            operate(self.pool, self.io, self.INDEX, lambda op: (
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
                raise rados_error(errno_of(exc), f"cannot lock {name!r}") from exc
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
            found = omap_get(self.pool, self.io, obj, (HOLDER_KEY,)).get(HOLDER_KEY)
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

            code = operate(self.pool, self.io, obj, build)
            if code == 0:
                lease.holder = ours
                self._notify(obj)
                return new
            if code == -errno.ENOENT:
                raise NotFound(f"no volume or snapshot named {name!r}")
            if code != -errno.ECANCELED:
                raise rados_error(-code, f"cannot write the head of {name!r}")
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



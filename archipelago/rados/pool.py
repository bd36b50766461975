"""The pool handle of the volume stores (see the package docstring): a shared, reference-counted
connection that can fence other clients.  Connecting, errno translation, aio batches and omap
helpers are the RADOS plumbing the block store uses too (pithos/blocker/rados_io.py)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import threading
import uuid
from typing import Any

from archipelago.delta import BITMAP_PAGE, SECTOR_SHIFT
from pithos.blocker.rados_io import (
    TRANSIENT_ERRNOS,
    RadosConnection,
    errno_of,
    parse_rados_url,
    rados_error,
)
from pithos.core.errors import BackendError

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
BITS_OP_BYTES = 4 * 1024 * 1024  # bitmap bytes per write op (far below osd_max_write_size)
READ_PIECE_BYTES = 16 * 1024 * 1024
HEAD_READ_BYTES = 64 * 1024
LOCK_FLAG_MUST_RENEW = 0x2  # LIBRADOS_LOCK_FLAG_MUST_RENEW (not exported by the binding)
HOLDER_KEY = "holder"  # omap key of head/<name>: the lease holder's client (see Fencing)
# Seconds a fenced client stays blocklisted: the mon's default.  Long enough that no op of the
# fenced client is still alive when it ends (librados fails an op after op_timeout_s).
BLOCKLIST_S = 3600


def volumes_namespace(block_namespace: str) -> str:
    """The namespace of the heads and deltas that go with a block store's namespace."""
    return f"{block_namespace}.volumes" if block_namespace else "volumes"


class RadosPool(RadosConnection):
    """One connection to a Ceph cluster and one of its pools, shared by the stores made over
    it.  Reference-counted: the creator and every store `retain` it and `close` it; the
    connection ends with the last close.  Nothing is retried (a failed delta write poisons
    its delta); aio batches keep up to MAX_INFLIGHT_OPS in flight."""

    def __init__(self, pool: str, conf_path: str | os.PathLike[str] | None = None, *,
                 client_id: str = "admin", op_timeout_s: int = 30,
                 connect_timeout_s: int = 30) -> None:
        super().__init__(pool, conf_path, client_id=client_id, op_timeout_s=op_timeout_s,
                         connect_timeout_s=connect_timeout_s, queue_depth=MAX_INFLIGHT_OPS,
                         retries=0)
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
        pool, conf, namespace, client_id = parse_rados_url(url)
        return cls(pool, conf, client_id=client_id), namespace

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
            code, status = -errno_of(exc), str(exc)
        if code < 0:
            hint = (" (the cephx user needs the mon cap 'allow command \"osd blocklist\" with "
                    "blocklistop=add', see docs/ceph.md)" if code in (-errno.EACCES, -errno.EPERM)
                    else "")
            raise BackendError(f"cannot blocklist {addr}: {status or os.strerror(-code)}{hint}",
                               transient=-code in TRANSIENT_ERRNOS)
        try:
            code = self.cluster.wait_for_latest_osdmap()
        except self.rados.Error as exc:
            code = -errno_of(exc)
        if code < 0:
            raise rados_error(-code, "cannot get the OSD map after a blocklist")

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
            raise rados_error(errno_of(exc), "cannot probe the zero op") from exc
        finally:
            with contextlib.suppress(rados.Error):
                io.remove_object(name)
        if got == b"A\0\0AAAAA":
            return False
        if got == b"AA\0AAAAA":
            return True
        raise BackendError(f"the rados binding's zero op did something unexpected: {got!r}")


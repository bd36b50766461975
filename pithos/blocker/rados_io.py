"""RADOS plumbing shared by the block store (pithos/blocker/rados.py) and the volume heads and
deltas (archipelago/rados/): it holds no store, only how to talk to librados.

- `RadosConnection`: one librados client connected to a cluster (a ceph.conf path and a cephx
  user, with timeouts), checked to have its pool; `ioctx(namespace)` opens an I/O context.
  It carries the retry policy (`call` for synchronous calls, `run_aio` for batches of aio ops
  with a bounded window) and counts the ops it retried.
- `rados_error`: the one translation of a librados errno into the project's errors.
- `omap_get`, `omap_items`, `operate`, `stat_objects`, `remove_objects`: small helpers over
  one ioctx.

Errors (MUST, for every user): ENOENT is never translated here, each caller decides what an
absent object means (a missing block, an empty listing, a deleted head).  ETIMEDOUT (an op got
no answer within `op_timeout_s`), EAGAIN, EINTR, EBUSY and connection errors are transient:
retried `retries` times, `retry_delay_s` apart (doubling), then `BackendError(transient=True)`.
ENOSPC, EDQUOT and EFBIG (an object past the OSDs' `osd_max_object_size`) are `NoSpace`;
ESHUTDOWN (Ceph's EBLOCKLISTED: the OSDs refuse this client instance) is `Blocklisted`, a
permanent `BackendError`; anything else `BackendError(transient=False)`.  An unreachable
cluster is transient, a missing pool permanent.

The `rados` module (Debian's python3-rados) is imported when a connection is made, never when
this module is: the package imports on machines without Ceph, and a connection made there
raises a permanent `BackendError` whose message (`RADOS_MISSING`) names the fix.
"""

from __future__ import annotations

import _queue
import errno
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pithos.core.errors import (
    RADOS_MISSING,
    BackendError,
    InvalidArgument,
    NoSpace,
    PithosError,
)

TRANSIENT_ERRNOS = frozenset({
    errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ENOTCONN,
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EHOSTUNREACH,
    errno.ENETUNREACH,
})
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
OMAP_PAGE = 1000  # omap keys per read op of `omap_items`

# Starts op i of a batch: submits it with `done` as (or called at the end of) its completion
# callback; returns the completion and the op object to release once reaped (or None).  Raises
# the `rados.Error` of a failed submission.
Done = Callable[..., None]
Start = Callable[[int, Done], tuple[Any, Any]]


def import_rados() -> Any:
    """The `rados` module; a permanent BackendError naming the fix when it is not installed."""
    try:
        import rados
    except ImportError as exc:
        raise BackendError(RADOS_MISSING, transient=False) from exc
    return rados


def errno_of(exc: BaseException) -> int:
    """The positive errno of a `rados.Error` (EIO when it carries none)."""
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO


class Blocklisted(BackendError):
    """The OSDs reject this client (EBLOCKLISTED): another host fenced it to take over a
    volume it held (see Fencing in archipelago/rados/__init__.py), or an operator did."""


def rados_error(code: int, what: str) -> PithosError:
    """The PithosError for a positive errno (see the module's docstring)."""
    if code in NO_SPACE_ERRNOS:
        return NoSpace(f"{what}: {os.strerror(code)}")
    if code == errno.ESHUTDOWN:  # EBLOCKLISTED
        return Blocklisted(f"{what}: this client is blocklisted: another host took over a "
                           "volume it held", transient=False)
    return BackendError(f"{what}: {os.strerror(code)} (errno {code})",
                        transient=code in TRANSIENT_ERRNOS)


def raise_failed(codes: Sequence[int], what: str, ok: Sequence[int] = (0,)) -> None:
    """Raise the error of the first return code (0 or a negative errno) not in `ok`."""
    bad = [c for c in codes if c < 0 and c not in ok]
    if bad:
        raise rados_error(-bad[0], f"{what} ({len(bad)} of {len(codes)} failed)")


class RadosConnection:
    """One librados client of the cluster that `conf_path` describes (None: librados'
    default search), as the cephx user `client_id` (its keyring found through the conf),
    with the pool `pool`.

    An op that gets no answer in `op_timeout_s` fails with ETIMEDOUT; connecting gives up
    after `connect_timeout_s` (both whole seconds, as librados takes them).  `call` and
    `run_aio` retry an op that failed with a transient errno up to `retries` times,
    `retry_delay_s` apart (doubling); `retried_ops` counts those retries.  `run_aio` keeps at
    most `queue_depth` ops in flight.  Raises BackendError: transient if the cluster cannot
    be reached, permanent if the pool does not exist or `rados` is not installed.
    """

    def __init__(self, pool: str, conf_path: str | os.PathLike[str] | None = None, *,
                 client_id: str = "admin", op_timeout_s: int = 30,
                 connect_timeout_s: int = 30, queue_depth: int = 16, retries: int = 0,
                 retry_delay_s: float = 0.2) -> None:
        rados = import_rados()
        self.rados: Any = rados
        self.pool = pool
        self.queue_depth = queue_depth
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.retried_ops = 0
        timeout = str(int(op_timeout_s))
        self.cluster: Any = rados.Rados(
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
        try:
            exists = self.cluster.pool_exists(pool)
        except rados.Error as exc:
            self.cluster.shutdown()
            raise rados_error(errno_of(exc), f"cannot open the pool {pool!r}") from exc
        if not exists:
            self.cluster.shutdown()
            raise BackendError(f"no RADOS pool named {pool!r}", transient=False)

    def ioctx(self, namespace: str = "") -> Any:
        """A new I/O context on the pool, in `namespace`; the caller closes it."""
        try:
            io = self.cluster.open_ioctx(self.pool)
        except self.rados.Error as exc:
            if isinstance(exc, self.rados.ObjectNotFound):
                raise BackendError(f"no RADOS pool named {self.pool!r}",
                                   transient=False) from exc
            raise rados_error(errno_of(exc), f"cannot open the pool {self.pool!r}") from exc
        io.set_namespace(namespace)
        return io

    def shutdown(self) -> None:
        self.cluster.shutdown()

    def _pause(self, attempt: int, ops: int) -> None:
        self.retried_ops += ops
        time.sleep(self.retry_delay_s * 2 ** attempt)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A synchronous librados call, retried on transient errors.  Raises the `rados.Error`
        of any other failure, or of the last attempt, as it comes (the caller maps it)."""
        for attempt in range(self.retries + 1):
            try:
                return fn(*args)
            except self.rados.Error as exc:
                if errno_of(exc) not in TRANSIENT_ERRNOS or attempt == self.retries:
                    raise
            self._pause(attempt, 1)
        raise AssertionError("unreachable")

    def run_aio(self, count: int, start: Start) -> list[int]:
        """Run ops 0..count-1 (`start(i, done)`), at most `queue_depth` in flight; their
        return codes (0 or a negative errno) in order.  Ops that fail with a transient error
        are run again, up to `retries` times; what still fails then is returned as it failed.
        Blocks the calling thread until every op has finished."""
        codes = [0] * count
        todo: Sequence[int] = range(count)
        for attempt in range(self.retries + 1):
            self._run_window(todo, start, codes)
            failed = [i for i in todo if -codes[i] in TRANSIENT_ERRNOS]
            if not failed or attempt == self.retries:
                break
            self._pause(attempt, len(failed))
            todo = failed
        return codes

    def _run_window(self, todo: Sequence[int], start: Start, codes: list[int]) -> None:
        # A sliding window: a new op starts as soon as any op in flight finishes (their
        # callbacks, on librados' thread, say which), so the cluster always has queue_depth.
        # The C queue, never gevent's (which monkey-patching puts in `queue`): librados calls
        # back on its own thread, and a gevent queue fed from a foreign thread wakes its waiter
        # only on the hub's next timer tick (about a second per batch under `pithos serve`).
        finished: _queue.SimpleQueue[int] = _queue.SimpleQueue()
        inflight: dict[int, tuple[Any, Any]] = {}

        def reap() -> None:
            i = finished.get()
            completion, op = inflight.pop(i)
            completion.wait_for_complete_and_cb()
            codes[i] = completion.get_return_value()
            if op is not None:
                op.release()

        try:
            for i in todo:
                while len(inflight) >= self.queue_depth:
                    reap()
                try:
                    inflight[i] = start(i, lambda *_, i=i: finished.put(i))
                except self.rados.Error as exc:
                    codes[i] = -errno_of(exc)
        finally:
            # Even on an exception, no op may outlive the buffers and callbacks it uses.
            while inflight:
                reap()


# -- helpers over one ioctx ------------------------------------------------------------------

def operate(conn: RadosConnection, io: Any, obj: str, build: Callable[[Any], object]) -> int:
    """Run one write op on `obj` (`build(op)` adds its steps); its return code (0 or a
    negative errno).  Not retried: a write op may be conditional."""
    op = io.create_write_op()
    try:
        build(op)
        io.operate_write_op(op, obj)
        return 0
    except conn.rados.Error as exc:
        return -errno_of(exc)
    finally:
        op.release()


def omap_get(conn: RadosConnection, io: Any, obj: str, keys: Sequence[str]) -> dict[str, bytes]:
    """The values of these omap keys of `obj` (absent keys, or an absent object: left out)."""
    op = io.create_read_op()
    try:
        it, _ = io.get_omap_vals_by_keys(op, tuple(keys))
        conn.call(io.operate_read_op, op, obj)
        return {k: v for k, v in it}
    except conn.rados.ObjectNotFound:
        return {}
    except conn.rados.Error as exc:
        raise rados_error(errno_of(exc), f"cannot read {obj}") from exc
    finally:
        op.release()


def omap_items(conn: RadosConnection, io: Any, obj: str, prefix: str = ""
               ) -> Iterator[tuple[str, bytes]]:
    """Every omap (key, value) of `obj` whose key starts with `prefix`, in key order; nothing
    if the object does not exist."""
    rados = conn.rados
    after = ""
    while True:
        op = io.create_read_op()
        try:
            it, _ = io.get_omap_vals(op, after, prefix, OMAP_PAGE)
            conn.call(io.operate_read_op, op, obj)
            items = [(k, v) for k, v in it]
        except rados.ObjectNotFound:
            return
        except rados.Error as exc:
            raise rados_error(errno_of(exc), f"cannot list {obj}") from exc
        finally:
            op.release()
        yield from items
        if len(items) < OMAP_PAGE:
            return
        after = items[-1][0]


def stat_objects(conn: RadosConnection, io: Any, names: Sequence[str],
                 what: str = "cannot stat objects") -> list[int | None]:
    """The size of each object, None if absent, in aio batches."""
    sizes: list[int | None] = [None] * len(names)

    def start(i: int, done: Done) -> tuple[Any, Any]:
        def stat(completion: Any, size: int | None, mtime: Any) -> None:
            sizes[i] = size
            done()  # (an assignment cannot fail: no try needed)
        return io.aio_stat(names[i], stat), None

    codes = conn.run_aio(len(names), start)
    raise_failed(codes, what, ok=(0, -errno.ENOENT))
    return [None if code == -errno.ENOENT else size
            for code, size in zip(codes, sizes, strict=True)]


def remove_objects(conn: RadosConnection, io: Any, names: Sequence[str],
                   what: str) -> list[int]:
    """Remove these objects in aio batches; an absent one is no error.  Their return codes
    (0, or -ENOENT for an absent one)."""
    def start(i: int, done: Done) -> tuple[Any, Any]:
        return io.aio_remove(names[i], done), None

    codes = conn.run_aio(len(names), start)
    raise_failed(codes, f"cannot remove {what}", ok=(0, -errno.ENOENT))
    return codes


def parse_rados_url(url: str) -> tuple[str, str | None, str, str]:
    """`rados://POOL?conf=PATH&namespace=NS&id=USER` -> (pool, conf path or None, namespace,
    cephx user): the one reading of a RADOS URL, for the block store and the volume stores."""
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
    return pool, query.get("conf"), query.get("namespace", ""), query.get("id", "admin")

"""Locks shared by greenlets and real threads.

After gevent's monkey patching, `threading.Lock()` makes a gevent lock.  Taken only by
greenlets of one hub it is right; taken by real threads (gevent's thread pool, where the
Offload of a server worker runs blocking calls) a waiter can miss its wakeup and sleep until
something else wakes its thread's hub (a first sync once stalled 120 s on such a lock).  A
native lock never loses a wakeup, but a greenlet waiting for one blocks its whole hub: it is
right only where the critical section never yields to the hub (no gevent I/O, no sleep, no
waiting for another greenlet), so that a holder always lets go without the hub's help.
"""

from __future__ import annotations

import _thread
import fcntl
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any


def native_lock() -> _thread.LockType:
    """A lock of the operating system's threads whether or not gevent patched `threading`
    (see the module docstring for when it is the right lock)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover (gevent is a dependency)
        return threading.Lock()
    lock: _thread.LockType = monkey.get_original("_thread", "allocate_lock")()
    return lock


def start_native_thread(target: Callable[[], None]) -> None:
    """Run `target` on a new thread of the operating system whether or not gevent patched
    `threading` (a patched Thread is a greenlet of the hub: blocking calls there stop it)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover (gevent is a dependency)
        _thread.start_new_thread(target, ())
        return
    monkey.get_original("_thread", "start_new_thread")(target, ())


# (whether `threading` is patched, the hub of the calling thread if any, the real thread
# id): looked up once, not per call (the imports and get_original were ~3% of a server
# worker's CPU per small PUT, which asks twice); False without gevent.
_GEVENT: tuple[Callable[[str], bool], Callable[[], object], Callable[[], int]] | None = None


def waits_cooperatively() -> bool:
    """Whether the calling thread may wait on the hub's primitives (a gevent Event, a
    future of gevent's pool): any thread without gevent's patch, only the hub's own thread
    with it.  A pool thread waiting on them can lose its wakeup (the module docstring)."""
    parts = _GEVENT or _gevent_parts()
    if not parts:
        return True
    is_patched, hub_of_thread, real_get_ident = parts
    if not is_patched("threading"):
        return True
    hub: Any = hub_of_thread()
    return hub is not None and bool(hub.thread_ident == real_get_ident())


def _gevent_parts() -> Any:
    global _GEVENT
    try:
        from gevent import monkey
        from gevent._hub_local import get_hub_if_exists
    except ImportError:  # pragma: no cover (gevent is a dependency)
        return False
    # (The original get_ident whether or not the patch came yet: gevent keeps it.)
    _GEVENT = (monkey.is_module_patched, get_hub_if_exists,
               monkey.get_original("_thread", "get_ident"))
    return _GEVENT


class WriterLock:
    """One writer at a time among the threads and processes sharing a SQLite database,
    taken around its write transactions (BEGIN IMMEDIATE to COMMIT).

    SQLite lets a second writer wait only by retrying: its busy handler sleeps 1, 2, 5, 10,
    ... up to 100 ms between tries, so a waiter sleeps long after the holder is done (the
    sync bench's packs index: a p99 of 89 ms, and a third of its transactions' time, spent
    waiting to begin while the lock was held for 5 ms at most).  Here a waiter blocks in the
    kernel and is woken as the holder lets go: flock(2) on `path` (a directory or file both
    processes open; flock's locks do not interact with SQLite's own fcntl locks) orders the
    processes, a native lock the threads of one process (they share the lock's open file,
    and flock's owner is the open file).  A forked child opens its own file (through the
    inherited one it would share its parent's hold).

    Only for callers that may block their thread (the blocking threads of a pool, plain
    threads): a greenlet waiting here stops its hub.  A process that does not take it (an
    older version) still meets SQLite's own lock: correct, only slower."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._threads = native_lock()
        self._fd: int | None = None
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forked(me))

    def _after_fork(self) -> None:
        """In a child, as it starts (one thread): a lock of its own.  The inherited
        descriptor stays open (its parent's file, closed with the child), and the thread lock
        is a new one (the parent's may have been held by a thread the child does not have)."""
        self._threads = native_lock()
        self._fd = None

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fd

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None


def _forked(ref: weakref.ref[WriterLock]) -> None:
    lock = ref()
    if lock is not None:
        lock._after_fork()

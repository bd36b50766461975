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
import threading


def native_lock() -> _thread.LockType:
    """A lock of the operating system's threads whether or not gevent patched `threading`
    (see the module docstring for when it is the right lock)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover (gevent is a dependency)
        return threading.Lock()
    lock: _thread.LockType = monkey.get_original("_thread", "allocate_lock")()
    return lock


def waits_cooperatively() -> bool:
    """Whether the calling thread may wait on the hub's primitives (a gevent Event, a
    future of gevent's pool): any thread without gevent's patch, only the hub's own thread
    with it.  A pool thread waiting on them can lose its wakeup (the module docstring)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover
        return True
    if not monkey.is_module_patched("threading"):
        return True
    from gevent._hub_local import get_hub_if_exists

    hub = get_hub_if_exists()
    return hub is not None and hub.thread_ident == monkey.get_original(
        "_thread", "get_ident")()

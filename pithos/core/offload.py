"""The I/O offload context: where blocking work runs, chosen once by the entry point.

Hashing, fsync, librados calls, SQLite WAL syncs and key derivation block the thread that runs
them.  Whether that matters depends on who calls:

- **threads** (`Offload.threads`): the callers are plain threads that may block (the CLI,
  `archipelago serve`, tests).  A blocking call runs where it is made (`run` calls it
  directly); the pool is there for fan-out (hashing a batch of blocks on several cores).
- **cooperative** (`Offload.gevent`): the callers are greenlets of one event loop (a `pithos
  serve` worker).  A blocking call made on the loop's thread stalls every request of the
  worker, so `run` sends it to gevent's pool of real threads and waits there cooperatively.

Every component that blocks takes an `Offload` (or makes a threads one of its own when given
none) and asks it, instead of guessing the situation from whether an executor was passed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Offload:
    """Where blocking work runs (see the module docstring).

    `pool` runs blocking calls on real threads; `spawner` runs tasks that themselves fan out
    to `pool` (under gevent a greenlet: gevent forbids submitting to its thread pool from one
    of the pool's own threads; otherwise the pool itself, or a task waiting on its own pool
    could starve it, so a separate small pool); `cooperative` says the callers share an event
    loop and must never block it."""

    def __init__(self, pool: Executor, *, cooperative: bool, spawner: Executor,
                 owned: tuple[Executor, ...] = ()) -> None:
        self.pool = pool
        self.cooperative = cooperative
        self.spawner = spawner
        self._owned = owned

    @classmethod
    def threads(cls, workers: int = 16, name: str = "offload") -> Offload:
        """Plain threads: blocking calls run where they are made; `pool` has `workers`
        threads for fan-out."""
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        spawner = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{name}-spawn")
        return cls(pool, cooperative=False, spawner=spawner, owned=(pool, spawner))

    @classmethod
    def gevent(cls, workers: int = 32) -> Offload:
        """A gevent worker's: blocking calls go to gevent's pool of `workers` real threads,
        fan-out tasks run as greenlets of the loop."""
        from gevent.threadpool import ThreadPoolExecutor as GeventPool

        pool = GeventPool(max_workers=workers)
        return cls(pool, cooperative=True, spawner=_GreenletExecutor(), owned=(pool,))

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, a blocking call, run so that it blocks no event loop: on the pool under
        one (the caller's greenlet waits cooperatively), directly otherwise."""
        if self.cooperative:
            return self.pool.submit(fn, *args).result()
        return fn(*args)

    def close(self) -> None:
        """Shut down the pools this context made (never one it was given)."""
        for executor in self._owned:
            executor.shutdown(wait=True)


class _GreenletExecutor(Executor):
    """An Executor whose tasks run as greenlets of the calling worker's loop."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        import gevent

        future: Future[Any] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        gevent.spawn(run)
        return future

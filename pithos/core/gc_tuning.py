"""The cyclic garbage collector, tuned for a process that handles a stream of work: a `pithos
serve` worker, a `pithos sync` run.

Nearly everything such a process allocates per request or per chunk (tuples of rows, dicts of
headers, frames' locals) is freed by reference counting the moment it is dropped; the cyclic
collector only has to find the rare cycle.  At CPython's defaults it still ran a young
collection every 700 container allocations, and every so often an old one that walked every
object the process had loaded (the modules, the WSGI app, SQLAlchemy's and gevent's
machinery): ~3% of a worker's CPU on the sync bench's first sync, in `gc_collect_main` and
its visits (perf), and ~2% of the client's.

So: what the process made to start (its imports, its app) is moved out of the collector's
sight (`gc.freeze`: never freed anyway, and never walked again), and a young collection runs
every YOUNG_THRESHOLD allocations instead.  Cycles are still collected, only later: the
memory they hold for longer is bounded by what a few thousand allocations can hold.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def tune_for_throughput() -> None:
    """Freeze what the process has allocated so far and collect young objects less often.
    Call once the process has started (imports done, app loaded), before its work."""
    # (No collection first: a full one of a loaded app costs more, ~10-20 ms, than the
    # little garbage a start leaves would ever cost frozen.)
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), older, oldest)

"""Connections spread evenly over `pithos serve`'s workers.

Every worker accepts from the one listening socket.  A connection goes to whichever worker's
accept wins the race, and a client's connections usually arrive together, while every worker
is idle: measured, a sync client's 8 connections landed 6 on one worker and 2 on the other,
run after run, and a keep-alive connection stays where it landed.  The worker with 6 then did
three quarters of the work, its CPU the bottleneck while the other's sat half idle (a
first sync took 4.7 s where a 4/4 split takes less).  The kernel's SO_REUSEPORT spreads by a
hash of the address, which is as uneven for a handful of connections.

So the workers keep a board in shared memory: one slot per worker, holding how many
connections it has open.  A worker that holds more than some peer that still has room leaves
the next connection to that peer: it stops accepting for `RECHECK_S`, the peer (woken by the
same connection) takes it, and the counts even out.  The slots are given out by the master
before each fork (`pre_fork`) and freed when a worker exits (`child_exit`), so a dead worker
is never waited for.  A worker never defers one pending connection for more than
`MAX_DEFER_S` all told (PITHOS_BALANCE_WAIT_MS): a peer that is busy (a long request holding
its hub) or stuck does not leave a client waiting.
"""

from __future__ import annotations

import mmap
import os
import select
import time
from typing import Any

from gevent.monkey import get_original
from gevent.server import StreamServer

# (The worker's `select` is gevent's: this asks the kernel, without waiting.)
_poll = get_original("select", "poll")

# Slots on the board; a worker forked when all are held serves unbalanced (and unseen).
SLOTS = 64
FREE = -1
# A slot given to a worker not accepting (booting, or shutting down): not a peer to leave
# connections to.
BOOTING = -2
# How long a worker that left a connection to a peer waits before it looks again.
RECHECK_S = 0.002
# The longest a worker leaves one pending connection to its peers before taking it
# (PITHOS_BALANCE_WAIT_MS overrides it).
MAX_DEFER_S = 0.050


class Board:
    """Open connections per worker, in memory shared by the master and its forks (made
    before the first fork; each slot is one aligned 8-byte word, read and written whole)."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._map = mmap.mmap(-1, 8 * slots, flags=mmap.MAP_SHARED)
        self.counts = memoryview(self._map).cast("q")
        for i in range(slots):
            self.counts[i] = FREE

    def claim(self, held: set[int]) -> int | None:
        """A free slot, marked BOOTING (the master, before a fork; `held`: the live
        workers')."""
        for i in range(len(self.counts)):
            if i not in held:
                self.counts[i] = BOOTING
                return i
        return None

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self.counts[slot] = FREE

    def fewest_elsewhere(self, slot: int, cap: int) -> int | None:
        """The fewest connections a live peer that still has room holds (None: no such)."""
        least: int | None = None
        for i, n in enumerate(self.counts):
            if i != slot and 0 <= n < cap and (least is None or n < least):
                least = n
        return least


def pre_fork(server: Any, worker: Any) -> None:
    """gunicorn's hook, in the master before it forks `worker`: its slot on the board."""
    board = _BOARD[0]
    held = {w.balance_slot for w in server.WORKERS.values()
            if getattr(w, "balance_slot", None) is not None}
    worker.balance_slot = board.claim(held)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's hook, in the master when a worker has exited: its slot is free again."""
    _BOARD[0].release(getattr(worker, "balance_slot", None))


# The board of this server: made by `make_board` in the master, inherited by each fork.
_BOARD: list[Board] = []


def make_board() -> None:
    """The server's board (in the master, before the first fork); the longest a worker leaves
    a connection to a peer is read here too: SystemExit with the reason when it is bad."""
    _BOARD[:] = [Board()]
    _MAX_DEFER[:] = [max_defer_s()]


# The longest wait of this server's workers (make_board), MAX_DEFER_S if it made none.
_MAX_DEFER: list[float] = []


def max_defer_s() -> float:
    """PITHOS_BALANCE_WAIT_MS (milliseconds, 0 to take every connection at once), else
    MAX_DEFER_S."""
    text = os.environ.get("PITHOS_BALANCE_WAIT_MS")
    if text is None:
        return MAX_DEFER_S
    try:
        value = float(text)
        if not 0 <= value <= 60_000:
            raise ValueError
    except ValueError:
        raise SystemExit("pithos serve: PITHOS_BALANCE_WAIT_MS must be a number of "
                         f"milliseconds from 0 to 60000 (got {text!r})") from None
    return value / 1000


class Balancer:
    """One worker's side of the board: its count, and whether to leave the next connection
    to a peer."""

    def __init__(self, slot: int | None, cap: int) -> None:
        self.board = _BOARD[0] if _BOARD and slot is not None else None
        self.slot = slot if self.board is not None else None
        self.cap = cap
        self.max_defer_s = _MAX_DEFER[0] if _MAX_DEFER else MAX_DEFER_S
        self.open = 0
        self.deferred_since: float | None = None  # a pending connection left to peers

    def serving(self) -> None:
        """The worker accepts from now on: a peer may leave it connections."""
        if self.board is not None and self.slot is not None:
            self.board.counts[self.slot] = self.open

    def leaving(self) -> None:
        """The worker accepts no more (it is shutting down): no peer leaves it connections
        (its slot is freed when it has exited)."""
        if self.board is not None and self.slot is not None:
            self.board.counts[self.slot] = BOOTING
        self.board = None

    def opened(self) -> None:
        self.open += 1
        self.deferred_since = None
        if self.board is not None and self.slot is not None:
            self.board.counts[self.slot] = self.open

    def closed(self) -> None:
        self.open -= 1
        if self.board is not None and self.slot is not None:
            self.board.counts[self.slot] = self.open

    def leave_to_peer(self) -> bool:
        """Whether this worker should leave the pending connection to a peer: it holds
        more than one that has room, and has not left it for `max_defer_s` yet."""
        if self.board is None or self.slot is None or self.max_defer_s <= 0:
            return False
        least = self.board.fewest_elsewhere(self.slot, self.cap)
        if least is None or self.open <= least:
            self.deferred_since = None
            return False
        now = time.monotonic()
        if self.deferred_since is None:
            self.deferred_since = now
            return True
        return now - self.deferred_since < self.max_defer_s


def _pending(sock: Any) -> bool:
    """Whether a connection waits on the listening socket `sock`."""
    p = _poll()
    p.register(sock.fileno(), select.POLLIN)
    return bool(p.poll(0))


class BalancedStreamServer(StreamServer):  # type: ignore[misc]
    """gevent's StreamServer, which leaves a connection to a peer worker holding fewer
    (the worker sets `balancer` before the server starts)."""

    balancer: Balancer | None = None

    def start(self) -> None:
        super().start()
        if self.balancer is not None:
            self.balancer.serving()

    def _do_read(self) -> None:
        balancer = self.balancer
        if balancer is not None and balancer.leave_to_peer():
            # Not accepting until the timer: the listening socket stays readable while the
            # connection waits, and would wake this worker again at once.
            self.stop_accepting()
            self._timer = self.loop.timer(RECHECK_S)
            self._timer.start(self._recheck)
            return
        super()._do_read()

    def close(self) -> None:
        if self.balancer is not None:
            self.balancer.leaving()
        super().close()

    def _recheck(self) -> None:
        if not self.started:
            return  # closed meanwhile (a worker shutting down)
        if self.balancer is not None and not _pending(self.socket):
            self.balancer.deferred_since = None  # a peer took it: the next one is new
        self._start_accepting_if_started()

    def do_handle(self, *args: Any) -> None:
        if self.balancer is not None:
            self.balancer.opened()
        super().do_handle(*args)

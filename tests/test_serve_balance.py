"""`pithos serve`'s workers share their connections evenly (pithos/cli/serve_balance.py): a
burst of keep-alive connections, as a sync client or a benchmark opens them while every
worker is idle, lands half on each worker, not wherever the accept race puts it (6 and 2 was
typical before); a worker that dies frees its place, and its replacement takes its share."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from pithos.cli import serve_balance
from pithos.cli.serve_balance import BOOTING, FREE, MAX_DEFER_S, Balancer, Board
from tests.conftest import PithosServer

T = 30


# -- the board and one worker's decisions ------------------------------------------------------

def test_the_board_gives_free_slots_and_takes_them_back():
    board = Board(slots=4)
    assert board.claim(set()) == 0
    assert board.claim({0}) == 1
    assert list(board.counts) == [BOOTING, BOOTING, FREE, FREE]
    assert board.claim({0, 1, 2, 3}) is None  # all held: that worker goes unbalanced
    board.release(0)
    assert board.counts[0] == FREE
    assert board.claim({1}) == 0


def test_the_fewest_elsewhere_skips_free_slots_full_peers_and_itself():
    board = Board(slots=4)
    board.counts[0], board.counts[1], board.counts[2] = 5, 9, 3
    board.counts[3] = BOOTING  # not accepting yet: not a peer
    assert board.fewest_elsewhere(0, cap=100) == 3
    assert board.fewest_elsewhere(2, cap=100) == 5
    assert board.fewest_elsewhere(0, cap=3) is None  # 3 is at its cap, 9 beyond: no room
    assert board.fewest_elsewhere(0, cap=9) == 3  # 9 is at its cap
    assert Board(slots=2).fewest_elsewhere(0, cap=10) is None  # no peer at all


@pytest.fixture
def board(monkeypatch):
    monkeypatch.setattr(serve_balance, "_BOARD", [Board(slots=4)])
    b = serve_balance._BOARD[0]
    return b


def test_a_worker_ahead_leaves_the_connection_to_a_peer_but_not_for_ever(board):
    me = Balancer(board.claim(set()), cap=100)
    me.serving()
    peer = board.claim({me.slot})
    me.opened()
    assert not me.leave_to_peer()  # the peer is booting: take it
    me.closed()
    board.counts[peer] = 0  # the peer accepts
    assert not me.leave_to_peer()  # level: take it
    me.opened()
    assert board.counts[me.slot] == 1
    assert me.leave_to_peer()  # 1 against 0: leave it to the peer
    board.counts[peer] = 1  # the peer took it
    me.deferred_since = None
    assert not me.leave_to_peer()
    me.opened()
    assert me.leave_to_peer()
    # The peer has not taken it for longer than MAX_DEFER_S: this worker takes it itself.
    assert me.deferred_since is not None
    me.deferred_since -= MAX_DEFER_S * 2
    assert not me.leave_to_peer()
    me.closed()
    me.closed()
    assert board.counts[me.slot] == 0


def test_a_worker_shutting_down_is_no_peer(board):
    me = Balancer(board.claim(set()), cap=100)
    me.serving()
    peer = Balancer(board.claim({me.slot}), cap=100)
    peer.serving()
    me.opened()
    assert me.leave_to_peer()  # 1 against 0
    peer.leaving()  # (its server closed: it drains what it has, and accepts nothing)
    assert board.counts[peer.slot] == BOOTING
    assert not me.leave_to_peer()
    peer.closed()  # a connection it still held ends: the slot stays out of the count
    assert board.counts[peer.slot] == BOOTING


def test_the_wait_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("PITHOS_BALANCE_WAIT_MS", "250")
    assert serve_balance.max_defer_s() == 0.25
    for bad in ("-1", "soon", "1e9"):
        monkeypatch.setenv("PITHOS_BALANCE_WAIT_MS", bad)
        with pytest.raises(SystemExit, match="PITHOS_BALANCE_WAIT_MS"):
            serve_balance.max_defer_s()
    monkeypatch.delenv("PITHOS_BALANCE_WAIT_MS")
    assert serve_balance.max_defer_s() == MAX_DEFER_S


def test_a_wait_of_zero_takes_every_connection(board):
    me = Balancer(board.claim(set()), cap=100)
    me.serving()
    board.counts[board.claim({me.slot})] = 0
    me.opened()
    assert me.leave_to_peer()
    me.deferred_since = None
    me.max_defer_s = 0.0  # (PITHOS_BALANCE_WAIT_MS=0)
    assert not me.leave_to_peer()


def test_a_worker_without_a_slot_never_defers(board):
    me = Balancer(None, cap=100)
    board.counts[board.claim(set())] = 0
    me.opened()
    me.opened()
    assert not me.leave_to_peer()


# -- a live server ------------------------------------------------------------------------------

@pytest.fixture
def two_workers(tmp_path):
    # A worker waits as long as it takes for its peer to accept (not 50 ms): on a loaded
    # machine a peer may not run for longer, and the split would then depend on timing.
    server = PithosServer(tmp_path / "data", workers=2,
                          env={"PITHOS_BALANCE_WAIT_MS": "30000"})
    yield server
    server.stop()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers(server: PithosServer) -> list[psutil.Process]:
    deadline = time.monotonic() + T
    while True:
        kids = [p for p in psutil.Process(server.proc.pid).children() if _alive(p)]
        if len(kids) == 2:
            return kids
        assert time.monotonic() < deadline, f"workers: {kids}"
        time.sleep(0.1)


def _burst(server: PithosServer, n: int) -> list[socket.socket]:
    """`n` keep-alive connections opened at once, each answered once (so each is held by the
    worker that accepted it)."""
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=T) for _ in range(n)]
    for s in socks:
        s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in socks:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = s.recv(65536)
            assert piece, "the connection closed unanswered"
            data += piece
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return socks


def _held(server: PithosServer, workers: list[psutil.Process]) -> list[int]:
    """Established connections each worker holds on the server's port."""
    return [sum(1 for c in w.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == server.port)
            for w in workers]


def _until_each_serves(server: PithosServer, workers: list[psutil.Process]) -> None:
    """Once every worker has booted and accepts (a worker answers once the first has), with
    no connection left open."""
    deadline = time.monotonic() + T
    while True:
        socks = _burst(server, len(workers))
        held = _held(server, workers)
        for s in socks:
            s.close()
        if min(held) > 0:
            break
        assert time.monotonic() < deadline, held
        time.sleep(0.1)
    while any(_held(server, workers)):  # the closed connections' ends reach the workers
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_burst_of_connections_is_shared_evenly(two_workers):
    server = two_workers
    workers = _workers(server)
    _until_each_serves(server, workers)
    socks: list[socket.socket] = []
    try:
        for _ in range(3):
            socks += _burst(server, 8)
            held = _held(server, workers)
            assert sum(held) == len(socks)
            assert max(held) - min(held) <= 1, held
    finally:
        for s in socks:
            s.close()


def test_a_dead_workers_place_is_freed_and_its_replacement_takes_its_share(two_workers):
    server = two_workers
    first = _workers(server)
    socks = _burst(server, 4)
    for s in socks:
        s.close()
    os.kill(first[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + T
    while True:  # the master forks a replacement
        workers = [p for p in _workers(server) if p.pid != first[0].pid]
        if len(workers) == 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    _until_each_serves(server, workers)
    socks = _burst(server, 8)
    try:
        held = _held(server, workers)
        assert sum(held) == 8
        assert max(held) - min(held) <= 1, held
    finally:
        for s in socks:
            s.close()

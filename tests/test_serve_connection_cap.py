"""A `pithos serve` worker at its cap on open connections says so, once per episode, and
serves again once connections close (issue 26: "a cap on open connections per worker with a
clear log line when reached").  The cap is made small with PITHOS_WORKER_CONNECTIONS."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.conftest import PithosServer

CAP = 4
T = 30
AT_CAP = f"is at its cap of {CAP} open connections"
UNDER_CAP = f"is under its cap of {CAP} open connections again"


def _log(server: PithosServer) -> str:
    with open(server.log.name, "rb") as f:
        return f.read().decode(errors="replace")


def _wait_for_log(server: PithosServer, text: str, count: int = 1) -> str:
    """The server's log once it holds `text` `count` times (bounded: T seconds)."""
    deadline = time.monotonic() + T
    while True:
        log = _log(server)
        if log.count(text) >= count:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged {count} time(s):\n{log[-3000:]}")
        time.sleep(0.1)


def _read_reply(sock: socket.socket) -> bytes:
    """One small reply (headers and a short body) on a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return head


@pytest.fixture
def capped_server(tmp_path, monkeypatch):
    monkeypatch.setenv("PITHOS_WORKER_CONNECTIONS", str(CAP))
    server = PithosServer(tmp_path / "data")
    yield server
    server.stop()


def test_a_worker_at_its_connection_cap_logs_once_and_serves_when_they_close(capped_server):
    server = capped_server
    stalled = []
    waiting = None
    try:
        # CAP connections that sent part of their headers and stopped: the worker is full.
        for _ in range(CAP):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=T)
            s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            stalled.append(s)
        log = _wait_for_log(server, AT_CAP)
        assert "PITHOS_WORKER_CONNECTIONS" in log  # the line names the knob
        # One more client: accepted by the kernel, unanswered while the worker is full.
        waiting = socket.create_connection(("127.0.0.1", server.port), timeout=T)
        waiting.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        for s in stalled:
            s.close()
    try:
        # The stalled connections went away: the waiting client is served, and new ones.
        assert _read_reply(waiting).startswith(b"HTTP/1.1 200")
    finally:
        waiting.close()
    assert requests.get(f"{server.url}/info", timeout=T).status_code == 200
    _wait_for_log(server, UNDER_CAP)

    # Full again at once (CAP keep-alive connections, each answered once and left open):
    # one line per episode at most every minute, so no second "at its cap" line.
    kept = []
    try:
        for _ in range(CAP):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=T)
            s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_reply(s).startswith(b"HTTP/1.1 200")
            kept.append(s)
        # Every connection is open on the worker now; a line would have been written
        # before its reply.
        assert _log(server).count(AT_CAP) == 1
    finally:
        for s in kept:
            s.close()
    assert requests.get(f"{server.url}/info", timeout=T).status_code == 200


def test_a_bad_connection_cap_is_refused_with_a_reason(monkeypatch):
    from pithos.cli.serve import WORKER_CONNECTIONS, worker_connections

    monkeypatch.delenv("PITHOS_WORKER_CONNECTIONS", raising=False)
    assert worker_connections() == WORKER_CONNECTIONS
    monkeypatch.setenv("PITHOS_WORKER_CONNECTIONS", "16")
    assert worker_connections() == 16
    for bad in ("0", "-3", "many", ""):
        monkeypatch.setenv("PITHOS_WORKER_CONNECTIONS", bad)
        with pytest.raises(SystemExit, match="PITHOS_WORKER_CONNECTIONS"):
            worker_connections()

"""`pithos serve`'s keep-alive timeout bounds the idle wait for each next request, as
gunicorn's does (a new timeout around each request head), not the connection's life: the
worker's own keep-alive loop (pithos/cli/serve_loop.py) once kept one gevent Timeout per
connection, cancelled and started again around each head, and libev's timer resumed with what
was left of it, so a busy connection was cut `--keepalive` seconds after its first request
(and a request already sent at that moment got no answer)."""

from __future__ import annotations

import http.client
import time
from typing import Any

import pytest
from conftest import PithosServer

KEEPALIVE_S = 2


@pytest.fixture
def server(tmp_path: Any) -> Any:
    s = PithosServer(tmp_path / "srv", serve_args=("--keepalive", str(KEEPALIVE_S)))
    yield s
    s.stop()


def test_a_busy_connection_outlives_the_keepalive_and_an_idle_one_ends(
        server: PithosServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.connect()
    conn.auto_open = 0  # (a connection the server closed is an error here, not reopened)
    first = conn.sock
    started = time.monotonic()
    answered = 0
    # Requests a quarter of the keep-alive apart, for twice the keep-alive: never idle
    # that long, so every one is answered on the same connection.
    while time.monotonic() - started < 2 * KEEPALIVE_S:
        conn.request("GET", "/info")
        r = conn.getresponse()
        assert r.status == 200
        r.read()
        answered += 1
        assert conn.sock is first
        time.sleep(KEEPALIVE_S / 4)
    assert answered >= 6
    # Idle past the keep-alive: the server ends the connection quietly.
    sock = conn.sock
    assert sock is not None
    sock.settimeout(10 * KEEPALIVE_S)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail("an idle connection outlived the keep-alive")
    conn.close()

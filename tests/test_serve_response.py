"""The response writer of `pithos serve`'s worker (pithos/cli/serve_worker.py): a small
answer's head and body go out in one send, and every header still passes gunicorn's checks
(a bad name or value is refused, the first time and once its name is known); the worker's
frozen settings and its answers on peers' addresses are gunicorn's own.

Driven over a real socket pair with gunicorn's own Config; the request is a stand-in for
gunicorn's parsed request (the three attributes a response reads)."""

from __future__ import annotations

import socket

import pytest
from gunicorn.config import Config
from gunicorn.http import message
from gunicorn.http.errors import InvalidHeader, InvalidHeaderName

from pithos.cli import serve_worker
from pithos.cli.serve_worker import COALESCE_BYTES, SwiftResponse, freeze_config


class _Request:
    def __init__(self, method: str = "GET") -> None:
        self.method = method
        self.version = (1, 1)

    def should_close(self) -> bool:
        return False


class _CountingSocket:
    """A real socket, with its send calls counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def sendall(self, data: bytes) -> None:
        self.sends += 1
        self.sock.sendall(data)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    yield _CountingSocket(a), b
    a.close()
    b.close()


def _read_all(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        assert piece, "the writer closed early"
        data += piece
    return data


def _answer(sock: _CountingSocket, headers: list[tuple[str, str]], body: bytes,
            method: str = "GET", status: str = "200 OK") -> SwiftResponse:
    resp = SwiftResponse(_Request(method), sock, Config())
    resp.start_response(status, headers)
    if body:
        resp.write(body)
    resp.close()
    return resp


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def test_a_small_answer_is_one_send_with_its_head(pair):
    sock, peer = pair
    body = b"x" * 4096
    headers = [("Content-Length", str(len(body))), ("ETag", "abc"),
               ("X-Object-Meta-Color", "blue"), ("Connection", "close")]
    for _ in range(2):  # the second time every name is known
        sock.sends = 0
        resp = _answer(sock, headers, body)
        assert sock.sends == 1
        assert resp.sent == len(body)
        lines, got = _split(peer.recv(65536))
        assert lines[0] == b"HTTP/1.1 200 OK"
        assert b"Content-Length: 4096" in lines and b"ETag: abc" in lines
        assert b"X-Object-Meta-Color: blue" in lines
        # A hop-by-hop header of the application is dropped (gunicorn says keep-alive).
        assert b"Connection: keep-alive" in lines and b"Connection: close" not in lines
        assert got + _read_all(peer, len(body) - len(got)) == body


def test_a_large_answer_sends_its_head_then_its_body(pair):
    sock, peer = pair
    body = bytes(range(256)) * ((COALESCE_BYTES + 4096) // 256)
    resp = SwiftResponse(_Request(), sock, Config())
    resp.start_response("200 OK", [("Content-Length", str(len(body)))])
    raw = b""

    def drain() -> None:
        nonlocal raw
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < len(body):
            raw += peer.recv(1 << 20)

    import threading
    reader = threading.Thread(target=drain)
    reader.start()
    resp.write(body)
    resp.close()
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert sock.sends >= 2
    lines, got = _split(raw)
    assert lines[0] == b"HTTP/1.1 200 OK" and got == body


def test_a_head_answer_and_a_204_carry_no_body(pair):
    sock, peer = pair
    _answer(sock, [("Content-Length", "5")], b"hello", method="HEAD")
    lines, got = _split(peer.recv(65536))
    assert b"Content-Length: 5" in lines and got == b""
    _answer(sock, [("Content-Length", "0")], b"", status="204 No Content")
    lines, got = _split(peer.recv(65536))
    assert lines[0] == b"HTTP/1.1 204 No Content"
    assert b"Content-Length: 0" in lines and got == b""


def test_a_bad_header_value_is_refused_even_once_its_name_is_known(pair):
    sock, _ = pair
    _answer(sock, [("X-Object-Meta-A", "fine"), ("Content-Length", "0")], b"")
    for value in ("split\r\nX-Injected: 1", "nul\x00", "bell\x07", "\u0100 wide"):
        resp = SwiftResponse(_Request(), sock, Config())
        with pytest.raises(InvalidHeader):
            resp.start_response("200 OK", [("X-Object-Meta-A", value),
                                           ("Content-Length", "0")])


def test_a_bad_header_name_is_refused(pair):
    sock, _ = pair
    for name in ("Bad Name", "Colon:", "Line\r\nBreak", ""):
        resp = SwiftResponse(_Request(), sock, Config())
        with pytest.raises(InvalidHeaderName):
            resp.start_response("200 OK", [(name, "v"), ("Content-Length", "0")])
        assert name not in serve_worker._known_names


def test_values_are_trimmed_and_the_length_read_as_gunicorn_does(pair):
    sock, peer = pair
    resp = _answer(sock, [("Content-Length", " 3 "), ("X-A", "\t v \t")], b"abc")
    assert resp.response_length == 3
    lines, got = _split(peer.recv(65536))
    assert b"X-A: v" in lines and got == b"abc"


def test_frozen_settings_are_the_configs_own(monkeypatch):
    monkeypatch.setattr(message, "_ip_in_allow_list", message._ip_in_allow_list)
    cfg = Config()
    cfg.set("keepalive", 75)
    cfg.set("forwarded_allow_ips", "10.1.0.0/16")
    cfg.set("proxy_allow_ips", "127.0.0.1")
    freeze_config(cfg)
    assert cfg.keepalive == 75 and "keepalive" in cfg.__dict__
    assert cfg.limit_request_line == cfg.settings["limit_request_line"].get()
    networks = cfg.forwarded_allow_networks()
    # The kept answers are gunicorn's, per address and per list.
    for _ in range(2):
        assert message._ip_in_allow_list("10.1.2.3", cfg.forwarded_allow_ips, networks)
        assert not message._ip_in_allow_list("10.2.0.1", cfg.forwarded_allow_ips, networks)
        assert not message._ip_in_allow_list("10.1.2.3", cfg.proxy_allow_ips,
                                             cfg.proxy_allow_networks())
        assert message._ip_in_allow_list("127.0.0.1", cfg.proxy_allow_ips,
                                         cfg.proxy_allow_networks())
        assert not message._ip_in_allow_list("10.1.2.3", ["127.0.0.1"], [])
        assert not message._ip_in_allow_list("not an address", cfg.forwarded_allow_ips,
                                             networks)


def test_the_date_header_is_gunicorns_for_this_second(pair):
    import time

    from gunicorn import util

    sock, peer = pair
    before = int(time.time())
    _answer(sock, [("Content-Length", "0")], b"")
    after = int(time.time())
    lines, _ = _split(peer.recv(65536))
    date = next(line for line in lines if line.startswith(b"Date: "))[6:].decode()
    assert date in {util.http_date(t) for t in range(before, after + 1)}


def test_last_modified_dates_are_formatdates():
    import math
    from email.utils import formatdate

    from pithos.api.http import http_date

    # Every weekday, month and leap day over the decades, and fractions rounded up.
    stamps = [0.0, 0.5, 951782400.25, 4102444799.9] + [
        n * 86400 * 3.7 + n % 97 * 0.37 for n in range(4000)]
    for ts in stamps:
        assert http_date(ts) == formatdate(math.ceil(ts), usegmt=True), ts


@pytest.mark.parametrize("method,status,headers", [
    ("GET", "200 OK", [("Content-Length", "3"), ("ETag", " abc "), ("X-A", "1"), ("x-a", "2")]),
    ("HEAD", "200 OK", [("Content-Length", "3"), ("Connection", "close"), ("X-B", "\tv")]),
    ("GET", "204 No Content", [("Content-Length", "0"), ("X-Trans-Id", "tx1")]),
    ("GET", "304 Not Modified", [("ETag", "e"), ("Content-Length", "3"), ("Upgrade", "h2c")]),
    ("GET", "200 OK", [("Transfer-Encoding", "chunked"), ("Keep-Alive", "5"), ("Z", "")]),
    ("GET", "101 Switching Protocols", [("Connection", "Upgrade"), ("Upgrade", "websocket")]),
    # Nothing to strip and no hop-by-hop name: the headers kept whole, their lines joined.
    ("GET", "200 OK", [("Content-Length", "3"), ("ETag", "abc"), ("X-A", "1"), ("x-a", "2"),
                       ("Content-Length", "3"), ("X-Empty", "")]),
    ("HEAD", "200 OK", [("X-Tab", "a\tb"), ("X-Latin", "caf\xe9"), ("Content-Length", "1")]),
    ("GET", "200 OK", [("X-Tail", "v\t"), ("Content-Length", "3")]),
    ("GET", "200 OK", [["X-List", "v"], ("Content-Length", "3")]),
    ("GET", "200 OK", []),
])
def test_the_head_is_gunicorns_line_for_line(pair, method, status, headers):
    """The head's lines made in the pass over the headers (known names) are the ones
    gunicorn's own Response writes, and so are they the first time (names not known yet),
    whatever the status drops (a 204's or 304's Content-Length) or the writer adds."""
    from gunicorn.http.wsgi import Response

    def head(cls: type) -> list[bytes]:
        resp = cls(_Request(method), pair[0], Config())
        resp.start_response(status, list(headers))
        if isinstance(resp, SwiftResponse):
            raw = resp._head()
        else:
            raw = "".join([*resp.default_headers(),
                           *[f"{k}: {v}\r\n" for k, v in resp.headers], "\r\n"]).encode("latin-1")
        return [line for line in raw.split(b"\r\n") if not line.startswith(b"Date: ")]

    theirs = head(Response)
    for _ in range(2):  # (unknown names, then known ones)
        ours = head(SwiftResponse)
        if status.startswith("204"):  # (as Swift: a 204 keeps its Content-Length: 0)
            assert ours == [*theirs[:-2], b"Content-Length: 0", b"", b""]
        else:
            assert ours == theirs

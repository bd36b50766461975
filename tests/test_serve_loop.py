"""The worker's own keep-alive loop (pithos/cli/serve_loop.py): a plain request's WSGI
environ is built exactly as gunicorn's `wsgi.create` builds it, and only a plain connection
is served by the loop.

Both builders run on the same requests, parsed by the worker's parser over gunicorn's own
unreader, with gunicorn's own Config; hypothesis draws paths and headers."""

from __future__ import annotations

from typing import Any

from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.unreader import IterUnreader
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.cli import serve_loop, serve_parse
from pithos.cli.serve_parse import SwiftRequest


def _config(**more: Any) -> Config:
    cfg = Config()
    for key, value in {"limit_request_line": 8190, "limit_request_field_size": 8190,
                       "permit_unconventional_http_method": True, "keepalive": 75,
                       **more}.items():
        cfg.set(key, value)
    return cfg


class _Log:
    class error_log:
        @staticmethod
        def isEnabledFor(level: int) -> bool:
            return False

    access_log_enabled = False


class _Worker:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.log = _Log()


class _Sock:
    def send(self, data: bytes) -> int:
        return len(data)


def _both(head: bytes, server: Any = ("127.0.0.1", 8080), client: Any = ("127.0.0.1", 5000),
          cfg: Config | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = cfg or _config()
    plan = serve_loop.Plan(_Worker(cfg), wsgi.base_environ(cfg))
    envs = []
    for build in ("ours", "ours, the connection's addresses kept", "gunicorn's"):
        req = SwiftRequest(cfg, IterUnreader([head]), client)
        sock = _Sock()
        if build == "ours":
            _, env = serve_loop.create(plan, req, sock, client, server)
        elif build.startswith("ours"):
            fixed = serve_loop.addresses(client, server)
            _, env = serve_loop.create(plan, req, sock, client, server, fixed)
        else:
            _, env = wsgi.create(req, sock, client, server, cfg)
        env.pop("wsgi.errors")  # (a new writer each time)
        hints = env.pop("wsgi.early_hints")
        assert callable(hints)
        assert env.pop("wsgi.input") is req.body and env.pop("gunicorn.socket") is sock
        envs.append(env)
    assert envs[0] == envs[1] and list(envs[0]) == list(envs[1])
    return envs[0], envs[2]


HEADS = [
    b"GET /v1/AUTH_test/c/o HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Auth-Token: tk\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD /v1/a/c?format=json&limit=2 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /v1/a/c/o HTTP/1.1\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabc",
    b"GET /v1/a/c/%E2%98%83%20x HTTP/1.1\r\nX-A: 1\r\nX-A: 2\r\nx-a: 3\r\n\r\n",
    "GET /v1/a/c/\u2603 HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
    b"GET /v1/a/c/o%2Fp?x=%20 HTTP/1.1\r\nReferer: http://e/\r\nRange: bytes=0-1\r\n\r\n",
    b"GET /v1/a HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n",
]


def test_a_plain_requests_environ_is_gunicorns() -> None:
    for head in HEADS:
        for server, client in ((("127.0.0.1", 8080), ("127.0.0.1", 5000)),
                               ("127.0.0.1:8080", "10.1.2.3"), ("unix:/run/x", b"peer"),
                               ("/run/x", ("::1", 7))):
            ours, theirs = _both(head, server, client)
            assert ours == theirs, head
            assert list(ours) == list(theirs), head  # (the same order too)


def test_a_script_name_or_100_continue_goes_to_gunicorns_create(monkeypatch) -> None:
    called = []
    original = wsgi.create

    def counted(*args: Any, **kwargs: Any) -> Any:
        called.append(args[0].path)
        return original(*args, **kwargs)

    monkeypatch.setattr(wsgi, "create", counted)
    ours, theirs = _both(b"PUT /v1/a/c/o HTTP/1.1\r\nContent-Length: 1\r\n"
                         b"Expect: 100-continue\r\n\r\nx")
    assert ours == theirs and len(called) == 3  # (ours twice, handing over, and theirs)
    monkeypatch.setenv("SCRIPT_NAME", "/v1")
    ours, theirs = _both(b"GET /v1/a/c HTTP/1.1\r\n\r\n")
    assert ours == theirs and ours["SCRIPT_NAME"] == "/v1" and len(called) == 6


@settings(max_examples=150, deadline=None)
@given(path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FFF,
                                  blacklist_characters="#?%\x7f"), max_size=30),
       escapes=st.lists(st.sampled_from(["%20", "%2F", "%25", "%E2%98%83", "%zz", "%"]),
                        max_size=3),
       query=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                   blacklist_characters="#"), max_size=20),
       headers=st.lists(st.tuples(st.sampled_from(["Host", "X-A", "Content-Type",
                                                   "Content-Length", "Cookie", "x-a"]),
                                  st.text(st.characters(min_codepoint=0x20,
                                                        max_codepoint=0x7e), max_size=10)),
                        max_size=6),
       minor=st.sampled_from([b"0", b"1"]))
def test_any_plain_request_gets_gunicorns_environ(path: str, escapes: list[str], query: str,
                                                  headers: list[tuple[str, str]],
                                                  minor: bytes) -> None:
    target = "/" + path.lstrip("/") + "".join(escapes) + ("?" + query if query else "")
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers if k != "Content-Length")
    head = (f"GET {target} HTTP/1.".encode() + minor + b"\r\n" + fields.encode() + b"\r\n")
    # (Raw UTF-8 in the target, as clients send non-ASCII names.)
    for server in (("127.0.0.1", 8080), "unix:/run/x"):
        try:
            ours, theirs = _both(head, server)
        except Exception as exc:  # a head both refuse alike (gunicorn's answer either way)
            assert type(exc).__name__
            continue
        assert ours == theirs


def test_only_a_plain_connection_is_the_loops() -> None:
    import socket
    import ssl

    assert serve_parse.supported()
    serve_parse_parser = serve_parse.SwiftRequestParser
    from gunicorn import http

    original = http.RequestParser
    http.RequestParser = serve_parse_parser
    try:
        plan = serve_loop.Plan(_Worker(_config()), {})
        with socket.socket() as sock:
            assert plan.plain(sock, ("127.0.0.1", 1))
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_socket(
                socket.socket(), server_side=True, do_handshake_on_connect=False)
            with tls:
                assert not plan.plain(tls, ("127.0.0.1", 1))
        h2c = {"forwarded_allow_ips": "*", "http_protocols": "h1,h2"}
        for setting in ({"keepalive": 0}, {"proxy_protocol": "v1"},
                        {"http2_cleartext": "upgrade", **h2c},
                        {"http2_cleartext": "prior-knowledge", **h2c}):
            other = serve_loop.Plan(_Worker(_config(**setting)), {})
            with socket.socket() as sock:
                assert not other.plain(sock, ("127.0.0.1", 1)), setting
    finally:
        http.RequestParser = original
    plan = serve_loop.Plan(_Worker(_config()), {})
    with socket.socket() as sock:
        assert not plan.plain(sock, ("127.0.0.1", 1))  # (gunicorn's own parser)

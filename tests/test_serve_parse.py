"""The worker's request head parser (pithos/cli/serve_parse.py): a plain head is parsed by
its fast path into exactly what gunicorn's own parser makes of it, and every other head goes
to gunicorn's parser with nothing lost, so odd or hostile input gets gunicorn's answer.

Both parsers run on the same bytes with gunicorn's own Config (the settings `pithos serve`
gives it), over gunicorn's own unreader; hypothesis draws heads from both sides of the
fast path's grammar."""

from __future__ import annotations

from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http.errors import (
    ExpectationFailed,
    InvalidHeader,
    InvalidHeaderName,
)
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.cli import serve_parse
from pithos.cli.serve_parse import SwiftRequest


def _config() -> Config:
    cfg = Config()
    for key, value in {"limit_request_line": 8190, "limit_request_field_size": 8190,
                       "permit_unconventional_http_method": True, "keepalive": 75}.items():
        cfg.set(key, value)
    return cfg


CFG = _config()
ADDR = ("127.0.0.1", 50000)


def _parse(cls: type, data: bytes, pieces: int = 1) -> tuple[str, Any]:
    """("ok", (fields, body left)) or ("error", exception class) of `cls` on `data`, fed in
    `pieces` reads."""
    step = max(1, -(-len(data) // pieces))
    unreader = IterUnreader([data[i : i + step] for i in range(0, len(data), step)])
    try:
        req = cls(CFG, unreader, ADDR)
    except Exception as exc:
        return "error", type(exc)
    try:
        rest = req.body.read() if req.body is not None else b""
    except Exception as exc:
        rest = type(exc).__name__.encode()
    return "ok", (req.method, req.uri, req.path, req.query, req.fragment, req.version,
                  req.headers, req.scheme, req._expected_100_continue, req.should_close(),
                  type(req.body.reader).__name__, rest + unreader.read())


@pytest.fixture
def fast_calls(monkeypatch):
    """How many heads the fast path parsed."""
    calls = {"plain": 0}
    original = SwiftRequest.parse_plain

    def counted(self: SwiftRequest, data: bytes) -> bytes | None:
        rest = original(self, data)
        if rest is not None:
            calls["plain"] += 1
        return rest

    monkeypatch.setattr(SwiftRequest, "parse_plain", counted)
    return calls


PLAIN = [
    b"GET /v1/AUTH_test/c/o HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Auth-Token: tk\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /v1/a/c?format=json&limit=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD /v1/a/c/o? HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    # Raw UTF-8 in the target, as Swift clients send non-ASCII names.
    "GET /v1/a/c/\u00e9t\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    b"PUT /v1/a/c/o HTTP/1.1\r\nContent-Length: 5\r\nX-Object-Meta-Color:   red \t\r\n\r\nhello",
    b"PUT /v1/a/c/o HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"PUT /v1/a/c/o HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /v1/a/c HTTP/1.1\r\nx-ab: \r\nX-Ab: two\r\nContent-Length: 0\r\n\r\n",
    b"GET /v1/a HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/b HTTP/1.1\r\n\r\n",  # pipelined
]

# Heads the fast path hands to gunicorn: what each parser makes of them must agree.
OTHER = [
    b"get /x HTTP/1.1\r\n\r\n",
    b"GETorHEAD_base /x HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
    b"GET http://h/x HTTP/1.1\r\n\r\n",
    b"GET //x/y HTTP/1.1\r\n\r\n",
    b"GET /x#frag HTTP/1.1\r\n\r\n",
    b"GET /a\x00b HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/2.0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
    b"GET /x HTTP/1.1\nHost: a\n\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\n",  # cut off
]


# Plain heads that gunicorn's header policy drops a field of or refuses, or whose framing
# it refuses: the fast path applies that same policy, and the framing is gunicorn's.
POLICY = [
    b"GET /x HTTP/1.1\r\nX_A: b\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n",
    b"GET /x HTTP/1.1\r\nExpect: nothing\r\n\r\n",
    b"GET /x HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
    # and gunicorn's framing of the body, after the head
    b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip,chunked\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nab",
]


@pytest.mark.parametrize("data", POLICY)
def test_header_policy_is_gunicorns(data):
    assert _parse(SwiftRequest, data) == _parse(Request, data)


@pytest.mark.parametrize("data", PLAIN)
def test_plain_heads_take_the_fast_path_and_agree(data, fast_calls):
    ours = _parse(SwiftRequest, data)
    assert ours[0] == "ok"
    assert fast_calls["plain"] == 1
    assert ours == _parse(Request, data)


@pytest.mark.parametrize("data", OTHER)
def test_other_heads_get_gunicorns_answer(data, fast_calls):
    assert _parse(SwiftRequest, data) == _parse(Request, data)
    assert fast_calls["plain"] == 0


def test_a_head_split_over_reads_is_gunicorns(fast_calls):
    data = PLAIN[0]
    assert _parse(SwiftRequest, data, pieces=3) == _parse(Request, data, pieces=3)
    assert fast_calls["plain"] == 0


def test_gunicorns_refusals_stay_refusals():
    assert _parse(SwiftRequest, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == (
        "error", InvalidHeader)
    assert _parse(SwiftRequest, b"GET /x HTTP/1.1\r\nExpect: x\r\n\r\n") == (
        "error", ExpectationFailed)
    assert _parse(SwiftRequest, b"GET /x HTTP/1.1\r\nHost : x\r\n\r\n") == (
        "error", InvalidHeaderName)


_name = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcXYZ", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=20)
_target = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=30)
_method = st.sampled_from(["GET", "HEAD", "PUT", "POST", "COPY", "get", "G#T", "GE", "X"])
_version = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1"])


@settings(max_examples=400, deadline=None)
@given(_method, st.one_of(_target, _target.map(lambda t: "/" + t)), _version,
       st.lists(st.tuples(_name, st.sampled_from([":", ": ", " :", ":\t"]), _value),
                max_size=6),
       st.binary(max_size=8))
def test_any_head_parses_as_gunicorn_parses_it(method, target, version, fields, tail):
    head = f"{method} {target} {version}\r\n" + "".join(
        f"{n}{sep}{v}\r\n" for n, sep, v in fields) + "\r\n"
    data = head.encode("latin-1") + tail
    assert _parse(SwiftRequest, data) == _parse(Request, data)


def test_the_worker_uses_this_parser():
    # (pithos.cli.serve_worker puts it in gunicorn's place in the worker.)
    from gunicorn import http

    from pithos.cli.serve_worker import use_swift_parser

    before = http.RequestParser
    try:
        use_swift_parser()
        assert http.RequestParser is serve_parse.SwiftRequestParser
    finally:
        http.RequestParser = before


def test_an_older_gunicorn_keeps_its_own_parser(monkeypatch):
    # gunicorn 22-25 have no _apply_header_policy: the worker leaves their parser alone
    # rather than fail on every request.
    from gunicorn import http
    from gunicorn.http.message import HeaderPolicy

    from pithos.cli.serve_worker import use_swift_parser

    monkeypatch.delattr(HeaderPolicy, "_apply_header_policy")
    before = http.RequestParser
    use_swift_parser()
    assert http.RequestParser is before


def test_pipelined_requests_each_start_after_the_last_body_read_or_not() -> None:
    """The next request of a connection starts after the whole body of the last, read or
    not (the drain is skipped only when nothing of it is left), and each knows whether it
    closes the connection as gunicorn's own requests do."""
    stream = (b"PUT /v1/a/c/o HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
              b"GET /v1/a/c/o HTTP/1.1\r\nHost: h\r\n\r\n"
              b"POST /v1/a/c/o HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
              b"GET /v1/a/c/p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
              b"HEAD /v1/a/c/q HTTP/1.1\r\nConnection: close\r\n\r\n")
    for reads in (1, 7, len(stream)):
        pieces = [stream[i : i + reads] for i in range(0, len(stream), reads)]
        for cls in (serve_parse.SwiftRequestParser, serve_parse.RequestParser):
            parser = cls(CFG, iter(pieces), ADDR)
            seen = []
            for req in parser:
                if req.method == "POST":
                    assert req.body.read() == b"abc"  # (read whole; the PUT's is not)
                seen.append((req.method, req.path, req.should_close(),
                             type(req.body.reader).__name__))
            assert seen == [("PUT", "/v1/a/c/o", False, "LengthReader"),
                            ("GET", "/v1/a/c/o", False, "LengthReader"),
                            ("POST", "/v1/a/c/o", False, "LengthReader"),
                            ("GET", "/v1/a/c/p", False, "LengthReader"),
                            ("HEAD", "/v1/a/c/q", True, "LengthReader")], (cls, reads)


def test_scheme_and_singleton_headers_get_gunicorns_policy_every_time() -> None:
    """Names the policy leaves alone are kept without it once seen; the scheme headers of
    a trusted peer, a repeated Host, Expect and names with '_' still get it, each time."""
    heads = [b"GET /v1/a HTTP/1.1\r\nX-Forwarded-Proto: https\r\nX-A: 1\r\n\r\n",
             b"GET /v1/a HTTP/1.1\r\nX-A: 1\r\nX-Forwarded-Proto: http\r\n"
             b"X-Forwarded-Proto: https\r\n\r\n",
             b"GET /v1/a HTTP/1.1\r\nHost: a\r\nX-A: 2\r\nHost: b\r\n\r\n",
             b"PUT /v1/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
             b"GET /v1/a HTTP/1.1\r\nExpect: nothing\r\n\r\n",
             b"GET /v1/a HTTP/1.1\r\nX_Under: 1\r\nX-A: 3\r\n\r\n"]
    for _ in range(3):
        for head in heads:
            assert _parse(SwiftRequest, head) == _parse(Request, head), head
    fast = SwiftRequest(CFG, IterUnreader([heads[0]]), ADDR)
    assert fast.scheme == "https"

"""The fast reads of small objects (pithos.api.fast_read) answer exactly what the full stack
answers: the same status, the same headers in the same order and case (the transaction ids
aside, which are drawn per request: both in the same form and place), the same body.

Two apps over the same services, one with the fast reads and one without (what
PITHOS_FAST_READS=0 serves), are asked the same drawn requests: objects with odd names,
metadata and content, kept inline or as blocks, in containers with ACLs, versioning, CORS
or sharing, or special (links, manifests, published, expired); asked by the owner, another
account, an ACL's reader, with an expired, a bad or no token, with headers and query
strings the fast reads take or leave; GET and HEAD.  Any difference fails.  The plain
owner's reads must be answered by the fast reads (else the comparison proves nothing), and
nothing else must be.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from gunicorn.util import unquote_to_wsgi_str
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.conftest import catalog_databases, postgres_database

TXID = re.compile(r"tx[0-9a-f]{24}")
OWNER_HEADERS = {"X-Auth-Token": "{owner}"}
# The headers the benchmarks' client (benchmarks/bench_http.py) and python-swiftclient send.
CLIENT_HEADERS = {"User-Agent": "python-swiftclient-4.6.0", "Accept-Encoding": "gzip, deflate",
                  "Accept": "*/*", "Connection": "keep-alive"}


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def normalized(self) -> tuple[str, list[tuple[str, str]], bytes]:
        """The answer with its transaction ids replaced by one mark (each checked first)."""
        out = []
        for name, value in self.headers:
            if name in ("X-Trans-Id", "X-Openstack-Request-Id"):
                assert TXID.fullmatch(value), (name, value)
                value = "TX"
            out.append((name, value))
        return self.status, out, self.body


class World:
    """Services over one catalog, two apps over them, users, tokens and containers."""

    def __init__(self, data: Any, catalog_url: str) -> None:
        from pithos.api.app import create_app
        from pithos.cli.serve import build_services
        from pithos.config import Storage
        from pithos.core.offload import Offload

        # (Plain threads: this process has no gevent hub of a worker's.)
        self.services = build_services(Storage(str(data), f"file://{data}/blocks",
                                               catalog_url), offload=Offload.threads())
        identity = self.services.identity
        identity.add_user("test", "tester", "testing", admin=True)
        identity.add_user("test", "reader", "reading", admin=False)
        identity.add_user("test2", "tester2", "testing2", admin=True)
        self.fast = create_app(self.services)
        self.full = create_app(self.services, fast_reads=False)
        self.fast_answers = 0
        reads = self.fast.fast_reads
        assert reads is not None and self.full.fast_reads is None

        def counted(env: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            answer = reads(env, start_response)
            self.fast_answers += answer is not None
            return answer

        self.fast.fast_reads = counted
        self.tokens = {
            "owner": identity.login("test", "tester", "testing")[1],  # type: ignore[index]
            "expired": identity.login("test", "tester", "testing", ttl_s=-1)[1],  # type: ignore[index]
            "reader": identity.login("test", "reader", "reading")[1],  # type: ignore[index]
            "other": identity.login("test2", "tester2", "testing2")[1],  # type: ignore[index]
            "bad": "PTK_" + "0" * 64, "empty": ""}

    def call(self, app: Any, method: str, target: str, headers: dict[str, str] | None = None,
             body: bytes = b"") -> Answer:
        """A request as `pithos serve` hands it to the app: `target` as sent on the request
        line (latin-1 characters, one per byte), the environ made as gunicorn makes it."""
        path, _, query = target.partition("?")
        env: dict[str, Any] = {
            "REQUEST_METHOD": method, "RAW_URI": target, "QUERY_STRING": query,
            "PATH_INFO": unquote_to_wsgi_str(path), "SCRIPT_NAME": "",
            "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "HTTP_HOST": "127.0.0.1:8080"}
        for name, value in (headers or {}).items():
            if value[:1] == "{" and value[1:-1] in self.tokens:  # ("{owner}": its token)
                value = self.tokens[value[1:-1]]
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[key] = value
            else:
                env["HTTP_" + key] = value
        if (body or method == "PUT") and "CONTENT_LENGTH" not in env:
            env["CONTENT_LENGTH"] = str(len(body))
        got: list[Any] = []
        out = app(env, lambda status, hdrs, exc_info=None: got.extend([status, hdrs]))
        try:
            data = b"".join(out)
        finally:
            if hasattr(out, "close"):
                out.close()
        return Answer(got[0], list(got[1]), data)

    def owner(self, method: str, target: str, headers: dict[str, str] | None = None,
              body: bytes = b"") -> Answer:
        """A request of the owner's through the full stack (to set things up)."""
        answer = self.call(self.full, method, target, {**OWNER_HEADERS, **(headers or {})},
                           body)
        return answer

    def both(self, method: str, target: str, headers: dict[str, str] | None = None
             ) -> tuple[Answer, bool]:
        """The full stack's answer, checked equal to the fast app's; and whether the fast
        reads answered it."""
        before = self.fast_answers
        full = self.call(self.full, method, target, headers)
        fast = self.call(self.fast, method, target, headers)
        assert fast.normalized() == full.normalized(), (method, target, headers)
        return full, self.fast_answers > before


CONTAINERS = {
    "plain": {},
    "acl": {"X-Container-Read": ".r:*,test:reader,test2"},
    "versioned": {"X-Versions-Enabled": "true"},
    "legacy": {"X-Versions-Location": "archive"},
    "cors": {"X-Container-Meta-Access-Control-Allow-Origin": "*"},
    "odd é ☃%": {},
}


def _path(container: str, name: str, account: str = "AUTH_test", raw: bool = False) -> str:
    """/v1/ACCOUNT/CONTAINER/NAME as a client sends it: percent-encoded, or (`raw`) its UTF-8
    bytes as they are but for what a request line cannot carry."""
    if not raw:
        return f"/v1/{account}/{quote(container)}/{quote(name)}"
    keep = quote(f"{container}/{name}", safe="/" + "".join(
        ch for ch in f"{container}{name}" if ord(ch) > 127))
    return f"/v1/{account}/" + keep.encode().decode("latin-1")


@pytest.fixture(scope="module", params=catalog_databases())
def world(request, tmp_path_factory):
    data = tmp_path_factory.mktemp("fast-read")
    drop = None
    if request.param == "postgresql":
        url, drop = postgres_database("fastread")
    else:
        from pithos.catalog import local_url

        url = local_url(str(data))
    w = World(data, url)
    for name, headers in {"archive": {}, "segments": {}, **CONTAINERS}.items():
        assert w.owner("PUT", f"/v1/AUTH_test/{quote(name)}", headers).status[:3] in (
            "201", "202")
    assert w.call(w.full, "PUT", "/v1/AUTH_test2/theirs", {"X-Auth-Token": "{other}"}
                  ).status.startswith("201")
    assert w.owner("PUT", "/v1/AUTH_test/plain/o", body=b"hello").status.startswith("201")
    # The special objects every draw may ask for, beside the drawn ones.
    for target, headers, body in (
            ("/v1/AUTH_test/segments/seg1", {}, b"abc"),
            ("/v1/AUTH_test/segments/seg2", {}, b"def"),
            ("/v1/AUTH_test/plain/dlo", {"X-Object-Manifest": "segments/seg"}, b""),
            ("/v1/AUTH_test/plain/slo?multipart-manifest=put", {},
             b'[{"path": "segments/seg1"}, {"path": "segments/seg2"}]'),
            ("/v1/AUTH_test/plain/link", {"X-Symlink-Target": "plain/o"}, b""),
            ("/v1/AUTH_test/plain/published", {"X-Object-Public": "true"}, b"for all"),
            ("/v1/AUTH_test/plain/shared", {"X-Object-Sharing": "read=test2"}, b"for test2"),
            ("/v1/AUTH_test/plain/big", {}, b"b" * (16 * 1024 + 1)),
            ("/v1/AUTH_test/plain/empty", {}, b""),
            ("/v1/AUTH_test/versioned/o", {}, b"first"),
            ("/v1/AUTH_test/versioned/o", {}, b"second"),
            ("/v1/AUTH_test/legacy/o", {}, b"first"),
            ("/v1/AUTH_test/legacy/o", {}, b"second"),
            ("/v1/AUTH_test/acl/o", {}, b"acl'd"),
            ("/v1/AUTH_test/cors/o", {"X-Object-Meta-Color": "red"}, b"cors")):
        answer = w.owner("PUT", target, headers, body)
        assert answer.status.startswith("201"), (target, answer.status, answer.body)
    yield w
    if drop is not None:
        w.services.objects.catalog.close()
        drop()


SPECIAL = ["plain/o", "plain/dlo", "plain/slo", "plain/link", "plain/published",
           "plain/shared", "plain/big", "plain/empty", "versioned/o", "legacy/o", "acl/o",
           "cors/o", "plain/missing", "nope/o", "segments/seg1"]

# Object names and metadata with what makes names and headers odd: slashes, spaces,
# percent signs, '?', '#', non-ASCII, letters whose title case is another length.
NAME_CHARS = "ab/ %?#+;é☃ßǆ~."
names = st.text(NAME_CHARS, min_size=1, max_size=10)
meta_names = st.text("abcxyzß0-", min_size=1, max_size=8).filter(
    lambda n: n.isascii() and n.strip("-") == n)
meta_values = st.text(st.characters(min_codepoint=33, max_codepoint=0x2603,
                                    blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs")),
                      min_size=1, max_size=12).map(lambda s: s.encode().decode("latin-1"))
SYS = ("Content-Disposition", "Content-Encoding", "Content-Language", "Cache-Control",
       "Expires")
sizes = st.sampled_from([0, 1, 5, 4096, 16 * 1024, 16 * 1024 + 1])


@st.composite
def objects(draw: Any) -> tuple[str, str, dict[str, str], bytes]:
    """(container, name, PUT headers, content) of an object to make."""
    container = draw(st.sampled_from(list(CONTAINERS)))
    name = draw(names)
    headers = {f"X-Object-Meta-{k}": v for k, v in
               draw(st.dictionaries(meta_names, meta_values, max_size=3)).items()}
    for h in draw(st.lists(st.sampled_from(SYS), max_size=3, unique=True)):
        headers[h] = draw(meta_values)
    content_type = draw(st.sampled_from([None, "text/plain", "application/x-odd; a=b"]))
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["X-Delete-After"] = "100000"
    size = draw(sizes)
    return container, name, headers, bytes(draw(st.binary(min_size=size, max_size=size)))


TOKENS = st.sampled_from(["owner", "owner", "owner", "owner", "expired", "reader", "other",
                          "bad", "empty", None])
EXTRA = {"Range": "bytes=0-1", "If-None-Match": "*", "If-Match": '"nope"',
         "If-Modified-Since": "Mon, 07 Dec 2026 00:00:00 GMT",
         "Origin": "http://x.example", "Referer": "http://bad.example.com/",
         "X-Web-Mode": "true", "X-Newest": "true", "X-Object-Sysmeta-Symlink-Target": "plain/o",
         "Content-Length": "0", "X-Storage-Token": "{bad}", "X-Forwarded-For": "10.0.0.1",
         "X-Forwarded-Proto": "https", "Forwarded": "for=192.0.2.1;proto=https",
         "Cache-Control": "no-cache", "Accept-Language": "el", "X-Forwarded-Host": "a.example",
         **CLIENT_HEADERS}
QUERIES = ["", "", "", "", "", "symlink=get", "multipart-manifest=get", "hashmap",
           "version=list", "format=json", "temp_url_sig=x&temp_url_expires=1",
           "version-id=null"]


@st.composite
def requests(draw: Any) -> tuple[str, dict[str, str], str, str, bool]:
    """(method, headers, account segment, query, raw path) of a read."""
    method = draw(st.sampled_from(["GET", "HEAD"]))
    token = draw(TOKENS)
    headers = {}
    if token is not None:
        header = draw(st.sampled_from(["X-Auth-Token", "X-Auth-Token", "X-Storage-Token"]))
        headers[header] = "{" + token + "}"
    for name in draw(st.lists(st.sampled_from(sorted(EXTRA)), max_size=3, unique=True)):
        headers.setdefault(name, EXTRA[name])
    account = draw(st.sampled_from(["AUTH_test", "AUTH_test", "test", "AUTH_test2"]))
    return method, headers, account, draw(st.sampled_from(QUERIES)), draw(st.booleans())


def test_drawn_reads_are_answered_alike(world) -> None:
    made: set[tuple[str, str]] = set()
    answered = [0, 0]  # (fast, all)

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(obj=objects(), req=requests(), special=st.sampled_from([None, None, *SPECIAL]))
    def check(obj: tuple[str, str, dict[str, str], bytes],
              req: tuple[str, dict[str, str], str, str, bool], special: str | None) -> None:
        container, name, put_headers, content = obj
        if (container, name) not in made:
            made.add((container, name))
            world.owner("PUT", _path(container, name), put_headers, content)
        if special is not None:
            container, _, name = special.partition("/")
        method, headers, account, query, raw = req
        target = _path(container, name, account, raw) + (f"?{query}" if query else "")
        _, fast = world.both(method, target, headers)
        answered[0] += fast
        answered[1] += 1

    check()
    print("answered by the fast reads, of all:", answered)
    # The owner's plain reads of inline objects, a good share of the draws, went the fast
    # way: the comparison above compared the fast reads, not the full stack with itself.
    assert answered[0] >= answered[1] // 20, answered


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_owners_plain_read_goes_the_fast_way_and_nothing_else(world, method) -> None:
    with_meta = {"X-Object-Meta-Colour": "blue", "X-Object-Meta-ß": "x",
                 "Content-Disposition": "inline", "X-Delete-After": "100000",
                 "Content-Type": "text/odd"}
    world.owner("PUT", "/v1/AUTH_test/plain/m%20%C3%A9", with_meta, b"meta" * 100)
    for target, headers in (("/v1/AUTH_test/plain/o", OWNER_HEADERS),
                            ("/v1/test/plain/o", {**OWNER_HEADERS, **CLIENT_HEADERS}),
                            ("/v1/AUTH_test/plain/m%20%C3%A9", {"X-Storage-Token": "{owner}"}),
                            ("/v1/AUTH_test/plain/empty", OWNER_HEADERS),
                            ("/v1/AUTH_test/plain/o", {  # (behind a proxy)
                                **OWNER_HEADERS, "X-Forwarded-For": "192.0.2.1",
                                "X-Forwarded-Proto": "https", "Via": "1.1 lb"})):
        answer, fast = world.both(method, target, headers)
        assert fast and answer.status == "200 OK", (target, answer.status)
    answer, fast = world.both(method, "/v1/AUTH_test/plain/m%20%C3%A9", OWNER_HEADERS)
    assert dict(answer.headers)["X-Object-Meta-Colour"] == "blue"
    assert dict(answer.headers)["Content-Disposition"] == "inline"
    assert answer.body == (b"" if method == "HEAD" else b"meta" * 100)
    # Anything else is the full stack's: other callers, other requests, other objects.
    for target, headers in (
            ("/v1/AUTH_test/acl/o", {"X-Auth-Token": "{reader}"}),
            ("/v1/AUTH_test/acl/o", {"X-Auth-Token": "{other}"}),
            ("/v1/AUTH_test/acl/o", {}),
            ("/v1/AUTH_test/plain/o", {"X-Auth-Token": "{expired}"}),
            ("/v1/AUTH_test/plain/o", {"X-Auth-Token": "{bad}"}),
            ("/v1/AUTH_test/plain/o", {**OWNER_HEADERS, "Range": "bytes=1-2"}),
            ("/v1/AUTH_test/plain/o", {**OWNER_HEADERS, "If-None-Match": "*"}),
            ("/v1/AUTH_test/plain/o", {**OWNER_HEADERS, "Origin": "http://a.example"}),
            ("/v1/AUTH_test/plain/o?symlink=get", OWNER_HEADERS),
            ("/v1/AUTH_test/plain/o?", {**OWNER_HEADERS, "X-Web-Mode": "1"}),
            ("/v1/AUTH_test/plain/link", OWNER_HEADERS),
            ("/v1/AUTH_test/plain/published", OWNER_HEADERS),
            ("/v1/AUTH_test/plain/dlo", OWNER_HEADERS),
            ("/v1/AUTH_test/plain/slo", OWNER_HEADERS),
            ("/v1/AUTH_test/plain/big", OWNER_HEADERS),
            ("/v1/AUTH_test/plain/missing", OWNER_HEADERS),
            ("/v1/AUTH_test/versioned/o", OWNER_HEADERS),
            ("/v1/AUTH_test/nope/o", OWNER_HEADERS),
            ("/v1/AUTH_test%2Fx/plain/o", OWNER_HEADERS),
            ("/v1/AUTH_test/pl%2Fain/o", OWNER_HEADERS)):
        _, fast = world.both(method, target, headers)
        assert not fast, (target, headers)


def test_a_damaged_inline_row_is_never_served_by_either(world) -> None:
    """The fast reads check the row's bytes against its root as the full stack does; a
    damaged one is the full stack's 500, never served."""
    assert world.owner("PUT", "/v1/AUTH_test/plain/damaged", body=b"good bytes"
                       ).status.startswith("201")
    objects = world.services.objects
    container = objects.catalog.account_and_container("test", "plain").container
    v = objects.get_object(container, "damaged")
    with objects.catalog.engine.begin() as conn:
        conn.execute(text("UPDATE versions SET inline_data = :d WHERE id = :i"),
                     {"d": b"evil bytes", "i": v.version_id})
    answer, fast = world.both("GET", "/v1/AUTH_test/plain/damaged", OWNER_HEADERS)
    assert not fast and answer.status.startswith("500") and b"evil" not in answer.body


def _exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Each request's whole answer as it came on the wire, one keep-alive connection."""
    import socket

    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        buf = b""
        for request in requests:
            sock.sendall(request)
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if request.startswith(b"HEAD "):
                length = 0
            while len(rest) < length:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                rest += chunk
            answers.append(head + b"\r\n\r\n" + rest[:length])
            buf = rest[length:]
    return answers


def test_a_live_server_sends_the_same_bytes_with_and_without_them(tmp_path) -> None:
    """`pithos serve` with the fast reads and with PITHOS_FAST_READS=0, over one data
    directory: the same bytes on the wire for the same requests (the Date and the
    transaction ids aside), on one keep-alive connection each."""
    import requests as http

    from tests.conftest import PithosServer

    full = PithosServer(tmp_path, env={"PITHOS_FAST_READS": "0"})
    try:
        fast = PithosServer(tmp_path)
        try:
            r = http.get(full.auth_url, headers={"X-Auth-User": "test:tester",
                                                 "X-Auth-Key": "testing"}, timeout=30)
            token = r.headers["X-Auth-Token"]
            url = f"{full.url}/v1/AUTH_test/c"
            assert http.put(url, headers={"X-Auth-Token": token}, timeout=30).ok
            for name, headers in (("o", {}), ("m%20%C3%A9", {"X-Object-Meta-Colour": "blue",
                                                             "Content-Type": "text/odd",
                                                             "Content-Disposition": "inline"})):
                assert http.put(f"{url}/{name}", data=b"x" * 4096, timeout=30, headers={
                    "X-Auth-Token": token, **headers}).status_code == 201
            sent = []
            for method, name, extra in (
                    ("GET", "o", ""), ("HEAD", "o", ""), ("GET", "m%20%C3%A9", ""),
                    ("GET", "o", "Range: bytes=1-2\r\n"), ("GET", "missing", ""),
                    ("GET", "o", "X-Auth-Token: x\r\n")):
                token_line = "" if "X-Auth-Token" in extra else f"X-Auth-Token: {token}\r\n"
                sent.append((f"{method} /v1/AUTH_test/c/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             f"{token_line}{extra}\r\n").encode())
            strip = re.compile(rb"(?m)^(Date: .*|X-Trans-Id: tx[0-9a-f]{24}|"
                               rb"X-Openstack-Request-Id: tx[0-9a-f]{24})\r$")
            got_full = [strip.sub(b"-", a) for a in _exchange(full.port, sent)]
            got_fast = [strip.sub(b"-", a) for a in _exchange(fast.port, sent)]
            assert got_fast == got_full
            assert got_fast[0].startswith(b"HTTP/1.1 200 OK\r\n")
            assert got_fast[0].endswith(b"\r\n\r\n" + b"x" * 4096)
        finally:
            fast.stop()
    finally:
        full.stop()


def test_an_object_left_to_the_full_stack_is_looked_up_once(world, monkeypatch) -> None:
    """The version the fast reads found of an object they leave to the full stack (a large
    object's, a link's, a published one's), or that there is none, goes with the request:
    one catalog statement for it, as without them."""
    catalog = world.services.objects.catalog
    asked: list[str] = []
    lookup = catalog.object_and_public_token

    def counted(container_id: int, name: str) -> Any:
        asked.append(name)
        return lookup(container_id, name)

    monkeypatch.setattr(catalog, "object_and_public_token", counted)
    for name in ("big", "published", "link", "dlo", "o", "missing"):
        for app in (world.full, world.fast):
            for method in ("GET", "HEAD"):
                asked.clear()
                answer = world.call(app, method, f"/v1/AUTH_test/plain/{name}", OWNER_HEADERS)
                assert answer.status == ("404 Not Found" if name == "missing" else "200 OK")
                assert asked.count(name) == 1, (name, asked)

"""Issue 21: account, container and object behaviours of Swift's functional suite
(scripts/swift-conformance), each pinned here against a real `pithos serve` with raw HTTP or
python-swiftclient: account ACLs as tempauth keeps them, metadata limits over several POSTs,
oversized headers, listing limits, "Bad URL", which side of a copy answers first, and
non-ASCII content types in listings."""

from __future__ import annotations

import gc
import json
import socket

import pytest
import swiftclient

from tests.swift_helpers import TIMEOUT_S, login, request


@pytest.fixture(scope="module", autouse=True)
def _drop_idle_connections(pithos_server):
    yield
    gc.collect()


def conn(server, user: str = "test:tester", key: str = "testing") -> swiftclient.Connection:
    return swiftclient.Connection(server.auth_url, user, key, retries=0, timeout=TIMEOUT_S)


def test_account_acl_is_kept_compact_and_cleared_by_an_empty_one(pithos_server):
    me = login(pithos_server)
    try:
        r = request(pithos_server, "POST", me.path, token=me.token,
                    headers={"X-Account-Access-Control": '{ "admin" : [ "bob" ] }'})
        assert r.status == 204
        r = request(pithos_server, "HEAD", me.path, token=me.token)
        assert r.headers["x-account-access-control"] == '{"admin":["bob"]}'
        # Garbage is refused and changes nothing.
        r = request(pithos_server, "POST", me.path, token=me.token,
                    headers={"X-Account-Access-Control": "yuck"})
        assert r.status == 400
        r = request(pithos_server, "GET", me.path, token=me.token)
        assert r.headers["x-account-access-control"] == '{"admin":["bob"]}'
    finally:
        r = request(pithos_server, "POST", me.path, token=me.token,
                    headers={"X-Account-Access-Control": "{}"})
    assert r.status == 204
    r = request(pithos_server, "HEAD", me.path, token=me.token)
    assert "x-account-access-control" not in r.headers


@pytest.mark.parametrize("kind", ["account", "container"])
def test_metadata_total_is_checked_after_the_post(pithos_server, kind):
    """Each POST fits the limit (4096 bytes) alone; the second would take the sum over it."""
    me = login(pithos_server)
    path = me.path if kind == "account" else f"{me.path}/meta-total"
    if kind == "container":
        assert request(pithos_server, "PUT", path, token=me.token).status == 201
    prefix = f"X-{kind.title()}-Meta-"
    first = {f"{prefix}A{i}": "x" * 250 for i in range(10)}  # about 2.5 KB
    second = {f"{prefix}B{i}": "y" * 250 for i in range(8)}  # about 2 KB
    try:
        r = request(pithos_server, "POST", path, token=me.token, headers=first)
        assert r.status == 204
        r = request(pithos_server, "POST", path, token=me.token, headers=second)
        assert r.status == 400 and b"Total metadata too large" in r.body
        r = request(pithos_server, "HEAD", path, token=me.token)
        assert f"x-{kind}-meta-b0" not in r.headers
        # Removing the first set in the same POST fits.
        r = request(pithos_server, "POST", path, token=me.token,
                    headers={**{k: "" for k in first}, **second})
        assert r.status == 204
    finally:
        request(pithos_server, "POST", path, token=me.token,
                headers={k: "" for k in (*first, *second)})


def _status_of_raw(server, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as s:
        s.sendall(data)
        got = b""
        while b"\r\n" not in got and (chunk := s.recv(65536)):
            got += chunk
    return int(got.split(b" ", 2)[1])


def test_oversized_header_and_too_many_headers_are_400(pithos_server):
    """As Swift answers them (gunicorn's own answer is 431)."""
    me = login(pithos_server)
    head = f"POST {me.path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {me.token}\r\n".encode()
    big = b"X-Account-Meta-Big: " + b"x" * 9000 + b"\r\n"
    assert _status_of_raw(pithos_server, head + big + b"Content-Length: 0\r\n\r\n") == 400
    many = b"".join(b"X-Account-Meta-K%d: v\r\n" % i for i in range(120))
    assert _status_of_raw(pithos_server, head + many + b"Content-Length: 0\r\n\r\n") == 400


def test_listing_limit_that_is_not_a_number_is_ignored(pithos_server):
    me = login(pithos_server)
    assert request(pithos_server, "PUT", f"{me.path}/lim", token=me.token).status == 201
    for limit in ("5000.0", "-1", "x"):
        r = request(pithos_server, "GET", f"{me.path}?limit={limit}&format=json",
                    token=me.token)
        assert r.status == 200 and "lim" in [c["name"] for c in r.json()]
    r = request(pithos_server, "GET", f"{me.path}?limit=10001", token=me.token)
    assert r.status == 412
    r = request(pithos_server, "GET", f"{me.path}?limit=1&format=json", token=me.token)
    assert r.status == 200 and len(r.json()) == 1


def test_bad_url_is_412(pithos_server):
    me = login(pithos_server)
    r = request(pithos_server, "PUT", "/v1", token=me.token)
    assert r.status == 412 and r.body == b"Bad URL"
    r = request(pithos_server, "GET", "/info%20asdf", token=me.token)
    assert r.status == 412 and r.body == b"Bad URL" and r.headers["x-trans-id"].startswith("tx")
    # The other APIs keep their 404.
    assert request(pithos_server, "GET", "/image/v2/nothing-here").status == 404


def test_copy_answers_for_its_source_first(pithos_server):
    c = conn(pithos_server)
    c.put_container("copy-src")
    c.put_object("copy-src", "o", b"source")
    me = login(pithos_server)
    # No such source container, and no such destination container either: the source's 404.
    r = request(pithos_server, "COPY", f"{me.path}/no-such-src/o", token=me.token,
                headers={"Destination": "no-such-dest/x", "Destination-Account": "AUTH_test2"})
    assert r.status == 404
    # A source the user may not read, and a missing destination: the source's 403.
    other = conn(pithos_server, "test2:tester2", "testing2")
    other.put_container("private-src")
    other.put_object("private-src", "o", b"private")
    r = request(pithos_server, "PUT", f"{me.path}/no-such-dest/x", token=me.token, body=b"",
                headers={"X-Copy-From": "private-src/o", "X-Copy-From-Account": "AUTH_test2"})
    assert r.status == 403
    # With the source readable, the missing destination answers.
    r = request(pithos_server, "PUT", f"{me.path}/no-such-dest/x", token=me.token, body=b"",
                headers={"X-Copy-From": "copy-src/o"})
    assert r.status == 404


def test_non_ascii_content_type_is_listed_as_sent(pithos_server):
    """Swift's clients send a content type's UTF-8 bytes; the listing gives the text back."""
    me = login(pithos_server)
    assert request(pithos_server, "PUT", f"{me.path}/ctype", token=me.token).status == 201
    ctype = "text/plain; name=ünï"
    r = request(pithos_server, "PUT", f"{me.path}/ctype/o", token=me.token, body=b"x",
                headers={"Content-Type": ctype.encode()})
    assert r.status == 201
    listing = request(pithos_server, "GET", f"{me.path}/ctype?format=json", token=me.token)
    assert [o["content_type"] for o in listing.json()] == [ctype]
    xml = request(pithos_server, "GET", f"{me.path}/ctype?format=xml", token=me.token)
    assert f"<content_type>{ctype}</content_type>".encode() in xml.body
    head = request(pithos_server, "HEAD", f"{me.path}/ctype/o", token=me.token)
    assert head.headers["content-type"].encode("latin-1").decode() == ctype
    assert json.loads(listing.body)[0]["hash"] == head.headers["etag"]


@pytest.mark.parametrize("kind", ["account", "container", "object"])
def test_blank_metadata_name_is_400(pithos_server, kind):
    me = login(pithos_server)
    assert request(pithos_server, "PUT", f"{me.path}/blank", token=me.token).status in (201, 202)
    path = {"account": me.path, "container": f"{me.path}/blank",
            "object": f"{me.path}/blank/o"}[kind]
    method = "PUT" if kind == "object" else "POST"
    r = request(pithos_server, method, path, token=me.token, body=b"x",
                headers={f"X-{kind.title()}-Meta-": "v"})
    assert r.status == 400 and r.body == b"Metadata name cannot be empty"


def test_unknown_method_is_405(pithos_server):
    """Any token is a method: one the API does not know is 405, as Swift's (not 400)."""
    me = login(pithos_server)
    for method in ("LICK", "GETorHEAD_base"):
        assert request(pithos_server, method, f"{me.path}", token=me.token).status == 405


def test_copy_of_a_range_and_delete_if_delete_at(pithos_server):
    c = conn(pithos_server)
    c.put_container("cr")
    c.put_object("cr", "src", b"0123456789")
    me = login(pithos_server)
    r = request(pithos_server, "COPY", f"{me.path}/cr/src", token=me.token,
                headers={"Destination": "cr/dst", "Range": "bytes=1-2"})
    assert r.status == 201 and c.get_object("cr", "dst")[1] == b"12"
    c.put_object("cr", "exp", b"x", headers={"X-Delete-At": "4102444800"})
    for value, status in (("bad", 400), ("4102444801", 412), ("4102444800", 204)):
        r = request(pithos_server, "DELETE", f"{me.path}/cr/exp", token=me.token,
                    headers={"X-If-Delete-At": value})
        assert r.status == status, value
    r = request(pithos_server, "DELETE", f"{me.path}/cr/dst", token=me.token)
    assert r.status == 204 and r.headers["content-type"] == "text/html; charset=UTF-8"


def test_path_listing_names_directory_markers_directly_under_it(pithos_server):
    c = conn(pithos_server)
    c.put_container("paths")
    for name in ("dir1/", "dir1/file", "dir1/sub/", "dir1/sub/x", "dir1/nomarker/y", "file1"):
        c.put_object("paths", name, b"")
    _, listing = c.get_container("paths", path="dir1")
    assert [o["name"] for o in listing] == ["dir1/file", "dir1/sub/"]
    me = login(pithos_server)  # (swiftclient drops an empty path)
    top = request(pithos_server, "GET", f"{me.path}/paths?path=&format=json", token=me.token)
    assert [o["name"] for o in top.json()] == ["dir1/", "file1"]


def test_unknown_storage_policy_is_400(pithos_server):
    me = login(pithos_server)
    r = request(pithos_server, "PUT", f"{me.path}/policied", token=me.token,
                headers={"X-Storage-Policy": "gold"})
    assert r.status == 400 and b"Invalid X-Storage-Policy" in r.body
    assert request(pithos_server, "HEAD", f"{me.path}/policied", token=me.token).status == 404
    r = request(pithos_server, "PUT", f"{me.path}/policied", token=me.token,
                headers={"X-Storage-Policy": "default"})
    assert r.status == 201
    r = request(pithos_server, "PUT", f"{me.path}/policied-too", token=me.token,
                headers={"X-Storage-Policy": ""})  # (empty: the default, as Swift's)
    assert r.status == 201

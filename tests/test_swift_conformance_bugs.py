"""Issue 21: the protocol bugs OpenStack Swift's own functional suite found (see
scripts/swift-conformance), each pinned here against a real `pithos serve`, through the `swift`
CLI, python-swiftclient and raw HTTP."""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import socket

import pytest
import swiftclient

from tests.swift_helpers import TIMEOUT_S, Login, login, request, swift_cli

# Answers that must come while the client still holds the connection open (the server must not
# wait for a body): bounded well below the suite's own time limits.
REPLY_S = 20


@pytest.fixture(scope="module", autouse=True)
def _drop_idle_connections(pithos_server):
    yield
    gc.collect()


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    return login(pithos_server)


def reply_head(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data` and read the answer's status and headers without closing our side: a
    server that waits for more of the request never answers (the socket times out)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_S) as s:
        s.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if data.startswith(b"HEAD ") else int(headers.get("Content-Length", 0))
        while len(body) < length and (chunk := s.recv(65536)):
            body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body


def conn(server) -> swiftclient.Connection:
    return swiftclient.Connection(server.auth_url, "test:tester", "testing", retries=0,
                                  timeout=TIMEOUT_S)


# -- listings ------------------------------------------------------------------------------------

def test_delimiter_listing_does_not_repeat_the_marker_subdir(pithos_server, me):
    """marker=a/&delimiter=/ must not name a/ again, or every client paging by marker loops."""
    c = conn(pithos_server)
    c.put_container("delim")
    for name in ("a/b", "a/c", "b", "c/d"):
        c.put_object("delim", name, b"x")
    _, page = c.get_container("delim", delimiter="/", marker="a/")
    assert [e.get("subdir", e.get("name")) for e in page] == ["b", "c/"]
    _, whole = c.get_container("delim", delimiter="/")
    assert [e.get("subdir", e.get("name")) for e in whole] == ["a/", "b", "c/"]
    # The swift CLI pages by marker until an empty page: it ends, each entry once.
    out = swift_cli(pithos_server, "list", "delim", "--delimiter", "/", timeout=60).stdout
    assert out.split() == ["a/", "b", "c/"]


def test_account_listing_honours_the_delimiter(pithos_server, me):
    c = conn(pithos_server)
    for name in ("test", "test-bar", "test-foo", "tesu"):
        c.put_container(name)
    _, rows = c.get_account(prefix="tes", delimiter="-")
    assert [r.get("subdir", r.get("name")) for r in rows] == ["test", "test-", "tesu"]
    assert rows[1] == {"subdir": "test-"}
    # Paging past the pseudo-directory by marker goes on after it, without repeating it.
    _, rows = c.get_account(prefix="tes", delimiter="-", marker="test-")
    assert [r["name"] for r in rows] == ["tesu"]
    r = request(pithos_server, "GET", f"{me.path}?prefix=tes&delimiter=-", token=me.token)
    assert r.body.decode().split() == ["test", "test-", "tesu"]
    # A delimiter of several characters, as Swift allows.
    _, rows = c.get_account(prefix="tes", delimiter="-f")
    assert [r.get("subdir", r.get("name")) for r in rows] == [
        "test", "test-bar", "test-f", "tesu"]


def test_container_get_and_head_carry_last_modified_and_listing_type(pithos_server, me):
    c = conn(pithos_server)
    c.put_container("dated")
    for method in ("HEAD", "GET"):
        r = request(pithos_server, method, f"{me.path}/dated", token=me.token)
        assert r.status == 204
        assert r.headers["last-modified"].endswith(" GMT")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
    head = c.head_container("dated")
    assert "last-modified" in head


# -- framing -------------------------------------------------------------------------------------

def test_put_without_length_or_chunking_is_411_at_once(pithos_server, me):
    request(pithos_server, "PUT", f"{me.path}/framing", token=me.token)
    # The body follows the headers but nothing says where it ends: no waiting for it.
    status, _, _ = reply_head(pithos_server, (
        f"PUT {me.path}/framing/obj HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {me.token}"
        "\r\n\r\n0123456789").encode())
    assert status == 411
    assert request(pithos_server, "HEAD", f"{me.path}/framing/obj",
                   token=me.token).status == 404


def test_a_transfer_coding_other_than_chunked_is_501(pithos_server, me):
    request(pithos_server, "PUT", f"{me.path}/framing", token=me.token)
    status, _, body = reply_head(pithos_server, (
        f"PUT {me.path}/framing/gz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {me.token}"
        "\r\nTransfer-Encoding: gzip,chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode())
    assert status == 501
    assert b"Transfer-Encoding" in body
    assert request(pithos_server, "HEAD", f"{me.path}/framing/gz", token=me.token).status == 404


# -- names ---------------------------------------------------------------------------------------

def test_invalid_utf8_path_is_412_and_raw_utf8_works(pithos_server, me):
    request(pithos_server, "PUT", f"{me.path}/names", token=me.token)
    bad = "\u00e9t\u00e9".encode()[::-1]  # bytes that are not UTF-8
    status, _, _ = reply_head(pithos_server, (
        f"PUT {me.path}/".encode() + bad + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"X-Auth-Token: {me.token}\r\nContent-Length: 0\r\n\r\n".encode()))
    assert status == 412
    # Raw UTF-8 in the request line, as Swift's clients send non-ASCII names.
    status, _, _ = reply_head(pithos_server, (
        f"PUT {me.path}/names/".encode() + "\u00e9t\u00e9".encode() + b" HTTP/1.1\r\n"
        + f"Host: 127.0.0.1\r\nX-Auth-Token: {me.token}\r\nContent-Length: 2\r\n\r\nhi".encode()))
    assert status == 201
    _, rows = conn(pithos_server).get_container("names")
    assert [r["name"] for r in rows] == ["\u00e9t\u00e9"]


# -- headers -------------------------------------------------------------------------------------

def test_header_names_come_back_title_cased_as_swift(pithos_server, me):
    request(pithos_server, "PUT", f"{me.path}/cased", token=me.token)
    request(pithos_server, "PUT", f"{me.path}/cased/obj", body=b"x", token=me.token,
            headers={"X-Object-Meta-color": "blue"})
    status, headers, _ = reply_head(pithos_server, (
        f"HEAD {me.path}/cased/obj HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {me.token}"
        "\r\nConnection: close\r\n\r\n").encode())
    assert status == 200
    assert headers.get("X-Object-Meta-Color") == "blue", headers
    assert "X-Trans-Id" in headers and "Etag" in headers and "Content-Length" in headers


def test_401_has_a_swift_challenge_and_errors_have_swift_bodies(pithos_server, me):
    r = request(pithos_server, "GET", f"{me.path}/x", token="not-a-token")
    assert r.status == 401
    assert r.headers["www-authenticate"] == f'Swift realm="{me.path.split("/")[2]}"'
    r = request(pithos_server, "GET", "/v1/AUTH_test", headers={"X-Auth-Token": "nope"})
    assert r.headers["www-authenticate"] == 'Swift realm="AUTH_test"'
    # A message of our own is sent as it is, as Swift's own messages are (no newline added).
    r = request(pithos_server, "GET", f"{me.path}/a%ff", token=me.token)
    assert (r.status, r.body) == (412, b"Invalid UTF8 or contains NULL")


# -- Pithos compatibility ------------------------------------------------------------------------

def test_container_post_of_octet_stream_stores_blocks(pithos_server, me):
    request(pithos_server, "PUT", f"{me.path}/raw", token=me.token)
    data = b"some block data"
    r = request(pithos_server, "POST", f"{me.path}/raw", body=data, token=me.token,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202
    hashes = r.body.decode().split()
    assert len(hashes) == 1
    # The same hash ?blocks answers, and the block is now there: ?missing names none.
    r = request(pithos_server, "POST", f"{me.path}/raw?blocks", body=data, token=me.token)
    assert json.loads(r.body) == hashes
    r = request(pithos_server, "POST", f"{me.path}/raw?missing", token=me.token,
                body=json.dumps(hashes).encode())
    assert json.loads(r.body) == []
    r = request(pithos_server, "POST", f"{me.path}/raw?format=json", body=b"other", token=me.token,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202 and len(r.json()) == 1
    # Without a body it stays the metadata update it was.
    r = request(pithos_server, "POST", f"{me.path}/raw", token=me.token,
                headers={"X-Container-Meta-K": "v"})
    assert r.status == 204


def test_slo_with_inline_data_segments(pithos_server, me):
    """A manifest mixing {"data": base64} segments with object segments (Swift's SLO suite
    builds one in its setUp): the bytes in order, Swift's ETag, the manifest as stored."""
    c = conn(pithos_server)
    c.put_container("inline")
    c.put_object("inline", "seg", b"B" * 10)
    manifest = [{"data": base64.b64encode(b"head-").decode()},
                {"path": "/inline/seg"},
                {"data": base64.b64encode(b"-tail").decode()}]
    c.put_object("inline", "mixed", json.dumps(manifest).encode(),
                 query_string="multipart-manifest=put")
    headers, body = c.get_object("inline", "mixed")
    assert body == b"head-" + b"B" * 10 + b"-tail"
    parts = [hashlib.md5(p).hexdigest() for p in (b"head-", b"B" * 10, b"-tail")]
    assert headers["etag"].strip('"') == hashlib.md5("".join(parts).encode()).hexdigest()
    _, stored = c.get_object("inline", "mixed", query_string="multipart-manifest=get")
    assert [("data" in s, s.get("name")) for s in json.loads(stored)] == [
        (True, None), (False, "/inline/seg"), (True, None)]
    # Bad base64, or a data segment with other keys: 400, nothing stored.
    for bad in ([{"data": "not base64!"}], [{"data": "aGk=", "path": "/inline/seg"}]):
        r = request(pithos_server, "PUT", f"{me.path}/inline/bad?multipart-manifest=put",
                    body=json.dumps(bad).encode(), token=me.token)
        assert r.status == 400, r
    assert request(pithos_server, "HEAD", f"{me.path}/inline/bad", token=me.token).status == 404
    # Deleting it with its segments deletes the object segment; the inline data goes with it.
    c.delete_object("inline", "mixed", query_string="multipart-manifest=delete")
    assert [o["name"] for o in c.get_container("inline")[1]] == []


def test_empty_account_or_container_before_a_name_is_404(pithos_server, me):
    for path in ("/v1//c/o", f"{me.path}//o", "/v1///o"):
        r = request(pithos_server, "GET", path, token=me.token)
        assert r.status == 404, path


def test_a_path_beginning_with_an_empty_segment_is_404_and_an_unknown_one_bad_url(
        pithos_server, me):
    """tests.py's testInvalidPath: //v1/AUTH_test is 404 (Swift's tempauth cannot split it),
    where a path of no API is Swift's 412 "Bad URL", both as Swift's text/html."""
    for path in (f"/{me.path}", f"/{me.path}/c/o", "//", "//v1"):
        r = request(pithos_server, "GET", path, token=me.token)
        assert (r.status, r.headers["content-type"]) == (404, "text/html; charset=UTF-8"), path
    for path in ("/nothing", "/v1"):
        r = request(pithos_server, "POST", path, token=me.token)
        assert (r.status, r.body, r.headers["content-type"]) == (
            412, b"Bad URL", "text/html; charset=UTF-8"), path


def test_account_listing_names_the_storage_policy(pithos_server, me):
    c = conn(pithos_server)
    c.put_container("policy-named")
    _, rows = c.get_account(prefix="policy-named")
    assert rows[0]["storage_policy"] == "default"
    r = request(pithos_server, "GET", f"{me.path}?prefix=policy-named&format=xml",
                token=me.token)
    assert b"<storage_policy>default</storage_policy>" in r.body


# -- test_container.py's last four ---------------------------------------------------------------

def test_a_204_says_content_length_0_through_the_server(pithos_server, me):
    """Swift's servers send `Content-Length: 0` on a 204 and its clients read it; gunicorn
    drops a 204's Content-Length unless pithos serve's response keeps it."""
    request(pithos_server, "PUT", f"{me.path}/empty204", token=me.token)
    for method, path in (("GET", "/empty204"), ("HEAD", "/empty204"), ("HEAD", ""),
                         ("POST", "/empty204")):
        status, headers, body = reply_head(pithos_server, (
            f"{method} {me.path}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-Auth-Token: {me.token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode())
        assert (status, headers.get("Content-Length"), body) == (204, "0", b""), (method, path)
        assert "Transfer-Encoding" not in headers
    # The connection stays usable after a 204: two requests on one connection.
    one = (f"HEAD {me.path}/empty204 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"X-Auth-Token: {me.token}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", pithos_server.port), timeout=REPLY_S) as s:
        s.sendall((one + one).encode())
        got = b""
        while got.count(b"\r\n\r\n") < 2 and (chunk := s.recv(65536)):
            got += chunk
    assert got.count(b"HTTP/1.1 204") == 2


def test_a_container_name_over_its_limit_is_refused_as_html(pithos_server, me):
    r = request(pithos_server, "PUT", f"{me.path}/{'X' * 2048}", body=b"there", token=me.token)
    assert r.status == 400
    assert r.headers["content-type"] == "text/html; charset=UTF-8"
    assert r.body == b"Container name length of 2048 longer than 256"
    # An object's name over its limit is text/plain, as Swift's proxy words it.
    request(pithos_server, "PUT", f"{me.path}/names", token=me.token)
    r = request(pithos_server, "PUT", f"{me.path}/names/{'o' * 1025}", body=b"x", token=me.token)
    assert (r.status, r.headers["content-type"]) == (400, "text/plain; charset=utf-8")


def _acl_user(server, me: Login, right: str) -> Login:
    """test:reader, given `right` ("read-write", "admin") by the account ACL."""
    r = request(server, "POST", me.path, token=me.token,
                headers={"X-Account-Access-Control": json.dumps({right: ["test:reader"]})})
    assert r.status == 204
    return login(server, "test:reader", "reading")


def test_owner_headers_of_a_non_admin_writer_are_dropped_and_the_rest_done(pithos_server, me):
    """As Swift's proxy drops its swift_owner_headers from whoever is not an account admin: a
    read-write user's container POST sets the metadata, not the ACLs nor the sync key."""
    path = f"{me.path}/owned"
    r = request(pithos_server, "PUT", path, token=me.token, headers={
        "X-Container-Read": "jdoe", "X-Container-Write": "jdoe",
        "X-Container-Sync-Key": "secret", "X-Container-Meta-Test": "v1"})
    assert r.status == 201
    owner_view = request(pithos_server, "HEAD", path, token=me.token).headers
    assert (owner_view["x-container-read"], owner_view["x-container-write"],
            owner_view["x-container-sync-key"]) == ("jdoe", "jdoe", "secret")
    rw = _acl_user(pithos_server, me, "read-write")
    try:
        seen = request(pithos_server, "HEAD", path, token=rw.token).headers
        assert seen["x-container-meta-test"] == "v1"
        assert not {"x-container-read", "x-container-write", "x-container-sync-key"} & set(seen)
        r = request(pithos_server, "POST", path, token=rw.token, headers={
            "X-Container-Read": "frank", "X-Container-Write": "frank",
            "X-Container-Sync-Key": "stolen", "X-Container-Sync-To": "http://evil/v1/a/c",
            "X-Container-Meta-Test": "v2"})
        assert r.status == 204
        owner_view = request(pithos_server, "HEAD", path, token=me.token).headers
        assert owner_view["x-container-meta-test"] == "v2"
        assert (owner_view["x-container-read"], owner_view["x-container-write"],
                owner_view["x-container-sync-key"]) == ("jdoe", "jdoe", "secret")
        # An admin by the account ACL is an owner: it sees and sets them.
        admin = _acl_user(pithos_server, me, "admin")
        assert request(pithos_server, "HEAD", path,
                       token=admin.token).headers["x-container-sync-key"] == "secret"
        r = request(pithos_server, "POST", path, token=admin.token, headers={
            "X-Container-Read": ".r:*", "X-Container-Sync-Key": "new"})
        assert r.status == 204
        owner_view = request(pithos_server, "HEAD", path, token=me.token).headers
        assert (owner_view["x-container-read"], owner_view["x-container-sync-key"]) == (
            ".r:*", "new")
    finally:
        request(pithos_server, "POST", me.path, token=me.token,
                headers={"X-Account-Access-Control": "{}"})
    # An empty key removes it; the key is no user metadata.
    request(pithos_server, "POST", path, token=me.token, headers={"X-Container-Sync-Key": ""})
    owner_view = request(pithos_server, "HEAD", path, token=me.token).headers
    assert "x-container-sync-key" not in owner_view
    assert not any(k.startswith("x-container-meta-sysmeta") for k in owner_view)


def test_container_sync_to_is_refused_with_a_reason(pithos_server, me):
    """No container sync here (not in /info): a sync target is a 400 that says so, as a Swift
    that allows no sync host answers; an empty one (a removal) is fine."""
    path = f"{me.path}/nosync"
    request(pithos_server, "PUT", path, token=me.token)
    for target in ("http://127.0.0.1:8080/v1/AUTH_test/other", "//realm/cluster/a/c"):
        r = request(pithos_server, "POST", path, token=me.token,
                    headers={"X-Container-Sync-To": target})
        assert r.status == 400 and b"container sync is not offered" in r.body, target
    r = request(pithos_server, "POST", path, token=me.token, headers={"X-Container-Sync-To": ""})
    assert r.status == 204
    assert "container_sync" not in request(pithos_server, "GET", "/info").json()


def test_bulk_delete_on_any_path_of_the_account_with_an_xml_report(pithos_server, me):
    """test_object.py's test_bulk_delete: DELETE /v1/ACCOUNT/C/O?bulk-delete is Swift's bulk
    delete (the body's paths are the account's), not a delete of O; its report in XML."""
    from xml.dom import minidom

    c = conn(pithos_server)
    c.put_container("bulkany")
    for name in ("o", "p", "q"):
        c.put_object("bulkany", name, b"x")
    r = request(pithos_server, "DELETE", f"{me.path}/bulkany/o?bulk-delete", token=me.token,
                body=b"bulkany/p\n", headers={"Accept": "application/xml",
                                               "Content-Type": "text/plain"})
    assert (r.status, r.headers["content-type"]) == (200, "application/xml; charset=utf-8")
    tree = minidom.parseString(r.body).documentElement
    assert tree.tagName == "delete"
    assert tree.getElementsByTagName("number_deleted")[0].childNodes[0].data == "1"
    assert tree.getElementsByTagName("response_status")[0].childNodes[0].data == "200 OK"
    assert [o["name"] for o in c.get_container("bulkany")[1]] == ["o", "q"]
    # On a container's path, JSON; a failure is listed inside (escaped in XML).
    r = request(pithos_server, "POST", f"{me.path}/bulkany?bulk-delete", token=me.token,
                body=b"/bulkany/q\n", headers={"Accept": "application/json"})
    assert (r.status, r.json()["Number Deleted"]) == (200, 1)
    r = request(pithos_server, "DELETE", f"{me.path}/bulkany?bulk-delete", token=me.token,
                body=b"/bulkany\n", headers={"Accept": "text/xml"})
    assert r.headers["content-type"] == "text/xml; charset=utf-8"
    assert b"<status>409 Conflict</status>" in r.body
    assert [o["name"] for o in c.get_container("bulkany")[1]] == ["o"]

"""Swift's symlinks (pithos/api/symlink.py) against a real `pithos serve`: dynamic and static
links, their errors, loops, POST, copies, listings, and that a link never reads for a caller
what the caller could not read by the target's own name."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tests.swift_helpers import Login, login, q, request

MD5_EMPTY = hashlib.md5(b"").hexdigest()


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    return login(pithos_server)


@pytest.fixture
def cont(pithos_server, me) -> str:
    name = "sym-" + uuid.uuid4().hex[:8]
    assert request(pithos_server, "PUT", f"{me.path}/{name}", token=me.token).status == 201
    return name


def put(server, me, path, body=b"", headers=None, query=""):
    return request(server, "PUT", f"{me.path}/{q(path)}{query}", body=body,
                   headers={"Content-Length": str(len(body)), **(headers or {})},
                   token=me.token)


def get(server, me, path, method="GET", headers=None, query=""):
    return request(server, method, f"{me.path}/{q(path)}{query}", headers=headers,
                   token=me.token)


def test_a_link_reads_as_its_target_and_as_itself_with_symlink_get(pithos_server, me, cont):
    assert put(pithos_server, me, f"{cont}/target", b"target body").status == 201
    made = put(pithos_server, me, f"{cont}/link", headers={"X-Symlink-Target": f"{cont}/target"})
    assert made.status == 201 and made.headers["etag"] == MD5_EMPTY
    got = get(pithos_server, me, f"{cont}/link")
    assert got.status == 200 and got.body == b"target body"
    assert got.headers["content-location"] == f"{me.path}/{cont}/target"
    ranged = get(pithos_server, me, f"{cont}/link", headers={"Range": "bytes=1-3"})
    assert ranged.status == 206 and ranged.body == b"arg"
    itself = get(pithos_server, me, f"{cont}/link", query="?symlink=get")
    assert itself.status == 200 and itself.body == b""
    assert itself.headers["x-symlink-target"] == f"{cont}/target"
    assert itself.headers["content-type"] == "application/symlink"
    # The system metadata behind it never reaches a client.
    assert not any(k.startswith("x-object-sysmeta") for k in itself.headers)


def test_clients_cannot_set_system_metadata(pithos_server, me, cont):
    made = put(pithos_server, me, f"{cont}/fake", b"data",
               headers={"X-Object-Sysmeta-Symlink-Target": f"{cont}/elsewhere"})
    assert made.status == 201
    assert get(pithos_server, me, f"{cont}/fake").body == b"data"


def test_bad_links_are_refused_with_swift_statuses(pithos_server, me, cont):
    target = {"X-Symlink-Target": f"{cont}/t"}
    assert put(pithos_server, me, f"{cont}/l", b"body", target).status == 400
    assert put(pithos_server, me, f"{cont}/l", headers={"X-Symlink-Target": "no-slash"}
               ).status == 412
    assert put(pithos_server, me, f"{cont}/l", headers={"X-Symlink-Target": "/c/o"}
               ).status == 412
    assert put(pithos_server, me, f"{cont}/l", headers={"X-Symlink-Target": f"{cont}/l"}
               ).status == 400
    bad_etag = put(pithos_server, me, f"{cont}/l",
                   headers={**target, "X-Symlink-Target-Etag": 'a"b'})
    assert bad_etag.status == 400
    missing = put(pithos_server, me, f"{cont}/l",
                  headers={**target, "X-Symlink-Target-Etag": MD5_EMPTY})
    assert missing.status == 409 and b"does not exist" in missing.body
    post = request(pithos_server, "POST", f"{me.path}/{cont}/l", headers=target,
                   token=me.token)
    assert post.status == 400


def test_a_static_link_checks_its_target_when_made_and_when_read(pithos_server, me, cont):
    body = b"static target"
    etag = hashlib.md5(body).hexdigest()
    assert put(pithos_server, me, f"{cont}/t", body).status == 201
    assert put(pithos_server, me, f"{cont}/wrong",
               headers={"X-Symlink-Target": f"{cont}/t",
                        "X-Symlink-Target-Etag": MD5_EMPTY}).status == 409
    assert put(pithos_server, me, f"{cont}/s", headers={"X-Symlink-Target": f"{cont}/t",
                                                        "X-Symlink-Target-Etag": etag}
               ).status == 201
    itself = get(pithos_server, me, f"{cont}/s", "HEAD", query="?symlink=get")
    assert itself.headers["x-symlink-target-etag"] == etag
    assert itself.headers["x-symlink-target-bytes"] == str(len(body))
    assert get(pithos_server, me, f"{cont}/s").body == body
    assert put(pithos_server, me, f"{cont}/t", b"changed").status == 201
    changed = get(pithos_server, me, f"{cont}/s")
    assert changed.status == 409
    assert changed.headers["content-location"] == f"{me.path}/{cont}/t"


def test_chains_are_followed_up_to_symloop_max_and_loops_end(pithos_server, me, cont):
    info = request(pithos_server, "GET", "/info").json()
    assert info["symlink"] == {"symloop_max": 2, "static_links": True}
    assert put(pithos_server, me, f"{cont}/t", b"end").status == 201
    previous = "t"
    for name in ("l1", "l2", "l3"):
        put(pithos_server, me, f"{cont}/{name}", headers={"X-Symlink-Target":
                                                          f"{cont}/{previous}"})
        previous = name
    assert get(pithos_server, me, f"{cont}/l2").body == b"end"  # two links
    assert get(pithos_server, me, f"{cont}/l3").status == 409   # three
    put(pithos_server, me, f"{cont}/a", headers={"X-Symlink-Target": f"{cont}/b"})
    put(pithos_server, me, f"{cont}/b", headers={"X-Symlink-Target": f"{cont}/a"})
    assert get(pithos_server, me, f"{cont}/a").status == 409
    dangling = get(pithos_server, me, f"{cont}/l4")
    assert dangling.status == 404


def test_post_to_a_link_answers_307_to_its_target(pithos_server, me, cont):
    put(pithos_server, me, f"{cont}/t", b"x")
    put(pithos_server, me, f"{cont}/l", headers={"X-Symlink-Target": f"{cont}/t"})
    post = request(pithos_server, "POST", f"{me.path}/{cont}/l",
                   headers={"X-Object-Meta-Color": "red"}, token=me.token)
    assert post.status == 307
    assert post.headers["location"] == f"{me.path}/{cont}/t"
    # The metadata went to the link, which is still a link.
    itself = get(pithos_server, me, f"{cont}/l", "HEAD", query="?symlink=get")
    assert itself.headers["x-object-meta-color"] == "red"
    assert itself.headers["x-symlink-target"] == f"{cont}/t"


def test_a_copy_of_a_link_copies_its_target_or_with_symlink_get_the_link(pithos_server, me,
                                                                         cont):
    put(pithos_server, me, f"{cont}/t", b"copied body")
    put(pithos_server, me, f"{cont}/l", headers={"X-Symlink-Target": f"{cont}/t"})
    assert put(pithos_server, me, f"{cont}/c1", headers={"X-Copy-From": f"{cont}/l"}
               ).status == 201
    c1 = get(pithos_server, me, f"{cont}/c1", query="?symlink=get")
    assert c1.body == b"copied body" and "x-symlink-target" not in c1.headers
    assert put(pithos_server, me, f"{cont}/c2", headers={"X-Copy-From": f"{cont}/l"},
               query="?symlink=get").status == 201
    c2 = get(pithos_server, me, f"{cont}/c2", query="?symlink=get")
    assert c2.body == b"" and c2.headers["x-symlink-target"] == f"{cont}/t"
    copy = request(pithos_server, "COPY", f"{me.path}/{cont}/l",
                   headers={"Destination": f"{cont}/c3"}, token=me.token)
    assert copy.status == 201
    assert get(pithos_server, me, f"{cont}/c3", query="?symlink=get").body == b"copied body"


def test_json_listings_name_each_links_target(pithos_server, me, cont):
    body = b"listed"
    put(pithos_server, me, f"{cont}/t", body)
    put(pithos_server, me, f"{cont}/empty")
    put(pithos_server, me, f"{cont}/l", headers={"X-Symlink-Target": f"{cont}/t"})
    put(pithos_server, me, f"{cont}/s", headers={
        "X-Symlink-Target": f"{cont}/t", "X-Symlink-Target-Etag": hashlib.md5(body).hexdigest()})
    rows = {r["name"]: r for r in request(pithos_server, "GET", f"{me.path}/{cont}?format=json",
                                          token=me.token).json()}
    assert rows["l"]["symlink_path"] == f"{me.path}/{cont}/t"
    assert rows["s"]["symlink_etag"] == hashlib.md5(body).hexdigest()
    assert rows["s"]["symlink_bytes"] == len(body)
    assert "symlink_path" not in rows["empty"] and "symlink_path" not in rows["t"]


def test_a_link_does_not_read_what_the_caller_cannot(pithos_server, me, cont):
    """test2 may read test's container `cont` (a read ACL) but not `secret`: a link in `cont`
    to `secret` reads as 403 for test2, as `secret` does; other accounts' links are
    authorized as their caller too."""
    other = login(pithos_server, "test2:tester2", "testing2")
    secret = "secret-" + uuid.uuid4().hex[:8]
    assert request(pithos_server, "PUT", f"{me.path}/{secret}", token=me.token).status == 201
    put(pithos_server, me, f"{secret}/o", b"private")
    put(pithos_server, me, f"{cont}/l", headers={"X-Symlink-Target": f"{secret}/o"})
    assert request(pithos_server, "POST", f"{me.path}/{cont}",
                   headers={"X-Container-Read": "test2:tester2"}, token=me.token).status == 204
    assert request(pithos_server, "GET", f"{me.path}/{secret}/o", token=other.token
                   ).status == 403
    via_link = request(pithos_server, "GET", f"{me.path}/{cont}/l", token=other.token)
    assert via_link.status == 403 and b"private" not in via_link.body
    # test2's own link into test's account: the same answer.
    assert request(pithos_server, "PUT", f"{other.path}/mine", token=other.token).status == 201
    made = request(pithos_server, "PUT", f"{other.path}/mine/l",
                   headers={"X-Symlink-Target": f"{secret}/o", "Content-Length": "0",
                            "X-Symlink-Target-Account": me.path.split("/")[2]},
                   body=b"", token=other.token)
    assert made.status == 201
    mine = request(pithos_server, "GET", f"{other.path}/mine/l", token=other.token)
    assert mine.status == 403 and b"private" not in mine.body
    # The owner reads through it.
    assert get(pithos_server, me, f"{cont}/l").body == b"private"


def test_a_link_as_a_static_large_objects_segment_is_its_target(pithos_server, me, cont):
    """A manifest may name links as segments (Swift's SLO reads through them): the object is
    the targets' content; a link to what the uploader cannot read is refused like the target."""
    import json

    put(pithos_server, me, f"{cont}/seg", b"segment bytes")
    put(pithos_server, me, f"{cont}/seglink", headers={"X-Symlink-Target": f"{cont}/seg"})
    manifest = json.dumps([{"path": f"/{cont}/seglink"}]).encode()
    made = put(pithos_server, me, f"{cont}/slo", manifest, query="?multipart-manifest=put")
    assert made.status == 201, made.body
    assert get(pithos_server, me, f"{cont}/slo").body == b"segment bytes"
    put(pithos_server, me, f"{cont}/dangling", headers={"X-Symlink-Target": f"{cont}/none"})
    bad = json.dumps([{"path": f"/{cont}/dangling"}]).encode()
    assert put(pithos_server, me, f"{cont}/slo2", bad, query="?multipart-manifest=put"
               ).status == 400
    # A static link to the large object names its manifest's ETag (as Swift's).
    manifest_etag = get(pithos_server, me, f"{cont}/slo", "HEAD",
                        query="?multipart-manifest=get").headers["etag"].strip('"')
    assert put(pithos_server, me, f"{cont}/static", headers={
        "X-Symlink-Target": f"{cont}/slo", "X-Symlink-Target-Etag": manifest_etag}
               ).status == 201
    assert get(pithos_server, me, f"{cont}/static").body == b"segment bytes"
    rows = {r["name"]: r for r in request(pithos_server, "GET", f"{me.path}/{cont}?format=json",
                                          token=me.token).json()}
    assert rows["static"]["symlink_etag"] == manifest_etag
    assert rows["static"]["slo_etag"] == rows["slo"]["slo_etag"]

"""Swift's legacy versioned writes (X-Versions-Location, X-History-Location; the object side in
pithos/objects/versioned_writes.py) against a real `pithos serve`.  (The collector beside them:
tests/test_gc_stress.py.)"""

from __future__ import annotations

import uuid

import pytest

from tests.swift_helpers import Login, login, q, request

DELETE_MARKER = "application/x-deleted;swift_versions_deleted=1"


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    return login(pithos_server)


def mk(server, me, name, headers=None) -> None:
    assert request(server, "PUT", f"{me.path}/{q(name)}", headers=headers,
                   token=me.token).status in (201, 202)


def put(server, me, path, body=b"", headers=None):
    return request(server, "PUT", f"{me.path}/{q(path)}", body=body,
                   headers={"Content-Length": str(len(body)), **(headers or {})},
                   token=me.token)


def read(server, me, path) -> bytes | None:
    got = request(server, "GET", f"{me.path}/{q(path)}", token=me.token)
    return got.body if got.status == 200 else None


def listing(server, me, container) -> list[dict]:
    return request(server, "GET", f"{me.path}/{q(container)}?format=json",
                   token=me.token).json()


@pytest.fixture
def pair(pithos_server, me) -> tuple[str, str]:
    base = "vw-" + uuid.uuid4().hex[:8]
    mk(pithos_server, me, base + "-versions")
    return base, base + "-versions"


def test_stack_mode_archives_overwrites_and_delete_restores(pithos_server, me, pair):
    cont, archive = pair
    mk(pithos_server, me, cont, {"X-Versions-Location": archive})
    head = request(pithos_server, "HEAD", f"{me.path}/{cont}", token=me.token)
    assert head.headers["x-versions-location"] == archive
    assert head.headers["x-container-policy-versioning"] == "auto"
    assert not any(k.startswith("x-container-meta-") for k in head.headers)
    for body, ctype in ((b"one", "text/one"), (b"two", "text/two"), (b"three", "text/three")):
        assert put(pithos_server, me, f"{cont}/obj", body, {"Content-Type": ctype}
                   ).status == 201
    rows = listing(pithos_server, me, archive)
    assert [r["content_type"] for r in rows] == ["text/one", "text/two"]
    assert all(r["name"].startswith("003obj/") for r in rows)
    assert read(pithos_server, me, f"{archive}/{rows[0]['name']}") == b"one"
    # A POST makes no version.
    assert request(pithos_server, "POST", f"{me.path}/{cont}/obj",
                   headers={"X-Object-Meta-A": "b"}, token=me.token).status == 202
    assert len(listing(pithos_server, me, archive)) == 2
    for expected in (b"two", b"one", None):
        assert request(pithos_server, "DELETE", f"{me.path}/{cont}/obj",
                       token=me.token).status == 204
        assert read(pithos_server, me, f"{cont}/obj") == expected
    assert listing(pithos_server, me, archive) == []
    restored_type = request(pithos_server, "HEAD", f"{me.path}/{cont}/obj", token=me.token)
    assert restored_type.status == 404


def test_history_mode_keeps_the_deleted_and_a_marker(pithos_server, me, pair):
    cont, archive = pair
    mk(pithos_server, me, cont, {"X-History-Location": archive})
    put(pithos_server, me, f"{cont}/o", b"first")
    put(pithos_server, me, f"{cont}/o", b"second")
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o", token=me.token
                   ).status == 204
    assert read(pithos_server, me, f"{cont}/o") is None
    rows = listing(pithos_server, me, archive)
    assert [r["content_type"] for r in rows][-1] == DELETE_MARKER
    assert [read(pithos_server, me, f"{archive}/{r['name']}") for r in rows[:2]] == [
        b"first", b"second"]


def test_the_location_is_checked_exclusive_and_removable(pithos_server, me, pair):
    cont, archive = pair
    both = request(pithos_server, "PUT", f"{me.path}/{cont}", token=me.token,
                   headers={"X-Versions-Location": archive, "X-History-Location": archive})
    assert both.status == 400
    slash = request(pithos_server, "PUT", f"{me.path}/{cont}", token=me.token,
                    headers={"X-Versions-Location": "a/b"})
    assert slash.status == 412
    mk(pithos_server, me, cont, {"X-Versions-Location": archive})
    assert request(pithos_server, "POST", f"{me.path}/{cont}", token=me.token,
                   headers={"X-Remove-Versions-Location": "x"}).status == 204
    head = request(pithos_server, "HEAD", f"{me.path}/{cont}", token=me.token)
    assert "x-versions-location" not in head.headers
    put(pithos_server, me, f"{cont}/o", b"1")
    put(pithos_server, me, f"{cont}/o", b"2")
    assert listing(pithos_server, me, archive) == []
    info = request(pithos_server, "GET", "/info").json()
    assert info["versioned_writes"]["allowed_flags"] == ["x-versions-location",
                                                         "x-history-location"]


def test_a_missing_archive_refuses_overwrites_but_not_deletes(pithos_server, me, pair):
    cont, archive = pair
    mk(pithos_server, me, cont, {"X-Versions-Location": archive})
    put(pithos_server, me, f"{cont}/o", b"1")
    assert request(pithos_server, "DELETE", f"{me.path}/{archive}", token=me.token
                   ).status == 204
    assert put(pithos_server, me, f"{cont}/o", b"2").status == 412
    assert read(pithos_server, me, f"{cont}/o") == b"1"
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o", token=me.token
                   ).status == 204


def test_a_writer_with_the_containers_acl_versions_into_an_archive_it_cannot_write(
        pithos_server, me, pair):
    """As Swift: the archive copy is made with the authority of the request on the
    versioned container."""
    cont, archive = pair
    other = login(pithos_server, "test2:tester2", "testing2")
    mk(pithos_server, me, cont, {"X-Versions-Location": archive,
                                 "X-Container-Write": "test2:tester2",
                                 "X-Container-Read": "test2:tester2"})
    for body in (b"a", b"b"):
        assert request(pithos_server, "PUT", f"{me.path}/{cont}/o", body=body,
                       token=other.token).status == 201
    rows = listing(pithos_server, me, archive)
    assert len(rows) == 1
    assert request(pithos_server, "GET", f"{me.path}/{archive}/{q(rows[0]['name'])}",
                   token=other.token).status == 403
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o", token=other.token
                   ).status == 204
    assert read(pithos_server, me, f"{cont}/o") == b"a"

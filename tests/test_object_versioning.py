"""Swift's object versioning (X-Versions-Enabled; pithos/api/object_versioning.py over the
versions table) against a real `pithos serve`."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tests.swift_helpers import Login, login, q, request

DELETE_MARKER = "application/x-deleted;swift_versions_deleted=1"
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


@pytest.fixture(scope="module")
def me(pithos_server) -> Login:
    return login(pithos_server)


def put(server, me, path, body=b"", headers=None, query=""):
    return request(server, "PUT", f"{me.path}/{q(path)}{query}", body=body,
                   headers={"Content-Length": str(len(body)), **(headers or {})},
                   token=me.token)


def versions(server, me, container, query="") -> list[dict]:
    got = request(server, "GET", f"{me.path}/{q(container)}?versions&format=json{query}",
                  token=me.token)
    assert got.status == 200, got.body
    return got.json()


def enable(server, me, container, on: bool) -> None:
    assert request(server, "POST", f"{me.path}/{q(container)}",
                   headers={"X-Versions-Enabled": str(on)}, token=me.token).status == 204


@pytest.fixture
def cont(pithos_server, me) -> str:
    name = "ov-" + uuid.uuid4().hex[:8]
    assert request(pithos_server, "PUT", f"{me.path}/{name}",
                   headers={"X-Versions-Enabled": "true"}, token=me.token).status == 201
    return name


def test_flag_shown_and_legacy_refused(pithos_server, me, cont):
    head = request(pithos_server, "HEAD", f"{me.path}/{cont}", token=me.token)
    assert head.headers["x-versions-enabled"] == "True"
    assert head.headers["x-container-policy-versioning"] == "auto"
    enable(pithos_server, me, cont, False)
    head = request(pithos_server, "HEAD", f"{me.path}/{cont}", token=me.token)
    assert head.headers["x-versions-enabled"] == "False"
    both = request(pithos_server, "POST", f"{me.path}/{cont}",
                   headers={"X-Versions-Enabled": "true", "X-Versions-Location": "x"},
                   token=me.token)
    assert both.status == 400
    info = request(pithos_server, "GET", "/info").json()
    assert "object_versioning" in info


def test_versions_markers_and_listing(pithos_server, me, cont):
    ids = [put(pithos_server, me, f"{cont}/o", body).headers["x-object-version-id"]
           for body in (b"v1", b"v2")]
    assert len(set(ids)) == 2
    gone = request(pithos_server, "DELETE", f"{me.path}/{cont}/o", token=me.token)
    assert gone.status == 204
    marker = gone.headers["x-object-version-id"]
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=me.token).status == 404
    # A marker for an object that never was: 404, and the marker written.
    never = request(pithos_server, "DELETE", f"{me.path}/{cont}/never", token=me.token)
    assert never.status == 404 and never.headers["x-object-version-id"]
    rows = versions(pithos_server, me, cont)
    assert [(r["name"], r["version_id"], r["is_latest"], r["content_type"]) for r in rows] == [
        ("never", never.headers["x-object-version-id"], True, DELETE_MARKER),
        ("o", marker, True, DELETE_MARKER),
        ("o", ids[1], False, "application/octet-stream"),
        ("o", ids[0], False, "application/octet-stream")]
    assert rows[1]["hash"] == EMPTY_MD5 and rows[1]["bytes"] == 0
    old = request(pithos_server, "GET", f"{me.path}/{cont}/o?version-id={ids[0]}",
                  token=me.token)
    assert old.status == 200 and old.body == b"v1"
    assert old.headers["x-object-version-id"] == ids[0]
    as_marker = request(pithos_server, "HEAD", f"{me.path}/{cont}/o?version-id={marker}",
                        token=me.token)
    assert as_marker.status == 404 and as_marker.headers["content-type"] == DELETE_MARKER
    # Paging by marker and version_marker.
    page = versions(pithos_server, me, cont, f"&marker=o&version_marker={marker}&limit=1")
    assert [r["version_id"] for r in page] == [ids[1]]
    # The reverse order: oldest first.
    assert [r["version_id"] for r in versions(pithos_server, me, cont, "&reverse=true")][:3] \
        == [ids[0], ids[1], marker]
    assert request(pithos_server, "GET", f"{me.path}/{cont}?versions&format=xml",
                   token=me.token).status == 406


def test_delete_one_version_and_restore_by_copy(pithos_server, me, cont):
    ids = [put(pithos_server, me, f"{cont}/o", body).headers["x-object-version-id"]
           for body in (b"one", b"two", b"three")]
    before = int(request(pithos_server, "HEAD", f"{me.path}/{cont}",
                         token=me.token).headers["x-container-bytes-used"])
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o?version-id={ids[1]}",
                   token=me.token).status == 204
    assert [r["version_id"] for r in versions(pithos_server, me, cont)] == [ids[2], ids[0]]
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o?version-id={ids[1]}",
                   token=me.token).status == 404
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o?version-id={ids[1]}",
                   token=me.token).status == 404
    # The current object is unchanged, its counters too.
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=me.token).body == b"three"
    assert int(request(pithos_server, "HEAD", f"{me.path}/{cont}",
                       token=me.token).headers["x-container-bytes-used"]) == before
    # Restore the first by a COPY of it onto the object: a new version.
    copied = request(pithos_server, "COPY", f"{me.path}/{cont}/o?version-id={ids[0]}",
                     headers={"Destination": f"{cont}/o"}, token=me.token)
    assert copied.status == 201
    new = copied.headers["x-object-version-id"]
    assert new not in ids
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=me.token).body == b"one"
    # Deleting the latest by its id leaves no latest (as Swift).
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o?version-id={new}",
                   token=me.token).status == 204
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=me.token).status == 404
    assert [(r["version_id"], r["is_latest"]) for r in versions(pithos_server, me, cont)] == [
        (ids[2], False), (ids[0], False)]
    # PUT ?version-id makes a version the latest again, without a new one.
    assert put(pithos_server, me, f"{cont}/o", query=f"?version-id={ids[0]}").status == 201
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=me.token).body == b"one"
    assert put(pithos_server, me, f"{cont}/o", query="?version-id=null").status == 400
    assert put(pithos_server, me, f"{cont}/o", query="?version-id=bad").status == 400
    assert put(pithos_server, me, f"{cont}/o", query="?version-id=1234567890.12345"
               ).status == 404


def test_null_version_before_enabling_and_while_disabled(pithos_server, me):
    cont = "ov-" + uuid.uuid4().hex[:8]
    assert request(pithos_server, "PUT", f"{me.path}/{cont}", token=me.token).status == 201
    first = put(pithos_server, me, f"{cont}/o", b"plain")
    assert "x-object-version-id" not in first.headers
    assert [(r["version_id"], r["is_latest"]) for r in versions(pithos_server, me, cont)] == [
        ("null", True)]
    # A version-id other than null needs a versioned container.
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o?version-id=" + "0" * 32,
                   token=me.token).status == 400
    enable(pithos_server, me, cont, True)
    v1 = put(pithos_server, me, f"{cont}/o", b"versioned").headers["x-object-version-id"]
    rows = versions(pithos_server, me, cont)
    # The null object, replaced by a versioned write, is kept with an id of its own.
    assert rows[0]["version_id"] == v1 and len(rows) == 2
    assert rows[1]["version_id"] != "null"
    enable(pithos_server, me, cont, False)
    put(pithos_server, me, f"{cont}/o", b"null again")
    put(pithos_server, me, f"{cont}/o", b"null once more")
    rows = versions(pithos_server, me, cont)
    assert [r["version_id"] for r in rows][:2] == ["null", v1] and len(rows) == 3
    got = request(pithos_server, "GET", f"{me.path}/{cont}/o?version-id=null", token=me.token)
    assert got.body == b"null once more"
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o?version-id=null",
                   token=me.token).status == 204
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=me.token).status == 404
    assert [r["version_id"] for r in versions(pithos_server, me, cont)] == [v1, rows[2][
        "version_id"]]

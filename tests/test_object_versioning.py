"""Swift's object versioning (X-Versions-Enabled; pithos/api/object_versioning.py over the
versions table) against a real `pithos serve`."""

from __future__ import annotations

import hashlib
import json
import random
import time
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
    # The current object is unchanged; the bytes used (every version kept, as Swift's)
    # lose the dropped version's.
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=me.token).body == b"three"
    assert int(request(pithos_server, "HEAD", f"{me.path}/{cont}",
                       token=me.token).headers["x-container-bytes-used"]) == before - 3
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


def test_versions_are_for_writers_and_keep_the_container(pithos_server, me, cont):
    """A read ACL grants the latest version only (a version by id, the versions listing:
    403, as ?version= and ?until=); a container with versions left is not deleted (409)."""
    vid = put(pithos_server, me, f"{cont}/o", b"data").headers["x-object-version-id"]
    other = login(pithos_server, "test2:tester2", "testing2")
    assert request(pithos_server, "POST", f"{me.path}/{cont}",
                   headers={"X-Container-Read": "test2"}, token=me.token).status == 204
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o", token=other.token).body \
        == b"data"
    assert request(pithos_server, "GET", f"{me.path}/{cont}/o?version-id={vid}",
                   token=other.token).status == 403
    assert request(pithos_server, "GET", f"{me.path}/{cont}?versions&format=json",
                   token=other.token).status == 403
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}/o", token=me.token).status \
        == 204
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}", token=me.token).status == 409
    enable(pithos_server, me, cont, False)
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}", token=me.token).status == 409
    for row in versions(pithos_server, me, cont):
        assert request(pithos_server, "DELETE",
                       f"{me.path}/{cont}/o?version-id={row['version_id']}",
                       token=me.token).status == 204
    assert versions(pithos_server, me, cont) == []
    assert request(pithos_server, "DELETE", f"{me.path}/{cont}", token=me.token).status == 204


def _put(cat, cid, name, size):
    return cat.put_version(cid, name, root=bytes([size]) * 32, size=size, etag="e" * 32,
                           content_type="text/plain", meta={})


def test_catalog_charges_follow_the_versions_kept(catalog, container):
    """The project is charged every version kept: dropping one by its id gives its bytes
    back, a delete marker holds none, making an old version the latest again charges
    nothing more; the container's live counters follow the latest."""
    acct, c = container
    v1, v2 = _put(catalog, c.id, "o", 10), _put(catalog, c.id, "o", 20)
    assert catalog.holdings("acct")["bytes"].usage == 30
    assert catalog.kept_bytes(c.id) == 30
    assert catalog.remove_version(c.id, "o", v1.vid)
    assert not catalog.remove_version(c.id, "o", v1.vid)
    assert catalog.holdings("acct")["bytes"].usage == 20
    marker = catalog.put_delete_marker(c.id, "o", "application/x-deleted")
    assert marker.existed and catalog.object(c.id, "o") is None
    assert catalog.holdings("acct")["bytes"].usage == 20
    assert catalog.container(acct, "c").objects == 0
    assert catalog.make_current(c.id, "o", v2.vid)
    assert catalog.object(c.id, "o").vid == v2.vid
    assert catalog.container(acct, "c").objects == 1
    assert catalog.container(acct, "c").bytes == 20
    assert catalog.holdings("acct")["bytes"].usage == 20
    # Dropping the latest deletes the object: nothing charged or counted is left.
    assert catalog.remove_version(c.id, "o", v2.vid)
    assert catalog.object(c.id, "o") is None
    assert catalog.holdings("acct")["bytes"].usage == 0
    assert catalog.container(acct, "c").bytes == 0
    rows = catalog.version_rows(c.id)
    assert [(r.deleted, r.content_type) for r in rows][-1] == (True, "application/x-deleted")
    # A marker for an object that never was.
    assert not catalog.put_delete_marker(c.id, "never", "application/x-deleted").existed
    assert [r.name for r in catalog.version_rows(c.id, marker="never", inclusive=True)] \
        == ["never"] + ["o"] * len(rows)
    assert [r.name for r in catalog.version_rows(c.id, marker="never")] == ["o"] * len(rows)


def test_a_version_of_a_link_reads_its_target(pithos_server, me, cont):
    """A link's old version, read by its id, follows the target it named then (the version
    id is the link's, not asked of the target); a COPY of the latest is a copy, not a link
    followed through its Content-Location."""
    put(pithos_server, me, f"{cont}/a", b"aaaaa")
    put(pithos_server, me, f"{cont}/b", b"bbbbb")
    v1 = put(pithos_server, me, f"{cont}/link", b"",
             {"X-Symlink-Target": f"{cont}/a"}).headers["x-object-version-id"]
    put(pithos_server, me, f"{cont}/link", b"", {"X-Symlink-Target": f"{cont}/b"})
    assert request(pithos_server, "GET", f"{me.path}/{cont}/link",
                   token=me.token).body == b"bbbbb"
    assert request(pithos_server, "GET", f"{me.path}/{cont}/link?version-id={v1}",
                   token=me.token).body == b"aaaaa"
    head = request(pithos_server, "HEAD", f"{me.path}/{cont}/a", token=me.token)
    assert head.headers["content-location"].endswith(
        f"/{cont}/a?version-id={head.headers['x-object-version-id']}")
    assert request(pithos_server, "COPY", f"{me.path}/{cont}/a",
                   headers={"Destination": f"{cont}/c"}, token=me.token).status == 201
    assert request(pithos_server, "GET", f"{me.path}/{cont}/c", token=me.token).body \
        == b"aaaaa"


def test_versions_and_restores_with_gc_in_a_loop(tmp_path):
    """Every version a ?versions listing shows is a version row, whose map the collector
    keeps: with `pithos gc` running back to back beside overwrites, versions dropped by id, a
    delete marker and a restore (a COPY of an old version), every listed version reads back
    whole by its id, and the store checks clean."""
    from tests.test_gc_stress import (
        Client,
        MiB,
        PithosServer,
        assert_fsck_clean,
        gc_loop,
    )
    from tests.test_gc_stress import login as gc_login

    server = PithosServer(tmp_path / "data")
    try:
        client = Client(server, gc_login(server))
        assert client.request("PUT", "/ov", headers={"X-Versions-Enabled": "true"})[0] == 201
        rng = random.Random(7)
        bodies = [rng.randbytes(rng.choice((3000, 5 * MiB + 17))) for _ in range(8)]
        by_id: dict[str, bytes] = {}
        with gc_loop(server.storage_flags):
            for body in bodies:
                status, _ = client.request("PUT", "/ov/o", body)
                assert status == 201
                time.sleep(0.3)
            rows = json.loads(client.request("GET", "/ov?versions&format=json")[1])
            ids = [r["version_id"] for r in reversed(rows)]  # oldest first, as written
            by_id = dict(zip(ids, bodies, strict=True))
            for vid in ids[1:4]:  # garbage for the collector
                assert client.request("DELETE", f"/ov/o?version-id={vid}")[0] == 204
                del by_id[vid]
                time.sleep(0.3)
            assert client.request("DELETE", "/ov/o")[0] == 204
            assert client.request("COPY", f"/ov/o?version-id={ids[0]}",
                                  headers={"Destination": "ov/o"})[0] == 201
            time.sleep(1)
        rows = json.loads(client.request("GET", "/ov?versions&format=json")[1])
        content = [r for r in rows if r["content_type"] != DELETE_MARKER]
        assert len(content) == len(by_id) + 1
        assert client.request("GET", "/ov/o")[1] == bodies[0]
        for r in content:
            status, got = client.request("GET", f"/ov/o?version-id={r['version_id']}")
            assert status == 200
            want = by_id.get(r["version_id"], bodies[0])
            assert hashlib.md5(got).hexdigest() == hashlib.md5(want).hexdigest()
        assert_fsck_clean(server.storage_flags)
    finally:
        server.stop()


def test_plain_listing_names_the_latest_version(pithos_server, me, cont):
    """A JSON listing of a versioned container names each object's latest version, as
    Swift's symlinks to versions show (symlink_path, version_symlink); an object written
    while versioning was off has none."""
    vid = put(pithos_server, me, f"{cont}/v", b"x").headers["x-object-version-id"]
    enable(pithos_server, me, cont, False)
    put(pithos_server, me, f"{cont}/w", b"y")
    rows = request(pithos_server, "GET", f"{me.path}/{cont}?format=json",
                   token=me.token).json()
    assert rows[0]["symlink_path"] == f"{me.path}/{cont}/v?version-id={vid}"
    assert rows[0]["version_symlink"] is True and rows[0]["bytes"] == 1
    assert "symlink_path" not in rows[1] and rows[1]["name"] == "w"

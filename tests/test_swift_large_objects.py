"""Issue 21: static and dynamic large objects as Swift's SLO and DLO middleware serve them,
each behaviour its own test against a real `pithos serve` (python-swiftclient and raw HTTP):
?part-number, ?multipart-manifest=get&format=raw, X-Manifest-Etag, the manifest checks of a
PUT, the listing's hash and slo_etag, a manifest copied to another account, a DLO manifest's
own content, a POST that makes or unmakes a DLO, and non-ASCII X-Object-Manifest."""

from __future__ import annotations

import gc
import hashlib
import json
from urllib.parse import quote

import pytest
import swiftclient

from tests.swift_helpers import TIMEOUT_S, login, request

MiB = 1024 * 1024
SIZES = {"a": MiB, "b": MiB, "c": 1}


@pytest.fixture(scope="module", autouse=True)
def _drop_idle_connections(pithos_server):
    yield
    gc.collect()


def conn(server, user: str = "test:tester", key: str = "testing") -> swiftclient.Connection:
    return swiftclient.Connection(server.auth_url, user, key, retries=0, timeout=TIMEOUT_S)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def segments(c: swiftclient.Connection, container: str) -> list[dict]:
    """Segments a (1 MiB), b (1 MiB), c (1 byte) in `container`, as a manifest names them."""
    out = []
    for letter, size in SIZES.items():
        data = letter.encode() * size
        c.put_object(container, f"seg_{letter}", data)
        out.append({"path": f"/{container}/seg_{letter}", "etag": md5(data),
                    "size_bytes": size})
    return out


@pytest.fixture(scope="module")
def slo(pithos_server):
    """Container "lo" with the segments and the SLO "lo/m" over them."""
    c = conn(pithos_server)
    c.put_container("lo")
    manifest = segments(c, "lo")
    c.put_object("lo", "m", json.dumps(manifest), query_string="multipart-manifest=put")
    return c, manifest


def raw(server, method: str, path: str, **headers: str):
    me = login(server)
    return request(server, method, f"{me.path}/{path}", headers=headers, token=me.token)


# -- ?part-number --------------------------------------------------------------------------------

def test_part_number_serves_one_segment_as_206(pithos_server, slo):
    c, _ = slo
    head, body = c.get_object("lo", "m", query_string="part-number=2")
    assert body == b"b" * MiB
    assert head["x-parts-count"] == "3"
    assert head["content-range"] == f"bytes {MiB}-{2 * MiB - 1}/{2 * MiB + 1}"
    want_etag = md5("".join(md5(k.encode() * n) for k, n in SIZES.items()).encode())
    assert head["etag"] == f'"{want_etag}"'  # the SLO's, not the segment's
    r = raw(pithos_server, "HEAD", "lo/m?part-number=3")
    assert r.status == 206 and r.headers["content-length"] == "1"
    assert r.headers["content-range"] == f"bytes {2 * MiB}-{2 * MiB}/{2 * MiB + 1}"


def test_part_number_out_of_range_or_invalid(pithos_server, slo):
    r = raw(pithos_server, "GET", "lo/m?part-number=4")
    assert r.status == 416 and r.body == b"The requested part number is not satisfiable"
    assert r.headers["content-range"] == f"bytes */{2 * MiB + 1}"
    assert r.headers["x-parts-count"] == "3"
    r = raw(pithos_server, "HEAD", "lo/m?part-number=4")
    assert r.status == 416 and r.headers["content-length"] == "0"
    for bad in ("0", "-1", "x"):
        r = raw(pithos_server, "GET", f"lo/m?part-number={bad}")
        assert r.status == 400 and r.body == b"Part number must be an integer greater than 0"
    r = raw(pithos_server, "GET", "lo/m?part-number=1", Range="bytes=0-1")
    assert r.status == 400


def test_copy_of_one_part(pithos_server, slo):
    c, _ = slo
    r = raw(pithos_server, "COPY", "lo/m?part-number=1", Destination="lo/part1")
    assert r.status == 201
    assert c.get_object("lo", "part1")[1] == b"a" * MiB
    # X-Copy-From takes the part of its source.
    c.put_object("lo", "part3", b"", headers={"X-Copy-From": "lo/m"},
                 query_string="part-number=3")
    assert c.get_object("lo", "part3")[1] == b"c"


def test_copy_of_a_range(pithos_server, slo):
    c, _ = slo
    c.put_object("lo", "plain", bytes(range(256)) * 4)
    r = raw(pithos_server, "COPY", "lo/plain", Destination="lo/ranged", Range="bytes=100-200")
    assert r.status == 201
    head, body = c.get_object("lo", "ranged")
    assert body == (bytes(range(256)) * 4)[100:201] and head["etag"] == md5(body)


# -- the manifest --------------------------------------------------------------------------------

def test_manifest_get_raw_is_what_a_put_takes(pithos_server, slo):
    c, manifest = slo
    head, body = c.get_object("lo", "m", query_string="multipart-manifest=get&format=raw")
    assert head["content-type"] == "application/octet-stream"  # the object's, not JSON's
    assert head["etag"] == md5(body)
    assert json.loads(body) == manifest
    c.put_object("lo", "again", body, query_string="multipart-manifest=put")
    assert c.get_object("lo", "again")[1] == c.get_object("lo", "m")[1]


def test_manifest_etag_header_and_listing(pithos_server, slo):
    c, _ = slo
    head, stored = c.get_object("lo", "m", query_string="multipart-manifest=get")
    assert head["content-type"] == "application/json; charset=utf-8"
    manifest_etag = md5(stored)
    full = c.head_object("lo", "m")
    assert full["x-manifest-etag"] == manifest_etag
    _, listing = c.get_container("lo")
    entry = next(e for e in listing if e["name"] == "m")
    assert entry["hash"] == manifest_etag  # as Swift lists an SLO
    assert entry["slo_etag"] == full["etag"] and entry["bytes"] == 2 * MiB + 1
    plain = next(e for e in listing if e["name"] == "seg_a")
    assert "slo_etag" not in plain and plain["hash"] == md5(b"a" * MiB)


@pytest.mark.parametrize("segment, reason", [
    ({"teag": "x", "path": "/lo/seg_a"}, b'Index 0: extraneous keys "teag"'),
    ({"siz_bytes": 1, "path": "/lo/seg_a"}, b'Index 0: extraneous keys "siz_bytes"'),
    ({"path": "/lo/self"}, b"Index 0: manifest must not include itself as a segment"),
])
def test_manifest_put_refuses_unknown_keys_and_itself(pithos_server, slo, segment, reason):
    c, _ = slo
    with pytest.raises(swiftclient.ClientException) as err:
        c.put_object("lo", "self", json.dumps([segment]),
                     query_string="multipart-manifest=put")
    assert err.value.http_status == 400 and reason in err.value.http_response_content


def test_segment_cannot_be_overwritten_by_a_manifest_naming_it(pithos_server, slo):
    c, manifest = slo
    with pytest.raises(swiftclient.ClientException) as err:
        c.put_object("lo", "seg_b", json.dumps(manifest), query_string="multipart-manifest=put")
    assert err.value.http_status == 400
    assert c.get_object("lo", "seg_b")[1] == b"b" * MiB


def test_manifest_copied_to_another_account_is_checked_there(pithos_server, slo):
    c, _ = slo
    other = conn(pithos_server, "test2:tester2", "testing2")
    other.put_container("lo-dest", headers={"X-Container-Write": "test:tester"})
    copy = {"Destination": "lo-dest/m", "Destination-Account": "AUTH_test2"}
    # The paths name containers of the destination account: not readable there, then absent.
    r = raw(pithos_server, "COPY", "lo/m?multipart-manifest=get", **copy)
    assert r.status == 400 and r.body.count(b"403 Forbidden") == 3
    other.put_container("lo", headers={"X-Container-Read": "test:tester"})
    r = raw(pithos_server, "COPY", "lo/m?multipart-manifest=get", **copy)
    assert r.status == 400 and r.body.count(b"404 Not Found") == 3
    segments(other, "lo")
    r = raw(pithos_server, "COPY", "lo/m?multipart-manifest=get", **copy)
    assert r.status == 201
    assert other.get_object("lo-dest", "m")[1] == c.get_object("lo", "m")[1]
    assert other.head_object("lo-dest", "m")["x-static-large-object"] == "True"


# -- DLO -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dlo(pithos_server):
    c = conn(pithos_server)
    c.put_container("dl")
    for letter in "abc":
        c.put_object("dl", f"ségs/{letter}", letter.encode() * 10)
    return c


def test_dlo_manifest_get_is_its_own_content(pithos_server, dlo):
    dlo.put_object("dl", "man", b"man-contents", headers={"X-Object-Manifest": "dl/ségs/"})
    assert dlo.get_object("dl", "man")[1] == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert dlo.get_object("dl", "man", query_string="multipart-manifest=get")[1] == \
        b"man-contents"
    # A copy of the manifest alone is a manifest with that content.
    r = raw(pithos_server, "COPY", "dl/man?multipart-manifest=get", Destination="dl/man2")
    assert r.status == 201
    assert dlo.get_object("dl", "man2", query_string="multipart-manifest=get")[1] == \
        b"man-contents"
    assert dlo.get_object("dl", "man2")[1] == b"a" * 10 + b"b" * 10 + b"c" * 10


def test_dlo_non_ascii_manifest_header_round_trips(pithos_server, dlo):
    """Swift's clients send X-Object-Manifest as raw UTF-8 (and get it back so)."""
    me = login(pithos_server)
    r = request(pithos_server, "PUT", f"{me.path}/dl/raw-man", body=b"",
                headers={"X-Object-Manifest": "dl/ségs/".encode()}, token=me.token)
    assert r.status == 201
    r = request(pithos_server, "HEAD", f"{me.path}/dl/raw-man", token=me.token)
    assert r.headers["x-object-manifest"].encode("latin-1").decode() == "dl/ségs/"
    assert r.headers["content-length"] == "30"
    # Percent-encoded is taken too, and answered as sent (Swift answers the header it
    # stored), the same after a POST of other metadata.  (Looked at raw: swiftclient
    # decodes the header it gets.)
    def manifest_sent_back() -> str:
        r = request(pithos_server, "HEAD", f"{me.path}/dl/q-man", token=me.token)
        return r.headers["x-object-manifest"]

    dlo.put_object("dl", "q-man", b"", headers={"X-Object-Manifest": quote("dl/ségs/")})
    assert dlo.get_object("dl", "q-man")[1] == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert manifest_sent_back() == quote("dl/ségs/")
    dlo.post_object("dl", "q-man", {"X-Object-Manifest": quote("dl/ségs/"),
                                     "X-Object-Meta-K": "v"})
    assert manifest_sent_back() == quote("dl/ségs/")
    # A POST naming another manifest: the new one, as sent.
    dlo.post_object("dl", "q-man", {"X-Object-Manifest": "dl/s%C3%A9gs/b"})
    assert manifest_sent_back() == "dl/s%C3%A9gs/b"
    assert dlo.get_object("dl", "q-man")[1] == b"b" * 10


def test_dlo_multiple_ranges_serve_the_whole_object(pithos_server, dlo):
    dlo.put_object("dl", "mr", b"", headers={"X-Object-Manifest": "dl/ségs/"})
    r = raw(pithos_server, "GET", "dl/mr", Range="bytes=0-4,10-14")
    assert r.status == 200 and r.body == b"a" * 10 + b"b" * 10 + b"c" * 10


def test_post_makes_and_unmakes_a_dlo(pithos_server, dlo):
    dlo.put_object("dl", "p", b"plain")
    dlo.post_object("dl", "p", {"X-Object-Manifest": "dl/ségs/"})
    assert dlo.get_object("dl", "p")[1] == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert dlo.get_object("dl", "p", query_string="multipart-manifest=get")[1] == b"plain"
    dlo.post_object("dl", "p", {"X-Object-Meta-K": "v"})  # no X-Object-Manifest: plain again
    head = dlo.head_object("dl", "p")
    assert "x-object-manifest" not in head and head["x-object-meta-k"] == "v"
    assert dlo.get_object("dl", "p")[1] == b"plain"


def test_post_leaves_an_slo_an_slo(pithos_server, slo):
    c, _ = slo
    c.post_object("lo", "m", {"X-Object-Meta-Post": "yes"})
    head = c.head_object("lo", "m")
    assert head["x-static-large-object"] == "True" and head["x-object-meta-post"] == "yes"
    json.loads(c.get_object("lo", "m", query_string="multipart-manifest=get")[1])


# -- an SLO's GET asks for its first segment, as Swift's does ------------------------------------

def test_slo_get_is_409_when_its_first_segment_is_gone_or_not_readable(pithos_server):
    """Swift's SLO fetches the first segment with the reader's rights before it answers a GET:
    409 when it is gone (test_object_versioning's test_slo_manifest_version) or the reader may
    not read its container (test_slo's test_slo_referer_on_segment_container).  A HEAD, and
    the manifest itself, answer as before."""
    c = conn(pithos_server)
    c.put_container("slo-segs")
    c.put_container("slo-pub", headers={"X-Container-Read": ".r:*"})
    manifest = segments(c, "slo-segs")
    c.put_object("slo-pub", "m", json.dumps(manifest), query_string="multipart-manifest=put")
    me = login(pithos_server)
    whole = b"a" * MiB + b"b" * MiB + b"c"
    # Anyone reads the manifest's container, nobody but the owner the segments'.
    r = request(pithos_server, "GET", f"{me.path}/slo-pub/m")
    assert r.status == 409 and b"403" in r.body and b"/slo-segs/seg_a" in r.body
    assert request(pithos_server, "HEAD", f"{me.path}/slo-pub/m").status == 200
    r = request(pithos_server, "GET", f"{me.path}/slo-pub/m?multipart-manifest=get")
    assert r.status == 200
    assert c.get_object("slo-pub", "m")[1] == whole
    c.post_container("slo-segs", {"X-Container-Read": ".r:*"})
    r = request(pithos_server, "GET", f"{me.path}/slo-pub/m")
    assert (r.status, r.body) == (200, whole)
    # The first segment deleted: 409 to everyone, the owner included.
    c.delete_object("slo-segs", "seg_a")
    for token in (None, me.token):
        r = request(pithos_server, "GET", f"{me.path}/slo-pub/m", token=token)
        assert r.status == 409 and b"404" in r.body, token
    assert request(pithos_server, "HEAD", f"{me.path}/slo-pub/m", token=me.token).status == 200


def test_slo_get_follows_first_segments_down_ten_manifests_and_no_deeper(pithos_server):
    """test_symlink's test_symlink_and_slo_manifest_chain: manifests whose first segment is a
    manifest (here through a symlink) are followed 10 deep, as Swift's SLO recursion; an 11th
    is 409 with Swift's plain Conflict page."""
    me = login(pithos_server)
    base = f"{me.path}/slo-deep"
    assert request(pithos_server, "PUT", base, token=me.token).status == 201
    assert request(pithos_server, "PUT", f"{base}/t", body=b"target", token=me.token).status == 201
    previous = "t"
    for depth in range(1, 12):
        if depth == 5:  # one link in the chain
            assert request(pithos_server, "PUT", f"{base}/link", body=b"", token=me.token,
                           headers={"X-Symlink-Target": f"slo-deep/{previous}"}).status == 201
            previous = "link"
        body = json.dumps([{"path": f"/slo-deep/{previous}"}]).encode()
        r = request(pithos_server, "PUT", f"{base}/m{depth}?multipart-manifest=put", body=body,
                    token=me.token)
        assert r.status == 201, (depth, r)
        previous = f"m{depth}"
    r = request(pithos_server, "GET", f"{base}/m10", token=me.token)
    assert (r.status, r.body) == (200, b"target")
    r = request(pithos_server, "GET", f"{base}/m11", token=me.token)
    assert (r.status, r.headers["content-type"]) == (409, "text/html; charset=UTF-8")
    assert b"<h1>Conflict</h1>" in r.body
    assert request(pithos_server, "HEAD", f"{base}/m11", token=me.token).status == 200


def test_manifest_put_with_heartbeat_reports_in_the_body(pithos_server, slo):
    """test_slo's test_slo_put_heartbeating: ?heartbeat=on answers 202 at once, chunked,
    whitespace and a blank line first, then the outcome as Swift's report."""
    c, manifest = slo
    me = login(pithos_server)
    path = f"{me.path}/lo/beat?multipart-manifest=put&heartbeat=on"

    def put(segments, **headers):
        r = request(pithos_server, "PUT", path, body=json.dumps(segments).encode(),
                    token=me.token, headers=headers)
        assert (r.status, r.headers.get("transfer-encoding")) == (202, "chunked")
        first, blank, rest = r.body.split(b"\n", 2)
        assert not first.strip() and blank == b"\r"
        return r, rest.decode()

    r, text = put(manifest)
    lines = text.split("\n")
    assert "Response Status: 201 Created" in lines
    assert {"Etag", "Last Modified"} <= {line.split(":", 1)[0] for line in lines}
    assert c.get_object("lo", "beat")[1] == b"a" * MiB + b"b" * MiB + b"c"
    r, text = put(manifest, Accept="application/json")
    assert r.headers["content-type"].startswith("application/json")
    got = json.loads(text)
    assert got["Etag"] == f'"{c.head_object("lo", "beat")["etag"].strip(chr(34))}"'
    assert {k: got[k] for k in ("Response Status", "Response Body", "Errors")} == {
        "Response Status": "201 Created", "Response Body": "", "Errors": []}
    # A missing segment: the report says 400 and names it, and nothing is made.
    r, text = put([*manifest, {"path": "no-such/segment"}], Accept="application/json")
    got = json.loads(text)
    assert got["Response Status"] == "400 Bad Request"
    assert got["Errors"] == [["no-such/segment", "404 Not Found"]]
    assert "Etag" not in got
    r, text = put([*manifest, {"path": "no-such/segment"}])
    assert text.split("\n")[-3:] == ["Errors:", "no-such/segment, 404 Not Found", ""]
    # A wrong ETag: 422 in the report.
    r, text = put(manifest, Accept="application/json", ETag="bad etag")
    assert json.loads(text) == {
        "Response Status": "422 Unprocessable Entity",
        "Response Body": "Unprocessable Entity\nUnable to process the contained instructions",
        "Errors": []}
    info = request(pithos_server, "GET", "/info").json()
    assert info["slo"]["yield_frequency"] == 10

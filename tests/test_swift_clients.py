"""The Swift API against real clients: python-swiftclient (library and the `swift` CLI, with
v1.0 and Keystone v3 auth) driving a real `pithos serve` (conftest's `pithos_server`, one per
module).  Issue 3, "Must show"."""

from __future__ import annotations

import email.parser
import email.policy
import gc
import hashlib
import json
import os
import time
import xml.etree.ElementTree as ET
from email.utils import formatdate

import pytest
import swiftclient

from tests.swift_helpers import login, request, store_stats, swift_cli, swift_cli_v3

# Issue 6: the same tests on the scale-out configuration (RADOS blocks, PostgreSQL catalog).
SERVER_CONFIGS = ("embedded", "scaleout")

MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def _drop_idle_connections(pithos_server):
    """Collect the keep-alive connections swiftclient's login leaves behind, so the server's
    graceful stop at the end of the module does not wait for them."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def conn(pithos_server):
    c = pithos_server.connection()
    yield c
    c.close()


@pytest.fixture(scope="module")
def reader(pithos_server):
    c = pithos_server.connection("test:reader", "reading")
    yield c
    c.close()


@pytest.fixture(scope="module")
def other(pithos_server):
    c = pithos_server.connection("test2:tester2", "testing2")
    yield c
    c.close()


def status_of(call, *args, **kwargs) -> int:
    """The HTTP status a swiftclient call fails with (AssertionError if it succeeds)."""
    with pytest.raises(swiftclient.ClientException) as info:
        call(*args, **kwargs)
    return info.value.http_status


def md5_file(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def pattern(size: int, seed: int) -> bytes:
    """Incompressible, reproducible bytes (different seeds never share a block)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{seed}:{counter}".encode(), digest_size=64).digest() * 1
        counter += 1
    return bytes(out[:size])


# -- big objects -----------------------------------------------------------------------------

def test_200mib_upload_and_download_with_md5(pithos_server, conn, tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(4 * MiB))
    want = md5_file(src)
    # The swift CLI checks the ETag it gets back against the MD5 it computed while sending.
    out = swift_cli(pithos_server, "upload", "big", str(src), "--object-name", "big.bin")
    assert "big.bin" in out.stdout
    head = conn.head_object("big", "big.bin")
    assert head["etag"] == want and int(head["content-length"]) == 200 * MiB
    # ... and checks the MD5 of what it downloads against the ETag.
    dest = tmp_path / "down.bin"
    swift_cli(pithos_server, "download", "big", "big.bin", "-o", str(dest))
    assert md5_file(dest) == want
    dest.unlink()
    # The library, streamed.
    headers, body = conn.get_object("big", "big.bin", resp_chunk_size=MiB)
    h = hashlib.md5()
    size = 0
    for chunk in body:
        h.update(chunk)
        size += len(chunk)
    assert (h.hexdigest(), size, headers["etag"]) == (want, 200 * MiB, want)
    conn.delete_object("big", "big.bin")
    conn.delete_container("big")


def test_same_100mib_under_5_names_in_3_containers_is_stored_once(pithos_server, conn):
    data = pattern(100 * MiB, seed=100)
    for c in ("dedup1", "dedup2", "dedup3"):
        conn.put_container(c)
    before = store_stats(pithos_server)
    etag = conn.put_object("dedup1", "first", data)
    one = store_stats(pithos_server)
    for c, name in (("dedup1", "second"), ("dedup2", "a"), ("dedup2", "b/c"), ("dedup3", "z")):
        assert conn.put_object(c, name, data) == etag
    five = store_stats(pithos_server)
    # The first upload stored 25 blocks of 4 MiB and one map page; the next four nothing.
    assert one["blocks"] - before["blocks"] == 25 + 1
    assert 100 * MiB <= one["bytes"] - before["bytes"] < 100 * MiB + 4096
    assert (five["blocks"], five["bytes"]) == (one["blocks"], one["bytes"])
    headers, body = conn.get_object("dedup3", "z")
    assert headers["etag"] == etag and body == data
    account = conn.head_account()
    assert int(conn.head_container("dedup2")["x-container-bytes-used"]) == 200 * MiB
    assert int(account["x-account-bytes-used"]) >= 500 * MiB  # counted per name, as Swift
    for c, name in (("dedup1", "first"), ("dedup1", "second"), ("dedup2", "a"),
                    ("dedup2", "b/c"), ("dedup3", "z")):
        conn.delete_object(c, name)
    for c in ("dedup1", "dedup2", "dedup3"):
        conn.delete_container(c)


# -- large objects with the CLI --------------------------------------------------------------

def test_cli_dlo_upload_download(pithos_server, conn, tmp_path):
    src = tmp_path / "dlo.bin"
    data = pattern(5 * MiB + 123, seed=1)
    src.write_bytes(data)
    swift_cli(pithos_server, "upload", "lo", str(src), "--object-name", "dlo.bin",
              "--segment-size", str(MiB), "--use-dlo")
    head = conn.head_object("lo", "dlo.bin")
    assert head["x-object-manifest"].startswith("lo_segments/dlo.bin/")
    assert int(head["content-length"]) == len(data)
    _, segments = conn.get_container("lo_segments", prefix="dlo.bin/")
    assert len(segments) == 6
    joined = "".join(s["hash"] for s in segments).encode()
    assert head["etag"] == f'"{hashlib.md5(joined).hexdigest()}"'
    dest = tmp_path / "dlo.out"
    swift_cli(pithos_server, "download", "lo", "dlo.bin", "-o", str(dest))
    assert dest.read_bytes() == data
    _, body = conn.get_object("lo", "dlo.bin", headers={"Range": f"bytes={MiB - 10}-{MiB + 9}"})
    assert body == data[MiB - 10:MiB + 10]
    # The manifest itself, without its content.
    _, raw = conn.get_object("lo", "dlo.bin", query_string="multipart-manifest=get")
    assert raw == b""
    # Deleting with the CLI deletes the segments too.
    swift_cli(pithos_server, "delete", "lo", "dlo.bin")
    assert conn.get_container("lo_segments", prefix="dlo.bin/")[1] == []


def test_cli_slo_upload_download(pithos_server, conn, tmp_path):
    src = tmp_path / "slo.bin"
    data = pattern(5 * MiB + 321, seed=2)
    src.write_bytes(data)
    swift_cli(pithos_server, "upload", "lo", str(src), "--object-name", "slo.bin",
              "--segment-size", str(MiB), "--use-slo")
    head = conn.head_object("lo", "slo.bin")
    assert head["x-static-large-object"].lower() == "true"
    assert int(head["content-length"]) == len(data)
    _, segments = conn.get_container("lo_segments", prefix="slo.bin/")
    assert len(segments) == 6
    joined = "".join(s["hash"] for s in segments).encode()
    assert head["etag"].strip('"') == hashlib.md5(joined).hexdigest()
    dest = tmp_path / "slo.out"
    swift_cli(pithos_server, "download", "lo", "slo.bin", "-o", str(dest))
    assert dest.read_bytes() == data
    # A range across a segment boundary.
    _, body = conn.get_object("lo", "slo.bin",
                              headers={"Range": f"bytes={2 * MiB - 5}-{3 * MiB + 4}"})
    assert body == data[2 * MiB - 5:3 * MiB + 5]
    _, manifest = conn.get_object("lo", "slo.bin", query_string="multipart-manifest=get")
    listed = json.loads(manifest)
    assert [s["bytes"] for s in listed] == [MiB] * 5 + [321]
    assert [s["name"] for s in listed] == [f"/lo_segments/{s['name']}" for s in segments]
    # Keystone v3 login with the CLI: the same object, listed and downloaded.
    out = swift_cli_v3(pithos_server, "list", "lo")
    assert "slo.bin" in out.stdout.split()
    dest.unlink()
    swift_cli_v3(pithos_server, "download", "lo", "slo.bin", "-o", str(dest))
    assert dest.read_bytes() == data
    swift_cli(pithos_server, "delete", "lo", "slo.bin")
    assert status_of(conn.head_object, "lo", "slo.bin") == 404
    assert conn.get_container("lo_segments", prefix="slo.bin/")[1] == []


# -- listings ----------------------------------------------------------------------------------

NAMES = ["a.txt", "b/1", "b/2", "b/c/3", "b/c/4", "d/", "d/5", "e", "f/g/6", "zé/7"]


@pytest.fixture(scope="module")
def listed(conn):
    conn.put_container("listing")
    for name in NAMES:
        conn.put_object("listing", name, name.encode(), content_type="text/plain")
    yield "listing"
    for name in NAMES:
        conn.delete_object("listing", name)
    conn.delete_container("listing")


def names(listing) -> list[str]:
    return [e.get("name", e.get("subdir")) for e in listing]


def test_listing_delimiter_and_pseudo_directories(conn, listed):
    _, all_ = conn.get_container(listed)
    assert names(all_) == sorted(NAMES)
    assert all_[0] == {**all_[0], "bytes": 5, "hash": hashlib.md5(b"a.txt").hexdigest(),
                       "content_type": "text/plain"}
    _, top = conn.get_container(listed, delimiter="/")
    assert top[:2] == [{**top[0]}, {"subdir": "b/"}] and top[0]["name"] == "a.txt"
    assert names(top) == ["a.txt", "b/", "d/", "e", "f/", "zé/"]
    _, inner = conn.get_container(listed, prefix="b/", delimiter="/")
    assert names(inner) == ["b/1", "b/2", "b/c/"]
    _, deeper = conn.get_container(listed, prefix="b/c/", delimiter="/")
    assert names(deeper) == ["b/c/3", "b/c/4"]
    _, top_rev = conn.get_container(listed, delimiter="/", query_string="reverse=on")
    assert names(top_rev) == ["zé/", "f/", "e", "d/", "b/", "a.txt"]
    # path=: the objects directly under a pseudo-directory.
    _, by_path = conn.get_container(listed, path="b")
    assert names(by_path) == ["b/1", "b/2"]
    _, by_path = conn.get_container(listed, path="d")
    assert names(by_path) == ["d/5"]


def test_listing_marker_end_marker_limit_reverse(conn, listed):
    _, page = conn.get_container(listed, marker="b/2", limit=3)
    assert names(page) == ["b/c/3", "b/c/4", "d/"]
    _, page = conn.get_container(listed, marker="b/2", end_marker="e")
    assert names(page) == ["b/c/3", "b/c/4", "d/", "d/5"]
    _, page = conn.get_container(listed, prefix="b/", end_marker="b/c")
    assert names(page) == ["b/1", "b/2"]
    _, page = conn.get_container(listed, limit=2, query_string="reverse=true")
    assert names(page) == ["zé/7", "f/g/6"]
    _, page = conn.get_container(listed, marker="d/", end_marker="a.txt",
                                 query_string="reverse=1")
    assert names(page) == ["b/c/4", "b/c/3", "b/2", "b/1"]
    _, page = conn.get_container(listed, marker="zz")  # "é" sorts after "z" (code points)
    assert names(page) == ["zé/7"]
    _, page = conn.get_container(listed, marker="zé/7")
    assert page == []
    # full_listing pages through with markers.
    _, everything = conn.get_container(listed, limit=3, full_listing=True)
    assert names(everything) == sorted(NAMES)


def test_listing_formats(pithos_server, conn, listed):
    me = login(pithos_server)
    base = f"{me.path}/{listed}"
    plain = request(pithos_server, "GET", f"{base}?delimiter=/", token=me.token)
    assert plain.status == 200 and plain.headers["content-type"].startswith("text/plain")
    assert plain.body.decode().splitlines() == ["a.txt", "b/", "d/", "e", "f/", "zé/"]
    js = request(pithos_server, "GET", f"{base}?format=json&prefix=b/&delimiter=/",
                 token=me.token)
    assert js.headers["content-type"].startswith("application/json")
    assert [e.get("name", e.get("subdir")) for e in js.json()] == ["b/1", "b/2", "b/c/"]
    xml = request(pithos_server, "GET", f"{base}?format=xml&prefix=b/&delimiter=/",
                  token=me.token)
    assert xml.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(xml.body)
    assert root.tag == "container" and root.get("name") == listed
    assert [o.findtext("name") for o in root.findall("object")] == ["b/1", "b/2"]
    assert [s.get("name") for s in root.findall("subdir")] == ["b/c/"]
    obj = root.find("object")
    assert obj is not None and obj.findtext("hash") == hashlib.md5(b"b/1").hexdigest()
    assert obj.findtext("bytes") == "3" and obj.findtext("content_type") == "text/plain"
    # Accept: chooses the format when there is no format=.
    acc = request(pithos_server, "GET", base, token=me.token,
                  headers={"Accept": "application/json"})
    assert [e["name"] for e in acc.json()] == sorted(NAMES)
    # An empty plain listing is 204, an empty JSON listing is [].
    assert request(pithos_server, "GET", f"{base}?prefix=nothing",
                   token=me.token).status == 204
    assert request(pithos_server, "GET", f"{base}?prefix=nothing&format=json",
                   token=me.token).json() == []
    # The account listing in the three formats.
    acct = request(pithos_server, "GET", f"{me.path}?format=json&prefix=listing",
                   token=me.token)
    assert acct.json() == [{**acct.json()[0], "name": "listing", "count": len(NAMES)}]
    assert acct.headers["x-account-container-count"].isdigit()
    axml = ET.fromstring(request(pithos_server, "GET", f"{me.path}?format=xml&prefix=listing",
                                 token=me.token).body)
    assert axml.tag == "account" and axml.get("name") == "AUTH_test"
    assert axml.find("container/count").text == str(len(NAMES))
    aplain = request(pithos_server, "GET", f"{me.path}?prefix=listing", token=me.token)
    assert aplain.body.decode().splitlines() == ["listing"]


def test_account_listing_marker_limit_reverse(pithos_server, conn):
    for c in ("acct-a", "acct-b", "acct-c"):
        conn.put_container(c)
    try:
        _, page = conn.get_account(prefix="acct-", limit=2)
        assert [c["name"] for c in page] == ["acct-a", "acct-b"]
        _, page = conn.get_account(prefix="acct-", marker="acct-a", end_marker="acct-c")
        assert [c["name"] for c in page] == ["acct-b"]
        me = login(pithos_server)
        r = request(pithos_server, "GET", f"{me.path}?prefix=acct-&reverse=yes&limit=2",
                    token=me.token)
        assert r.body.decode().split() == ["acct-c", "acct-b"]
    finally:
        for c in ("acct-a", "acct-b", "acct-c"):
            conn.delete_container(c)


# -- copies ------------------------------------------------------------------------------------

def test_copy_x_copy_from_and_copy_verb(pithos_server, conn):
    conn.put_container("cp")
    data = pattern(3 * MiB, seed=3)
    etag = conn.put_object("cp", "src", data, content_type="application/x-src",
                           headers={"X-Object-Meta-Color": "red",
                                    "Content-Disposition": "attachment; filename=src"})
    before = store_stats(pithos_server)
    # X-Copy-From keeps the metadata and adds the request's.
    conn.put_object("cp", "by-put", b"", headers={"X-Copy-From": "/cp/src",
                                                  "X-Object-Meta-Size": "big"})
    h = conn.head_object("cp", "by-put")
    assert h["etag"] == etag and h["content-type"] == "application/x-src"
    assert h["x-object-meta-color"] == "red" and h["x-object-meta-size"] == "big"
    assert h["content-disposition"] == "attachment; filename=src"
    # COPY with Destination.
    conn.copy_object("cp", "src", destination="/cp/by-copy",
                     headers={"X-Object-Meta-Shape": "round"})
    h = conn.head_object("cp", "by-copy")
    assert (h["x-object-meta-color"], h["x-object-meta-shape"]) == ("red", "round")
    # X-Fresh-Metadata drops the source's metadata.
    conn.copy_object("cp", "src", destination="/cp/fresh", fresh_metadata=True,
                     headers={"X-Object-Meta-New": "yes"})
    h = conn.head_object("cp", "fresh")
    assert h["x-object-meta-new"] == "yes" and "x-object-meta-color" not in h
    assert "content-disposition" not in h
    for name in ("by-put", "by-copy", "fresh"):
        headers, body = conn.get_object("cp", name)
        assert body == data and headers["etag"] == etag
    # A copy copies no data.
    assert store_stats(pithos_server)["blocks"] == before["blocks"]
    # The source is named in the answer, quoted (a name may hold what a header cannot).
    conn.put_object("cp", "✓ src", b"tick")
    r = request(pithos_server, "COPY", f"{login(pithos_server).path}/cp/%E2%9C%93%20src",
                headers={"Destination": "/cp/tick"}, token=login(pithos_server).token)
    assert r.status == 201
    assert (r.headers["x-copied-from"], r.headers["x-copied-from-account"]) == (
        "cp/%E2%9C%93%20src", "AUTH_test")
    assert conn.get_object("cp", "tick")[1] == b"tick"
    # Copying something absent is 404 and creates nothing.
    assert status_of(conn.copy_object, "cp", "nothing", destination="/cp/x") == 404
    assert status_of(conn.head_object, "cp", "x") == 404
    # The source stays as it was.
    h = conn.head_object("cp", "src")
    assert h["x-object-meta-color"] == "red" and "x-object-meta-shape" not in h


def test_copy_across_accounts_with_acls(pithos_server, conn, other):
    me, them = login(pithos_server), login(pithos_server, "test2:tester2", "testing2")
    conn.put_container("xsrc")
    conn.put_object("xsrc", "doc", b"shared document")
    other.put_container("inbox")
    copy = {"Destination": "/inbox/doc", "Destination-Account": "AUTH_test2",
            "Content-Length": "0"}
    # No ACL on test2's container: tester may not write there.
    r = request(pithos_server, "COPY", f"{me.path}/xsrc/doc", headers=copy, token=me.token)
    assert r.status == 403
    assert status_of(other.head_object, "inbox", "doc") == 404
    other.post_container("inbox", {"X-Container-Write": "test:tester"})
    r = request(pithos_server, "COPY", f"{me.path}/xsrc/doc", headers=copy, token=me.token)
    assert r.status == 201, r
    assert other.get_object("inbox", "doc")[1] == b"shared document"
    # The other way: tester2 pulls with X-Copy-From-Account once test lets test2 read.
    pull = {"X-Copy-From": "/xsrc/doc", "X-Copy-From-Account": "AUTH_test",
            "Content-Length": "0"}
    r = request(pithos_server, "PUT", f"{them.path}/inbox/pulled", headers=pull,
                token=them.token)
    assert r.status == 403
    conn.post_container("xsrc", {"X-Container-Read": "test2"})
    r = request(pithos_server, "PUT", f"{them.path}/inbox/pulled", headers=pull,
                token=them.token)
    assert r.status == 201, r
    assert r.headers["x-copied-from-account"] == "AUTH_test"
    assert r.headers["x-copied-from"] == "xsrc/doc"
    assert other.get_object("inbox", "pulled")[1] == b"shared document"


# -- metadata ----------------------------------------------------------------------------------

def test_metadata_post_replaces(pithos_server, conn):
    conn.put_container("meta")
    conn.put_object("meta", "o", b"data", content_type="text/x-one",
                    headers={"X-Object-Meta-A": "1", "X-Object-Meta-B": "2",
                             "Content-Disposition": "inline", "Content-Encoding": "gzip"})
    h = conn.head_object("meta", "o")
    assert (h["x-object-meta-a"], h["x-object-meta-b"]) == ("1", "2")
    assert (h["content-disposition"], h["content-encoding"]) == ("inline", "gzip")
    conn.post_object("meta", "o", {"X-Object-Meta-C": "3",
                                   "Content-Disposition": "attachment; filename=o.txt"})
    h = conn.head_object("meta", "o")
    assert h["x-object-meta-c"] == "3"
    assert "x-object-meta-a" not in h and "x-object-meta-b" not in h
    assert h["content-disposition"] == "attachment; filename=o.txt"
    assert "content-encoding" not in h
    assert h["content-type"] == "text/x-one" and h["etag"] == hashlib.md5(b"data").hexdigest()
    conn.post_object("meta", "o", {"Content-Type": "text/x-two"})
    h = conn.head_object("meta", "o")
    assert h["content-type"] == "text/x-two" and "x-object-meta-c" not in h
    # The body is untouched by POSTs; GET shows the same headers as HEAD.
    me = login(pithos_server)
    conn.put_object("meta", "z", b"zz", headers={"Content-Encoding": "gzip"})
    raw = request(pithos_server, "GET", f"{me.path}/meta/z", token=me.token)
    assert raw.body == b"zz" and raw.headers["content-encoding"] == "gzip"
    assert conn.get_object("meta", "o")[1] == b"data"
    assert status_of(conn.post_object, "meta", "absent", {"X-Object-Meta-A": "1"}) == 404
    # UTF-8 values count in bytes: 128 two-byte characters are at the 256-byte limit.
    conn.post_object("meta", "o", {"X-Object-Meta-Uni": "é" * 128})
    assert conn.head_object("meta", "o")["x-object-meta-uni"] == "é" * 128
    assert status_of(conn.post_object, "meta", "o", {"X-Object-Meta-Uni": "é" * 129}) == 400
    # Container and account metadata: set, replace one key, remove one.
    conn.post_container("meta", {"X-Container-Meta-K1": "v1", "X-Container-Meta-K2": "v2"})
    conn.post_container("meta", {"X-Container-Meta-K1": "w1",
                                 "X-Remove-Container-Meta-K2": "x"})
    h = conn.head_container("meta")
    assert h["x-container-meta-k1"] == "w1" and "x-container-meta-k2" not in h
    conn.post_account({"X-Account-Meta-Owner": "me"})
    assert conn.head_account()["x-account-meta-owner"] == "me"
    conn.post_account({"X-Remove-Account-Meta-Owner": "x"})
    assert "x-account-meta-owner" not in conn.head_account()
    # Content-Type is guessed from the name when absent.
    r = request(pithos_server, "PUT", f"{me.path}/meta/page.html", body=b"<p>",
                token=me.token)
    assert r.status == 201
    assert conn.head_object("meta", "page.html")["content-type"] == "text/html"


# -- ranges --------------------------------------------------------------------------------------

def test_ranges(pithos_server, conn):
    data = pattern(10000, seed=4)
    conn.put_container("ranges")
    conn.put_object("ranges", "r", data, content_type="application/x-test")
    h, body = conn.get_object("ranges", "r", headers={"Range": "bytes=100-199"})
    assert body == data[100:200] and h["content-range"] == "bytes 100-199/10000"
    h, body = conn.get_object("ranges", "r", headers={"Range": "bytes=-300"})
    assert body == data[-300:] and h["content-range"] == "bytes 9700-9999/10000"
    h, body = conn.get_object("ranges", "r", headers={"Range": "bytes=9990-"})
    assert body == data[9990:]
    h, body = conn.get_object("ranges", "r", headers={"Range": "bytes=9990-20000"})
    assert body == data[9990:] and h["content-range"] == "bytes 9990-9999/10000"
    h, body = conn.get_object("ranges", "r", headers={"Range": "bytes=-20000"})
    assert body == data
    # Multi-range: multipart/byteranges, each part with its own Content-Range.
    h, body = conn.get_object("ranges", "r", headers={"Range": "bytes=0-9,500-509,-5"})
    ctype = h["content-type"]
    assert ctype.startswith("multipart/byteranges")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    parts = list(msg.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        "bytes 0-9/10000", "bytes 500-509/10000", "bytes 9995-9999/10000"]
    assert [p.get_content() for p in parts] == [data[:10], data[500:510], data[-5:]]
    assert all(p.get_content_type() == "application/x-test" for p in parts)
    assert int(h["content-length"]) == len(body)
    # Unsatisfiable: 416 with the size.
    me = login(pithos_server)
    for spec in ("bytes=10000-", "bytes=20000-30000", "bytes=-0"):
        r = request(pithos_server, "GET", f"{me.path}/ranges/r", token=me.token,
                    headers={"Range": spec})
        assert r.status == 416, spec
        assert r.headers["content-range"] == "bytes */10000"
    # A malformed Range is ignored (the whole object), as Swift does.
    r = request(pithos_server, "GET", f"{me.path}/ranges/r", token=me.token,
                headers={"Range": "bytes=5-1"})
    assert r.status == 200 and r.body == data
    # HEAD with a range tells the length of the range.
    r = request(pithos_server, "HEAD", f"{me.path}/ranges/r", token=me.token,
                headers={"Range": "bytes=0-99"})
    assert r.status == 206 and r.headers["content-length"] == "100"
    # An empty object: no byte to start at, but "the last N bytes" are all of it (as Swift).
    conn.put_object("ranges", "empty", b"")
    r = request(pithos_server, "GET", f"{me.path}/ranges/empty", token=me.token,
                headers={"Range": "bytes=0-0"})
    assert r.status == 416 and r.headers["content-range"] == "bytes */0"
    r = request(pithos_server, "GET", f"{me.path}/ranges/empty", token=me.token,
                headers={"Range": "bytes=-5"})
    assert (r.status, r.body) == (200, b"")


# -- conditional requests --------------------------------------------------------------------

def test_conditional_gets(pithos_server, conn):
    conn.put_container("cond")
    etag = conn.put_object("cond", "o", b"conditional")
    last = conn.head_object("cond", "o")["last-modified"]
    lm = time.mktime(time.strptime(last, "%a, %d %b %Y %H:%M:%S GMT")) - time.timezone
    before, after = formatdate(lm - 3600, usegmt=True), formatdate(lm + 3600, usegmt=True)
    me = login(pithos_server)
    path = f"{me.path}/cond/o"

    def get(method="GET", **headers):
        return request(pithos_server, method, path, token=me.token, headers=headers)

    assert get(**{"If-Match": etag}).body == b"conditional"
    assert get(**{"If-Match": f'"{etag}"'}).status == 200
    assert get(**{"If-Match": "*"}).status == 200
    r = get(**{"If-Match": "0" * 32})
    assert r.status == 412 and r.headers["etag"] == etag
    assert get("HEAD", **{"If-Match": "0" * 32}).status == 412
    r = get(**{"If-None-Match": etag})
    assert r.status == 304 and r.body == b"" and r.headers["etag"] == etag
    assert get(**{"If-None-Match": "*"}).status == 304
    assert get("HEAD", **{"If-None-Match": etag}).status == 304
    assert get(**{"If-None-Match": "0" * 32}).status == 200
    assert get(**{"If-Modified-Since": after}).status == 304
    assert get(**{"If-Modified-Since": last}).status == 304
    assert get(**{"If-Modified-Since": before}).status == 200
    assert get(**{"If-Unmodified-Since": before}).status == 412
    assert get(**{"If-Unmodified-Since": after}).status == 200
    # If-None-Match wins over If-Modified-Since; If-Unmodified-Since is checked beside a
    # matching If-Match, as Swift checks it.
    assert get(**{"If-None-Match": "0" * 32, "If-Modified-Since": after}).status == 200
    assert get(**{"If-Match": etag, "If-Unmodified-Since": before}).status == 412
    assert get(**{"If-Match": etag, "If-Unmodified-Since": after}).status == 200
    # With a range.
    r = get(**{"If-Match": etag, "Range": "bytes=0-3"})
    assert r.status == 206 and r.body == b"cond"
    # PUT with If-None-Match: * refuses to overwrite.
    assert status_of(conn.put_object, "cond", "o", b"new",
                     headers={"If-None-Match": "*"}) == 412
    assert conn.get_object("cond", "o")[1] == b"conditional"
    conn.put_object("cond", "fresh", b"new", headers={"If-None-Match": "*"})


# -- delete and expiry -----------------------------------------------------------------------

def test_delete(conn):
    conn.put_container("del")
    conn.put_object("del", "o", b"x" * 100)
    conn.put_object("del", "keep", b"y")
    assert conn.head_container("del")["x-container-object-count"] == "2"
    conn.delete_object("del", "o")
    assert status_of(conn.get_object, "del", "o") == 404
    assert status_of(conn.delete_object, "del", "o") == 404
    assert names(conn.get_container("del")[1]) == ["keep"]
    h = conn.head_container("del")
    assert (h["x-container-object-count"], h["x-container-bytes-used"]) == ("1", "1")
    assert status_of(conn.delete_container, "del") == 409
    conn.delete_object("del", "keep")
    conn.delete_container("del")
    assert status_of(conn.head_container, "del") == 404
    # A deleted object can be created again.
    conn.put_container("del")
    conn.put_object("del", "o", b"again")
    assert conn.get_object("del", "o")[1] == b"again"


def _gone(conn, container, name, timeout_s=15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn.head_object(container, name)
        except swiftclient.ClientException as exc:
            assert exc.http_status == 404
            return True
        time.sleep(0.25)
    return False


def test_expiring_objects(pithos_server, conn):
    conn.put_container("exp")
    conn.put_object("exp", "after", b"soon gone", headers={"X-Delete-After": "2"})
    at = int(time.time()) + 3
    conn.put_object("exp", "at", b"gone later", headers={"X-Delete-At": str(at)})
    conn.put_object("exp", "posted", b"expires by POST")
    conn.post_object("exp", "posted", {"X-Delete-After": "2"})
    conn.put_object("exp", "stays", b"here")
    h = conn.head_object("exp", "at")
    assert h["x-delete-at"] == str(at)
    assert conn.get_object("exp", "after")[1] == b"soon gone"
    for name in ("after", "at", "posted"):
        assert _gone(conn, "exp", name), name
    assert names(conn.get_container("exp")[1]) == ["stays"]
    me = login(pithos_server)
    assert request(pithos_server, "GET", f"{me.path}/exp/at", token=me.token).status == 404


# -- access control ----------------------------------------------------------------------------

def test_auth_required_and_other_accounts(pithos_server, conn):
    me = login(pithos_server)
    them = login(pithos_server, "test2:tester2", "testing2")
    conn.put_container("authz")
    conn.put_object("authz", "o", b"private")
    for method, path in (("HEAD", me.path), ("GET", me.path), ("GET", f"{me.path}/authz"),
                         ("GET", f"{me.path}/authz/o"), ("PUT", f"{me.path}/authz/new")):
        r = request(pithos_server, method, path, body=b"" if method == "PUT" else None)
        assert r.status == 401, (method, path)
        r = request(pithos_server, method, path, token="PTK_bogus",
                    body=b"" if method == "PUT" else None)
        assert r.status == 401, (method, path)
        r = request(pithos_server, method, path, token=them.token,
                    body=b"" if method == "PUT" else None)
        assert r.status == 403, (method, path)
    assert status_of(conn.head_object, "authz", "new") == 404
    # Bad credentials.
    r = request(pithos_server, "GET", "/auth/v1.0",
                headers={"X-Auth-User": "test:tester", "X-Auth-Key": "wrong"})
    assert r.status == 401
    # Keystone v3: a good login gives a token and the storage URL in the catalog; a bad
    # password or another account's project gives 401.

    def v3(user: str, password: str, project: str) -> tuple[int, dict, dict]:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
        r = request(pithos_server, "POST", "/v3/auth/tokens", body=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
        return r.status, r.headers, (r.json() if r.status == 201 else {})

    status, headers, doc = v3("tester", "testing", "test")
    assert status == 201
    urls = {e["url"] for s in doc["token"]["catalog"] if s["type"] == "object-store"
            for e in s["endpoints"]}
    assert urls == {me.storage_url}
    r = request(pithos_server, "HEAD", me.path, token=headers["x-subject-token"])
    assert r.status == 204
    assert v3("tester", "wrong", "test")[0] == 401
    assert v3("tester", "testing", "test2")[0] == 401
    assert v3("nobody", "testing", "test")[0] == 401


def test_container_acls(pithos_server, conn, reader):
    me = login(pithos_server)
    conn.put_container("acl")
    conn.put_object("acl", "o", b"acl object")
    # A non-admin user of the account gets nothing without an ACL.
    assert status_of(reader.get_object, "acl", "o") == 403
    assert status_of(reader.get_container, "acl") == 403
    assert status_of(reader.put_object, "acl", "new", b"x") == 403
    assert status_of(reader.put_container, "readers-own") == 403
    assert status_of(reader.head_account) == 403
    # User entries.
    conn.post_container("acl", {"X-Container-Read": "test:reader"})
    assert reader.get_object("acl", "o")[1] == b"acl object"
    assert names(reader.get_container("acl")[1]) == ["o"]
    assert status_of(reader.put_object, "acl", "new", b"x") == 403
    # Only the owner sees and changes ACLs.
    assert "x-container-read" not in reader.head_container("acl")
    assert conn.head_container("acl")["x-container-read"] == "test:reader"
    assert status_of(reader.post_container, "acl", {"X-Container-Read": ".r:*"}) == 403
    conn.post_container("acl", {"X-Container-Write": "test:reader"})
    reader.put_object("acl", "new", b"from reader")
    assert conn.head_object("acl", "new")["x-object-modified-by"] == "test:reader"
    reader.delete_object("acl", "new")
    # Account entries: every user of test2.
    them = login(pithos_server, "test2:tester2", "testing2")
    r = request(pithos_server, "GET", f"{me.path}/acl/o", token=them.token)
    assert r.status == 403
    conn.post_container("acl", {"X-Container-Read": "test2"})
    r = request(pithos_server, "GET", f"{me.path}/acl/o", token=them.token)
    assert r.status == 200 and r.body == b"acl object"
    assert status_of(reader.get_object, "acl", "o") == 403  # replaced, not added
    # Public read: objects without a token, but no listing without .rlistings.
    assert request(pithos_server, "GET", f"{me.path}/acl/o").status == 401
    conn.post_container("acl", {"X-Container-Read": ".r:*"})
    r = request(pithos_server, "GET", f"{me.path}/acl/o")
    assert r.status == 200 and r.body == b"acl object"
    assert request(pithos_server, "HEAD", f"{me.path}/acl/o").status == 200
    assert request(pithos_server, "GET", f"{me.path}/acl").status == 401
    assert request(pithos_server, "GET", f"{me.path}/acl/absent").status == 404
    assert request(pithos_server, "PUT", f"{me.path}/acl/anon", body=b"x").status == 401
    conn.post_container("acl", {"X-Container-Read": ".r:*,.rlistings"})
    r = request(pithos_server, "GET", f"{me.path}/acl")
    assert r.status == 200 and r.body.decode().split() == ["o"]
    assert request(pithos_server, "GET", me.path).status == 401  # the account stays private
    # Removing the ACL closes it again.
    conn.post_container("acl", {"X-Remove-Container-Read": "x"})
    assert request(pithos_server, "GET", f"{me.path}/acl/o").status == 401
    # A bad ACL is refused: an unknown designator, as Swift's clean_acl refuses it (a bare
    # ".bogus" is a name to Swift, and kept).
    assert status_of(conn.post_container, "acl", {"X-Container-Read": ".bogus:x"}) == 400


def test_account_acl(pithos_server, conn, reader):
    me = login(pithos_server)
    conn.put_container("acct-acl")
    conn.put_object("acct-acl", "o", b"account acl")
    assert status_of(reader.head_account) == 403
    conn.post_account({"X-Account-Access-Control": json.dumps({"read-only": ["test:reader"]})})
    try:
        assert "acct-acl" in [c["name"] for c in reader.get_account()[1]]
        assert reader.get_object("acct-acl", "o")[1] == b"account acl"
        assert names(reader.get_container("acct-acl")[1]) == ["o"]
        assert status_of(reader.put_object, "acct-acl", "w", b"x") == 403
        assert status_of(reader.delete_object, "acct-acl", "o") == 403
        assert status_of(reader.put_container, "by-reader") == 403
        assert status_of(reader.post_account, {"X-Account-Meta-X": "1"}) == 403
        assert "x-account-access-control" not in reader.head_account()
        conn.post_account({"X-Account-Access-Control":
                           json.dumps({"read-write": ["test:reader"]})})
        reader.put_object("acct-acl", "w", b"written")
        reader.put_container("by-reader")
        reader.put_object("by-reader", "x", b"x")
        assert conn.get_object("by-reader", "x")[1] == b"x"
        reader.delete_object("by-reader", "x")
        reader.delete_container("by-reader")
        # read-write is not admin: no ACL changes.  A container's ACLs are Swift's owner
        # headers: dropped from a non-admin's POST, whose other headers are taken (as
        # Swift's proxy does); the account's ACL is refused.
        acl = json.dumps({"admin": ["test:reader"]})
        assert status_of(reader.post_account, {"X-Account-Access-Control": acl}) == 403
        reader.post_container("acct-acl", {"X-Container-Read": ".r:*",
                                           "X-Container-Meta-By": "reader"})
        head = conn.head_container("acct-acl")
        assert "x-container-read" not in head and head["x-container-meta-by"] == "reader"
        assert request(pithos_server, "GET", f"{me.path}/acct-acl/o").status == 401
        # admin is: ACLs of containers and of the account, which it then sees.
        conn.post_account({"X-Account-Access-Control": acl})
        reader.post_container("acct-acl", {"X-Container-Read": "test2"})
        assert conn.head_container("acct-acl")["x-container-read"] == "test2"
        # Kept compact, as Swift's tempauth keeps it.
        assert reader.head_account()["x-account-access-control"] == '{"admin":["test:reader"]}'
        r = request(pithos_server, "POST", me.path, token=me.token,
                    headers={"X-Account-Access-Control": "not json"})
        assert r.status == 400
    finally:
        conn.post_account({"X-Account-Access-Control": ""})
    assert status_of(reader.get_object, "acct-acl", "o") == 403


def test_bulk_delete(pithos_server, conn, reader):
    conn.put_container("bulk")
    conn.put_container("bulk-empty")
    conn.put_container("bulk-full")
    conn.put_object("bulk-full", "stay", b"x")
    for i in range(3):
        conn.put_object("bulk", f"o {i}/é", b"x" * i)
    me = login(pithos_server)
    body = "\n".join(["/bulk/o%200/%C3%A9", "bulk/o%201/%C3%A9", "/bulk/absent",
                      "/bulk-empty", "/bulk-full", ""]).encode()
    r = request(pithos_server, "DELETE", f"{me.path}?bulk-delete", body=body, token=me.token,
                headers={"Accept": "application/json", "Content-Type": "text/plain"})
    assert r.status == 200
    result = r.json()
    assert (result["Number Deleted"], result["Number Not Found"]) == (3, 1)
    assert result["Errors"] == [["/bulk-full", "409 Conflict"]]
    assert result["Response Status"] == "400 Bad Request"
    assert names(conn.get_container("bulk")[1]) == ["o 2/é"]
    assert status_of(conn.head_container, "bulk-empty") == 404
    # Each path is checked with the caller's rights.
    rr = login(pithos_server, "test:reader", "reading")
    r = request(pithos_server, "POST", f"{rr.path}?bulk-delete", body=b"/bulk/o%202/%C3%A9\n",
                token=rr.token)
    assert r.status == 200 and "403 Forbidden" in r.body.decode()
    assert names(conn.get_container("bulk")[1]) == ["o 2/é"]
    assert request(pithos_server, "DELETE", f"{me.path}?bulk-delete",
                   body=b"/bulk/o%202/%C3%A9\n").status == 401
    assert request(pithos_server, "DELETE", me.path, token=me.token).status == 405
    # The swift CLI deletes a container of many objects with bulk deletes (POST).
    for i in range(25):
        conn.put_object("bulk", f"many/{i:02d}", b"m")
    assert "bulk_delete" in conn.get_capabilities()
    swift_cli(pithos_server, "delete", "bulk")
    assert status_of(conn.head_container, "bulk") == 404


def test_large_objects_do_not_bypass_acls(pithos_server, conn, reader):
    """A user who may write a container cannot read another container through a large
    object's segments (a Swift proxy reads segments with the reader's rights)."""
    conn.put_container("lo-secret")
    conn.put_object("lo-secret", "s/1", b"top secret")
    conn.put_container("lo-shared", headers={"X-Container-Read": "test:reader",
                                             "X-Container-Write": "test:reader"})
    assert status_of(reader.get_object, "lo-secret", "s/1") == 403
    manifest = json.dumps([{"path": "/lo-secret/s/1"}])
    assert status_of(reader.put_object, "lo-shared", "slo", manifest,
                     query_string="multipart-manifest=put") == 400
    assert status_of(conn.head_object, "lo-shared", "slo") == 404
    reader.put_object("lo-shared", "dlo", b"", headers={"X-Object-Manifest": "lo-secret/s/"})
    assert status_of(reader.get_object, "lo-shared", "dlo") == 403
    assert status_of(reader.put_object, "lo-shared", "copy", b"",
                     headers={"X-Copy-From": "/lo-shared/dlo"}) == 403
    assert status_of(conn.head_object, "lo-shared", "copy") == 404
    # The owner reads it, and a reader once allowed.
    assert conn.get_object("lo-shared", "dlo")[1] == b"top secret"
    conn.post_container("lo-secret", {"X-Container-Read": "test:reader"})
    assert reader.get_object("lo-shared", "dlo")[1] == b"top secret"
    reader.put_object("lo-shared", "slo", manifest, query_string="multipart-manifest=put")
    assert reader.get_object("lo-shared", "slo")[1] == b"top secret"

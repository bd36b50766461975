"""The sync client's server API through real HTTP (issue 24): the change feed, conditional
writes (also by hashmap), server-side moves, the CDC chunking policy's headers, and the block
operations' compressed bodies (bounded inflation)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
import zlib

import blake3
import requests

from pithos.core import cdc

T = 30


def auth(server, user="test:tester", key="testing"):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=T)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_change_feed_over_http(pithos_server):
    url, h = auth(pithos_server)
    c = f"{url}/feed"
    assert requests.put(c, headers=h, timeout=T).status_code == 201
    for name in ("a", "b", "c"):
        assert requests.put(f"{c}/{name}", data=name.encode(), headers=h,
                            timeout=T).status_code == 201
    r = requests.get(c, params={"changes_since": "0", "limit": "2"}, headers=h, timeout=T)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    page = r.json()
    assert page["more"] is True and [x["name"] for x in page["changes"]] == ["a", "b"]
    first = page["changes"][0]
    assert first == {"name": "a", "deleted": False, "bytes": 1, "hash": md5(b"a"),
                     "content_type": first["content_type"],
                     "last_modified": first["last_modified"], "version": first["version"]}
    assert first["version"] and "T" in first["last_modified"]
    assert requests.delete(f"{c}/a", headers=h, timeout=T).status_code == 204
    page2 = requests.get(c, params={"changes_since": page["cursor"]}, headers=h,
                         timeout=T).json()
    assert [(x["name"], x["deleted"]) for x in page2["changes"]] == [("c", False),
                                                                     ("a", True)]
    assert page2["more"] is False
    # Bad input: 400 with a reason, never a 5xx.
    for params in ({"changes_since": "zzz"}, {"changes_since": "0", "limit": "0"},
                   {"changes_since": "0", "limit": "x"}, {"changes_since": "0", "limit": "\u00b2"}):
        r = requests.get(c, params=params, headers=h, timeout=T)
        assert r.status_code == 400 and r.text
    # A cursor of this container's with a number that is no ASCII digit: 400, not a 500.
    tag = page["cursor"].partition(".")[0]
    r = requests.get(c, params={"changes_since": f"{tag}.\u00b2"}, headers=h, timeout=T)
    assert r.status_code == 400 and r.text
    # A plain listing is unchanged.
    assert requests.get(c, headers=h, timeout=T).text == "b\nc\n"


def test_conditional_writes_over_http(pithos_server):
    url, h = auth(pithos_server)
    c = f"{url}/cond"
    requests.put(c, headers=h, timeout=T)
    r = requests.put(f"{c}/o", data=b"v1", headers={**h, "If-None-Match": "*"}, timeout=T)
    assert r.status_code == 201
    r = requests.put(f"{c}/o", data=b"v2", headers={**h, "If-None-Match": "*"}, timeout=T)
    assert r.status_code == 412
    r = requests.put(f"{c}/o", data=b"v2", headers={**h, "If-None-Match": "abc"}, timeout=T)
    assert r.status_code == 400
    r = requests.put(f"{c}/o", data=b"v2", headers={**h, "If-Match": md5(b"other")},
                     timeout=T)
    assert r.status_code == 412
    r = requests.put(f"{c}/o", data=b"v2", headers={**h, "If-Match": f'"{md5(b"v1")}"'},
                     timeout=T)
    assert r.status_code == 201
    r = requests.post(f"{c}/o", headers={**h, "X-Object-Meta-K": "v", "If-Match": md5(b"v1")},
                      timeout=T)
    assert r.status_code == 412
    r = requests.delete(f"{c}/o", headers={**h, "If-Match": md5(b"v1")}, timeout=T)
    assert r.status_code == 412
    assert requests.get(f"{c}/o", headers=h, timeout=T).content == b"v2"
    r = requests.delete(f"{c}/o", headers={**h, "If-Match": md5(b"v2")}, timeout=T)
    assert r.status_code == 204


def test_hashmap_put_with_preconditions_and_lengths(pithos_server):
    url, h = auth(pithos_server)
    c = f"{url}/hm"
    requests.put(c, headers=h, timeout=T)
    data = random.Random(3).randbytes(200_000)
    ends = cdc.cut_points(data)
    chunks = [data[a:b] for a, b in itertools.pairwise([0, *ends])]
    doc = json.dumps({"bytes": len(data), "hashes": [blake3.blake3(x).hexdigest()
                                                     for x in chunks],
                      "lengths": [len(x) for x in chunks], "block_hash": "blake3"})
    r = requests.put(f"{c}/o", params={"hashmap": ""}, data=doc,
                     headers={**h, "If-None-Match": "*"}, timeout=T)
    assert r.status_code == 409  # the chunks are missing
    r = requests.post(c, params={"blocks": ""}, data=b"".join(chunks),
                      headers={**h, "X-Block-Lengths": ",".join(str(len(x)) for x in chunks)},
                      timeout=T)
    assert r.status_code == 200
    r = requests.put(f"{c}/o", params={"hashmap": ""}, data=doc,
                     headers={**h, "If-None-Match": "*"}, timeout=T)
    assert r.status_code == 201 and r.headers["ETag"] == md5(data)
    r = requests.put(f"{c}/o", params={"hashmap": ""}, data=doc,
                     headers={**h, "If-None-Match": "*"}, timeout=T)
    assert r.status_code == 412
    r = requests.put(f"{c}/o", params={"hashmap": ""}, data=doc,
                     headers={**h, "If-Match": md5(data)}, timeout=T)
    assert r.status_code == 201


def test_move_and_copy_over_http(pithos_server):
    url, h = auth(pithos_server)
    c = f"{url}/mv"
    requests.put(c, headers=h, timeout=T)
    requests.put(f"{c}/src", data=b"content", headers=h, timeout=T)
    # The source is not what the client saw: 412, nothing moves.
    r = requests.put(f"{c}/dst", headers={**h, "X-Move-From": "/mv/src",
                                          "X-Source-If-Match": md5(b"old")}, timeout=T)
    assert r.status_code == 412
    assert requests.head(f"{c}/dst", headers=h, timeout=T).status_code == 404
    r = requests.put(f"{c}/dst", headers={**h, "X-Move-From": "/mv/src",
                                          "X-Source-If-Match": md5(b"content"),
                                          "If-None-Match": "*"}, timeout=T)
    assert r.status_code == 201 and r.headers["X-Moved-From"] == "mv/src"
    assert requests.head(f"{c}/src", headers=h, timeout=T).status_code == 404
    assert requests.get(f"{c}/dst", headers=h, timeout=T).content == b"content"
    # The target exists: If-None-Match refuses the move whole.
    requests.put(f"{c}/src2", data=b"two", headers=h, timeout=T)
    r = requests.put(f"{c}/dst", headers={**h, "X-Move-From": "mv/src2",
                                          "If-None-Match": "*"}, timeout=T)
    assert r.status_code == 412
    assert requests.get(f"{c}/src2", headers=h, timeout=T).content == b"two"
    # A copy with the source's precondition; the source stays.
    r = requests.put(f"{c}/copy", headers={**h, "X-Copy-From": "mv/src2",
                                           "X-Source-If-Match": md5(b"two")}, timeout=T)
    assert r.status_code == 201
    assert requests.get(f"{c}/src2", headers=h, timeout=T).content == b"two"
    for bad in ({"X-Move-From": "mv/src2", "X-Copy-From": "mv/src2"},
                {"X-Move-From": "mv/src2", "X-Copy-From-Account": "other"}):
        assert requests.put(f"{c}/x", headers={**h, **bad}, timeout=T).status_code == 400
    assert requests.put(f"{c}/x", headers={**h, "X-Move-From": "mv/none"},
                        timeout=T).status_code == 404


def test_chunking_policy_shown_and_refused(pithos_server):
    url, h = auth(pithos_server)
    assert requests.put(f"{url}/cdc", headers={**h, "X-Container-Policy-Chunking": "cdc"},
                        timeout=T).status_code == 201
    r = requests.head(f"{url}/cdc", headers=h, timeout=T)
    assert r.headers["X-Container-Policy-Chunking"] == "cdc"
    requests.put(f"{url}/plain", headers=h, timeout=T)
    r = requests.head(f"{url}/plain", headers=h, timeout=T)
    assert r.headers["X-Container-Policy-Chunking"] == "fixed"
    r = requests.post(f"{url}/plain", headers={**h, "X-Container-Policy-Chunking": "rabin"},
                      timeout=T)
    assert r.status_code == 400 and "cdc or fixed" in r.text
    # A PUT into the cdc container is cut into chunks (its hashmap lists them), read back
    # whole and by range, with the MD5 ETag.
    data = random.Random(9).randbytes(300_000)
    r = requests.put(f"{url}/cdc/o", data=data, headers=h, timeout=T)
    assert r.status_code == 201 and r.headers["ETag"] == md5(data)
    hm = requests.get(f"{url}/cdc/o", params={"hashmap": "", "format": "json"}, headers=h,
                      timeout=T).json()
    assert len(hm["hashes"]) == len(cdc.cut_points(data))
    assert requests.get(f"{url}/cdc/o", headers=h, timeout=T).content == data
    r = requests.get(f"{url}/cdc/o", headers={**h, "Range": "bytes=70000-150000"}, timeout=T)
    assert r.status_code == 206 and r.content == data[70000:150001]


def test_block_operations_take_compressed_bodies(pithos_server):
    url, h = auth(pithos_server)
    c = f"{url}/z"
    requests.put(c, headers=h, timeout=T)
    text = b"".join(b"%06d INFO request served\n" % i for i in range(3000))
    data = text + random.Random(4).randbytes(100_000) + bytes(70_000)
    ends = cdc.cut_points(data)
    chunks = [data[a:b] for a, b in itertools.pairwise([0, *ends])]
    hashes = [blake3.blake3(x).hexdigest() for x in chunks]
    lengths = ",".join(str(len(x)) for x in chunks)
    body = zlib.compress(b"".join(chunks))
    assert len(body) < len(data) // 2
    r = requests.post(c, params={"blocks": ""}, data=body, timeout=T, headers={
        **h, "X-Block-Lengths": lengths, "Content-Encoding": "deflate"})
    assert r.status_code == 200 and r.json() == hashes
    unknown = blake3.blake3(b"never sent").hexdigest()
    r = requests.post(c, params={"missing": ""}, data=gzip.compress(
        json.dumps([*hashes, unknown]).encode()), headers={**h, "Content-Encoding": "gzip"},
        timeout=T)
    assert r.status_code == 200 and r.json() == [unknown]
    doc = json.dumps({"bytes": len(data), "hashes": hashes,
                      "lengths": [len(x) for x in chunks]}).encode()
    r = requests.put(f"{c}/o", params={"hashmap": ""}, data=gzip.compress(doc), timeout=T,
                     headers={**h, "Content-Encoding": "gzip", "If-None-Match": "*"})
    assert r.status_code == 201 and r.headers["ETag"] == md5(data)
    r = requests.get(f"{c}/o", headers=h, timeout=T)
    # The hashmap's coding is not the object's: it is served as stored, uncoded.
    assert r.content == data and "Content-Encoding" not in r.headers


def test_compressed_bodies_are_bounded_and_checked(pithos_server):
    url, h = auth(pithos_server)
    c = f"{url}/zb"
    requests.put(c, headers=h, timeout=T)
    # ~100 KB that inflate to 100 MiB: refused once past the bound, never inflated whole.
    bomb = zlib.compress(bytes(100 << 20), 9)
    assert len(bomb) < 200_000
    r = requests.post(c, params={"blocks": ""}, data=bomb, timeout=T,
                      headers={**h, "Content-Encoding": "deflate"})
    assert r.status_code == 413 and "larger than" in r.text
    r = requests.post(c, params={"blocks": ""}, data=bomb, timeout=T, headers={
        **h, "Content-Encoding": "deflate", "X-Block-Lengths": "4096,4096"})
    assert r.status_code == 413
    r = requests.put(f"{c}/o", params={"hashmap": ""}, timeout=T,
                     data=zlib.compress(b" " * (100 << 20), 9),
                     headers={**h, "Content-Encoding": "deflate"})
    assert r.status_code == 413
    r = requests.post(c, params={"blocks": ""}, data=b"not deflate at all", timeout=T,
                      headers={**h, "Content-Encoding": "deflate"})
    assert r.status_code == 400 and "compressed" in r.text
    r = requests.post(c, params={"blocks": ""}, data=zlib.compress(b"x" * 5000)[:-6],
                      timeout=T, headers={**h, "Content-Encoding": "deflate"})
    assert r.status_code == 400
    r = requests.post(c, params={"missing": ""}, data=b"[]", timeout=T,
                      headers={**h, "Content-Encoding": "br"})
    assert r.status_code == 415 and "gzip or deflate" in r.text
    # The server still answers on a new connection (a refused body closes its own).
    assert requests.head(c, headers=h, timeout=T).status_code == 204

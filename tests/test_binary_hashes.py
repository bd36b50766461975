"""The binary hash list and hashmap (pithos.core.binary_hashes) beside the JSON ones: the
forms themselves, and through real HTTP: `POST ?missing` with Content-Type
application/vnd.pithos.hashes answered in kind, `PUT ?hashmap&format=binary` building the
object, and every malformed body a 400 with its reason (never a 5xx); the JSON forms
unchanged."""

from __future__ import annotations

import hashlib
import json
import random

import blake3
import pytest
import requests

from pithos.core.binary_hashes import (
    ENTRY,
    HASHES_TYPE,
    pack_hashes,
    pack_hashmap,
    unpack_hashes,
    unpack_hashmap,
)

KiB = 1 << 10
MiB = 1 << 20


def auth(server, user="test:tester", key="testing"):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=30)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def h(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def test_the_forms_round_trip_and_refuse_what_is_not_whole():
    hashes = [h(b"%d" % i) for i in range(5)]
    assert unpack_hashes(pack_hashes(hashes)) == hashes
    assert unpack_hashes(b"") == []
    lengths = [1, 16 * KiB, 4 * MiB, 7, 64 * KiB]
    body = pack_hashmap(hashes, lengths)
    assert len(body) == 5 * ENTRY.size
    assert unpack_hashmap(body) == (hashes, lengths)
    with pytest.raises(ValueError, match="not a whole number"):
        unpack_hashes(pack_hashes(hashes)[:-1])
    with pytest.raises(ValueError, match="truncated"):
        unpack_hashmap(body[:-3])
    with pytest.raises(ValueError):
        pack_hashmap(hashes, lengths[:-1])
    with pytest.raises(ValueError):
        pack_hashes([b"short"])


def test_missing_and_hashmap_in_binary_over_http(pithos_server):
    url, auth_h = auth(pithos_server)
    c = f"{url}/bin"
    requests.put(c, headers={**auth_h, "X-Container-Policy-Chunking": "cdc"},
                 timeout=30).raise_for_status()
    rng = random.Random(3)
    chunks = [rng.randbytes(rng.randint(20 * KiB, 60 * KiB)) for _ in range(40)]
    hashes = [h(x) for x in chunks]
    content = b"".join(chunks)

    def missing(body: bytes) -> requests.Response:
        return requests.post(c, params={"missing": ""}, data=body,
                             headers={**auth_h, "Content-Type": HASHES_TYPE}, timeout=30)

    r = missing(pack_hashes(hashes))
    assert r.status_code == 200 and r.headers["Content-Type"].startswith(HASHES_TYPE)
    assert set(unpack_hashes(r.content)) == set(hashes)
    r = requests.post(c, params={"blocks": ""}, data=b"".join(chunks[:30]), timeout=60,
                      headers={**auth_h, "X-Block-Lengths": ",".join(
                          str(len(x)) for x in chunks[:30])})
    assert r.status_code == 200, r.text
    assert set(unpack_hashes(missing(pack_hashes(hashes)).content)) == set(hashes[30:])
    # A hashmap naming blocks not sent yet: 409 listing them (JSON, as before).
    put = {**auth_h, "ETag": hashlib.md5(content).hexdigest(), "If-None-Match": "*"}
    q = {"hashmap": "", "format": "binary"}
    body = pack_hashmap(hashes, [len(x) for x in chunks])
    r = requests.put(f"{c}/o", params=q, data=body, headers=put, timeout=30)
    assert r.status_code == 409 and sorted(json.loads(r.text)) == sorted(
        x.hex() for x in hashes[30:])
    requests.post(c, params={"blocks": ""}, data=b"".join(chunks[30:]), timeout=60,
                  headers={**auth_h, "X-Block-Lengths": ",".join(
                      str(len(x)) for x in chunks[30:])}).raise_for_status()
    r = requests.put(f"{c}/o", params=q, data=body, headers=put, timeout=30)
    assert r.status_code == 201, r.text
    got = requests.get(f"{c}/o", headers=auth_h, timeout=30)
    assert got.content == content
    # Its hashmap read back (JSON) is what the binary one said.
    doc = requests.get(f"{c}/o", params={"hashmap": "", "format": "json"}, headers=auth_h,
                       timeout=30).json()
    assert doc["hashes"] == [x.hex() for x in hashes] and doc["bytes"] == len(content)


@pytest.mark.parametrize("what", ["truncated", "zero length", "over the block size",
                                  "one byte"])
def test_a_malformed_binary_hashmap_is_400_with_its_reason(pithos_server, what):
    url, auth_h = auth(pithos_server)
    c = f"{url}/bin-bad"
    requests.put(c, headers=auth_h, timeout=30).raise_for_status()
    data = random.Random(9).randbytes(20 * KiB)
    requests.post(c, params={"blocks": ""}, data=data, timeout=30,
                  headers={**auth_h, "X-Block-Lengths": str(len(data))}).raise_for_status()
    body, reason = {
        "truncated": (pack_hashmap([h(data)], [len(data)])[:-2], "not a whole number"),
        "zero length": (pack_hashmap([h(data)], [0]), "each length is in"),
        "over the block size": (pack_hashmap([h(data)], [(4 << 20) + 1]),
                                "each length is in"),
        "one byte": (b"x", "not a whole number"),
    }[what]
    r = requests.put(f"{c}/o", params={"hashmap": "", "format": "binary"}, data=body,
                     headers={**auth_h, "If-None-Match": "*"}, timeout=30)
    assert r.status_code == 400 and reason in r.text, (r.status_code, r.text)
    assert requests.head(f"{c}/o", headers=auth_h, timeout=30).status_code == 404


def test_a_malformed_binary_hash_list_is_400_with_its_reason(pithos_server):
    url, auth_h = auth(pithos_server)
    c = f"{url}/bin-bad-list"
    requests.put(c, headers=auth_h, timeout=30).raise_for_status()
    r = requests.post(c, params={"missing": ""}, data=pack_hashes([h(b"a")]) + b"\0",
                      headers={**auth_h, "Content-Type": HASHES_TYPE}, timeout=30)
    assert r.status_code == 400 and "not a whole number" in r.text, (r.status_code, r.text)
    # The JSON form is unchanged, for Pithos clients.
    r = requests.post(c, params={"missing": ""}, data=json.dumps([h(b"a").hex()]),
                      headers={**auth_h, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200 and json.loads(r.text) == [h(b"a").hex()]


def test_a_hash_list_past_the_bound_is_413_never_answered_in_part(pithos_server):
    """A list of more hashes than the bound holds is refused whole, with or without a
    length: answering for its first part would tell a client that the rest is stored."""
    from pithos.api.inflate import MISSING_BODY_MAX

    url, auth_h = auth(pithos_server)
    c = f"{url}/bin-big-list"
    requests.put(c, headers=auth_h, timeout=30).raise_for_status()
    body = bytes(MISSING_BODY_MAX + 32)  # whole 32-byte hashes, one more than fit
    for data in (body, iter([body])):  # a length, then chunked
        r = requests.post(c, params={"missing": ""}, data=data,
                          headers={**auth_h, "Content-Type": HASHES_TYPE}, timeout=60)
        assert r.status_code == 413 and "too large" in r.text, (r.status_code, r.text[:200])


def test_the_sync_client_finds_the_binary_forms_in_the_description(pithos_server):
    from pithos.sync.remote import Credentials, Remote

    remote = Remote(Credentials(pithos_server.auth_url, "test:tester", "testing"), "bin-sync")
    remote.login()
    assert remote.binary_hashes()
    hashes = [h(b"%d" % i) for i in range(3)]
    remote.ensure_container()
    assert remote.missing(hashes) == set(hashes)  # (asked and answered in binary)


def test_a_hash_list_of_more_hashes_than_one_request_asks_is_413(pithos_server):
    """POST ?missing answers for at most MISSING_HASHES_MAX hashes (its look-ups hold the
    worker's loop); one more is refused whole, in either form, and that many are answered."""
    from pithos.api.inflate import MISSING_HASHES_MAX

    url, auth_h = auth(pithos_server)
    c = f"{url}/bin-many"
    requests.put(c, headers=auth_h, timeout=30).raise_for_status()
    many = [h(b"%d" % i) for i in range(MISSING_HASHES_MAX + 1)]
    for body, kind in ((b"".join(many), HASHES_TYPE),
                       (json.dumps([x.hex() for x in many]).encode(), "application/json")):
        r = requests.post(c, params={"missing": ""}, data=body,
                          headers={**auth_h, "Content-Type": kind}, timeout=60)
        assert r.status_code == 413 and str(MISSING_HASHES_MAX) in r.text, r.text[:200]
    r = requests.post(c, params={"missing": ""}, data=b"".join(many[1:]),
                      headers={**auth_h, "Content-Type": HASHES_TYPE}, timeout=60)
    assert r.status_code == 200 and len(r.content) == 32 * MISSING_HASHES_MAX

"""The Pithos block-level protocol through real HTTP: hashmaps, uploads of only the missing
blocks, dedup that leaks nothing across accounts, and in-place updates."""

import hashlib
import json
import random

import blake3
import requests

MiB = 1 << 20
BS = 4 * MiB


def auth(server, user="test:tester", key="testing"):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=30)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def blocks_of(seed, count):
    rng = random.Random(seed)
    return [rng.randbytes(BS) for _ in range(count)]


def hexhash(data):
    return blake3.blake3(data).hexdigest()


def test_reupload_of_a_changed_gib_sends_one_block(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/sync", headers=h, timeout=30)
    count = 256  # 1 GiB
    rng = random.Random(7)

    def body():
        for _ in range(count):
            yield rng.randbytes(BS)

    r = requests.put(f"{url}/sync/big", data=body(), headers=h, timeout=600)
    assert r.status_code == 201
    remote = requests.get(f"{url}/sync/big", params={"hashmap": "", "format": "json"},
                          headers=h, timeout=120).json()
    assert remote["block_size"] == BS and remote["bytes"] == count * BS
    assert len(remote["hashes"]) == count
    # The client changes one block locally and computes its own hashmap.
    rng = random.Random(7)
    changed = rng.randbytes(BS)  # block 0 as uploaded
    assert hexhash(changed) == remote["hashes"][0]
    changed = b"X" + changed[1:]
    local = [hexhash(changed), *remote["hashes"][1:]]
    doc = json.dumps({"block_size": BS, "block_hash": "blake3", "bytes": count * BS,
                      "hashes": local})
    sent = 0
    r = requests.put(f"{url}/sync/big", params={"hashmap": ""}, data=doc, headers=h,
                     timeout=120)
    assert r.status_code == 409 and r.json() == [local[0]]
    r = requests.post(f"{url}/sync", params={"blocks": ""}, data=changed,
                      headers={**h, "Content-Type": "application/octet-stream"}, timeout=120)
    sent += len(changed)
    assert r.status_code == 200 and r.json() == [local[0]]
    r = requests.put(f"{url}/sync/big", params={"hashmap": ""}, data=doc, headers=h,
                     timeout=300)
    assert r.status_code == 201
    assert sent == BS  # exactly one block's bytes travelled
    got = requests.get(f"{url}/sync/big", headers={**h, "Range": f"bytes=0-{2 * BS - 1}"},
                       timeout=120).content
    assert got[:BS] == changed and hexhash(got[BS:]) == remote["hashes"][1]
    # The ETag is the MD5 of the new content.
    rng = random.Random(7)
    md5 = hashlib.md5(changed)
    rng.randbytes(BS)
    for _ in range(count - 1):
        md5.update(rng.randbytes(BS))
    assert requests.head(f"{url}/sync/big", headers=h, timeout=30).headers["ETag"] == \
        md5.hexdigest()


def test_dedup_does_not_leak_across_accounts(pithos_server):
    url_a, ha = auth(pithos_server)
    url_b, hb = auth(pithos_server, "test2:tester2", "testing2")
    requests.put(f"{url_a}/a-private", headers=ha, timeout=30)
    requests.put(f"{url_b}/b-box", headers=hb, timeout=30)
    secret = blocks_of(11, 2)
    requests.put(f"{url_a}/a-private/s", data=b"".join(secret), headers=ha, timeout=60)
    hashes = [hexhash(b) for b in secret]
    # B cannot learn that A stores these blocks...
    r = requests.post(f"{url_b}/b-box", params={"missing": ""}, data=json.dumps(hashes),
                      headers=hb, timeout=30)
    assert r.status_code == 200 and r.json() == hashes
    doc = json.dumps({"bytes": 2 * BS, "hashes": hashes})
    r = requests.put(f"{url_b}/b-box/stolen", params={"hashmap": ""}, data=doc, headers=hb,
                     timeout=30)
    assert r.status_code == 409 and r.json() == hashes
    # ... nor build an object from them, nor read A's hashmap.
    assert requests.get(f"{url_b}/b-box/stolen", headers=hb, timeout=30).status_code == 404
    r = requests.get(f"{url_a}/a-private/s", params={"hashmap": ""}, headers=hb, timeout=30)
    assert r.status_code == 403
    # A itself may name its blocks.
    r = requests.post(f"{url_a}/a-private", params={"missing": ""}, data=json.dumps(hashes),
                      headers=ha, timeout=30)
    assert r.json() == []
    # Once B sends the bytes, B may name them (storage still keeps one copy).
    r = requests.post(f"{url_b}/b-box", params={"blocks": ""}, data=b"".join(secret),
                      headers=hb, timeout=60)
    assert r.json() == hashes
    r = requests.put(f"{url_b}/b-box/mine", params={"hashmap": ""}, data=doc, headers=hb,
                     timeout=60)
    assert r.status_code == 201
    assert requests.get(f"{url_b}/b-box/mine", headers=hb, timeout=60).content == \
        b"".join(secret)


def test_block_lengths_and_bad_hashmaps(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/odd", headers=h, timeout=30)
    r = requests.post(f"{url}/odd", params={"blocks": ""}, data=b"abcdefgh",
                      headers={**h, "X-Block-Lengths": "3,5"}, timeout=30)
    assert r.json() == [hexhash(b"abc"), hexhash(b"defgh")]
    doc = {"bytes": 8, "hashes": r.json(), "lengths": [3, 5]}
    r = requests.put(f"{url}/odd/o", params={"hashmap": ""}, data=json.dumps(doc), headers=h,
                     timeout=30)
    assert r.status_code == 201
    assert requests.get(f"{url}/odd/o", headers=h, timeout=30).content == b"abcdefgh"
    for bad in (b"not json", json.dumps({"bytes": 5, "hashes": ["zz"]}).encode(),
                json.dumps({"bytes": 10 * BS, "hashes": [hexhash(b"x")]}).encode()):
        r = requests.put(f"{url}/odd/bad", params={"hashmap": ""}, data=bad, headers=h,
                         timeout=30)
        assert r.status_code == 400
    assert requests.head(f"{url}/odd/bad", headers=h, timeout=30).status_code == 404


def test_packed_blocks_are_held_to_their_lengths(pithos_server):
    """Blocks sent eight at once are packed (pithos/blocker/packs.py); a hashmap naming them
    gets their sizes from the touch itself (BlockStore.touch_sizes): an entry claiming
    another length than its block's is 400, and whole ones make an object that reads back."""
    url, h = auth(pithos_server)
    requests.put(f"{url}/packed", headers=h, timeout=30)
    rng = random.Random(7)
    parts = [rng.randbytes(1000 + 37 * i) for i in range(8)]
    r = requests.post(f"{url}/packed", params={"blocks": ""}, data=b"".join(parts),
                      headers={**h, "X-Block-Lengths": ",".join(str(len(p)) for p in parts)},
                      timeout=30)
    assert r.json() == [hexhash(p) for p in parts]
    lengths = [len(p) for p in parts]
    for i, wrong in ((0, lengths[0] + 1), (5, lengths[5] - 1), (7, 4096)):
        claimed = [*lengths[:i], wrong, *lengths[i + 1:]]
        doc = {"bytes": sum(claimed), "hashes": r.json(), "lengths": claimed}
        bad = requests.put(f"{url}/packed/o", params={"hashmap": ""}, data=json.dumps(doc),
                           headers=h, timeout=30)
        assert bad.status_code == 400 and f"entry {i} claims" in bad.text, bad.text
    assert requests.head(f"{url}/packed/o", headers=h, timeout=30).status_code == 404
    doc = {"bytes": sum(lengths) + sum(lengths[:2]), "hashes": [*r.json(), *r.json()[:2]],
           "lengths": [*lengths, *lengths[:2]]}
    ok = requests.put(f"{url}/packed/o", params={"hashmap": ""}, data=json.dumps(doc),
                      headers=h, timeout=30)
    assert ok.status_code == 201, ok.text
    assert requests.get(f"{url}/packed/o", headers=h, timeout=30).content == \
        b"".join(parts + parts[:2])


def test_updates_in_place(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/upd", headers=h, timeout=30)
    obj = f"{url}/upd/f"
    requests.put(obj, data=b"0123456789", headers=h, timeout=30)

    def content():
        return requests.get(obj, headers=h, timeout=30).content

    r = requests.post(obj, data=b"AB", headers={**h, "Content-Range": "bytes 2-3/*"},
                      timeout=30)
    assert r.status_code == 204 and content() == b"01AB456789"
    requests.post(obj, data=b"xyz", headers={**h, "Content-Range": "bytes */*"}, timeout=30)
    assert content() == b"01AB456789xyz"
    requests.post(obj, headers={**h, "X-Object-Bytes": "4"}, timeout=30)
    assert content() == b"01AB"
    requests.put(f"{url}/upd/src", data=b"SOURCE", headers=h, timeout=30)
    r = requests.post(obj, headers={**h, "Content-Range": "bytes 1-3/*",
                                    "X-Source-Object": "/upd/src"}, timeout=30)
    assert r.status_code == 204 and content() == b"0SOU"
    assert requests.head(obj, headers=h, timeout=30).headers["ETag"] == \
        hashlib.md5(b"0SOU").hexdigest()
    versions = requests.get(obj, params={"version": "list"}, headers=h,
                            timeout=30).json()["versions"]
    assert len(versions) == 5  # every content change kept the previous version
    r = requests.post(obj, data=b"AB", headers={**h, "Content-Range": "bytes 9-3/*"},
                      timeout=30)
    assert r.status_code == 416 and content() == b"0SOU"

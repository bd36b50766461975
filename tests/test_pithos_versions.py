"""Pithos versions through real HTTP: history, ?version=, ?until=, X-Source-Version, purge,
and the versioning policy."""

import time

import requests


def auth(server, user="test:tester", key="testing"):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=30)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def test_history_versions_until_and_purge(pithos_server):
    url, h = auth(pithos_server)
    assert requests.put(f"{url}/ver", headers=h, timeout=30).status_code == 201
    obj = f"{url}/ver/doc"
    r1 = requests.put(obj, data=b"one", headers=h, timeout=30)
    time.sleep(0.05)
    between = time.time()
    time.sleep(0.05)
    r2 = requests.put(obj, data=b"two!", headers=h, timeout=30)
    v1, v2 = r1.headers["X-Object-Version"], r2.headers["X-Object-Version"]
    assert v1 != v2
    listed = requests.get(obj, params={"version": "list", "format": "json"}, headers=h,
                          timeout=30).json()["versions"]
    assert [v for v, _ in listed] == [v1, v2]
    assert requests.get(obj, params={"version": v1}, headers=h, timeout=30).content == b"one"
    assert requests.get(obj, params={"until": between}, headers=h, timeout=30).content == b"one"
    head = requests.head(obj, headers=h, timeout=30)
    assert head.headers["X-Object-Version"] == v2 and "X-Object-Hash" in head.headers
    assert "X-Object-Version-Timestamp" in head.headers and "X-Object-UUID" in head.headers
    # A version id of one object never reads another object (ids are scoped).
    requests.put(f"{url}/ver/other", data=b"x", headers=h, timeout=30)
    assert requests.get(f"{url}/ver/other", params={"version": v1}, headers=h,
                        timeout=30).status_code == 404
    # Copy an old version.
    r = requests.put(f"{url}/ver/restored", headers={**h, "X-Copy-From": "/ver/doc",
                                                     "X-Source-Version": v1}, timeout=30)
    assert r.status_code == 201
    assert requests.get(f"{url}/ver/restored", headers=h, timeout=30).content == b"one"
    # Listing as of a time.
    names = requests.get(f"{url}/ver", params={"until": between, "format": "json"}, headers=h,
                         timeout=30).json()
    assert [e["name"] for e in names] == ["doc"]
    # Purge the history: the old version is gone, the current stays.
    assert requests.delete(obj, params={"until": time.time() + 1}, headers=h,
                           timeout=30).status_code == 204
    assert requests.get(obj, params={"version": v1}, headers=h, timeout=30).status_code == 404
    assert requests.get(obj, headers=h, timeout=30).content == b"two!"


def test_versioning_none_replaces(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/flat", headers={**h, "X-Container-Policy-Versioning": "none"},
                 timeout=30)
    head = requests.head(f"{url}/flat", headers=h, timeout=30)
    assert head.headers["X-Container-Policy-Versioning"] == "none"
    requests.put(f"{url}/flat/o", data=b"a", headers=h, timeout=30)
    last = requests.put(f"{url}/flat/o", data=b"b", headers=h, timeout=30)
    listed = requests.get(f"{url}/flat/o", params={"version": "list"}, headers=h,
                          timeout=30).json()["versions"]
    assert [v for v, _ in listed] == [last.headers["X-Object-Version"]]
    bad = requests.post(f"{url}/flat", headers={**h, "X-Container-Policy-Versioning": "x"},
                        timeout=30)
    assert bad.status_code == 400


def test_a_reader_copies_the_current_version_only(pithos_server):
    """History is its owner's, or a writer's (as GET ?version=): a read ACL lets another
    account copy the object, not an older version of it, by X-Copy-From, COPY or a splice,
    whichever account the copy goes to."""
    url, h = auth(pithos_server)
    url2, h2 = auth(pithos_server, "test2:tester2", "testing2")
    assert requests.put(f"{url}/hist", headers={**h, "X-Container-Read": "test2:tester2"},
                        timeout=30).status_code in (201, 202)
    old = requests.put(f"{url}/hist/doc", data=b"secret", headers=h, timeout=30)
    assert requests.put(f"{url}/hist/doc", data=b"redacted", headers=h,
                        timeout=30).status_code == 201
    vid = old.headers["X-Object-Version"]
    assert requests.put(f"{url2}/mine", headers=h2, timeout=30).status_code in (201, 202)
    assert requests.get(f"{url}/hist/doc", params={"version": vid}, headers=h2,
                        timeout=30).status_code == 403
    from_account = {"X-Copy-From": "/hist/doc", "X-Copy-From-Account": "AUTH_test"}
    r = requests.put(f"{url2}/mine/copy", data=b"",
                     headers={**h2, **from_account, "X-Source-Version": vid}, timeout=30)
    assert r.status_code == 403
    r = requests.request("COPY", f"{url}/hist/doc", timeout=30, headers={
        **h2, "Destination": "/mine/copy2", "Destination-Account": "AUTH_test2",
        "X-Source-Version": vid})
    assert r.status_code == 403
    assert requests.put(f"{url2}/mine/dst", data=b"d:", headers=h2, timeout=30).ok
    r = requests.post(f"{url2}/mine/dst", timeout=30, headers={
        **h2, "X-Source-Object": "/hist/doc", "X-Source-Account": "AUTH_test",
        "X-Source-Version": vid, "Content-Range": "bytes */*"})
    assert r.status_code == 403
    for name in ("copy", "copy2"):
        assert requests.head(f"{url2}/mine/{name}", headers=h2, timeout=30).status_code == 404
    assert requests.get(f"{url2}/mine/dst", headers=h2, timeout=30).content == b"d:"
    # The current version, as before; and the owner still copies the old one.
    r = requests.put(f"{url2}/mine/copy", data=b"", headers={**h2, **from_account},
                     timeout=30)
    assert r.status_code == 201
    assert requests.get(f"{url2}/mine/copy", headers=h2, timeout=30).content == b"redacted"
    r = requests.put(f"{url}/hist/back", data=b"", timeout=30, headers={
        **h, "X-Copy-From": "/hist/doc", "X-Source-Version": vid})
    assert r.status_code == 201
    assert requests.get(f"{url}/hist/back", headers=h, timeout=30).content == b"secret"


def test_a_splice_appends_another_object_and_only_a_reader_sees_the_etag(pithos_server):
    """POST X-Source-Object with Content-Range bytes */* appends that object (it was a 500);
    the answer's ETag (the new content's MD5) goes only to who may read the object: a
    write-only ACL's append of nothing would tell the MD5 of content it may not read."""
    import hashlib

    url, h = auth(pithos_server)
    _, hr = auth(pithos_server, "test:reader", "reading")
    assert requests.put(f"{url}/splice", headers={**h, "X-Container-Write": "test:reader"},
                        timeout=30).status_code in (201, 202)
    assert requests.put(f"{url}/splice/a", data=b"head:", headers=h, timeout=30).ok
    assert requests.put(f"{url}/splice/b", data=b"tail", headers=h, timeout=30).ok
    r = requests.post(f"{url}/splice/a", timeout=30, headers={
        **h, "X-Source-Object": "/splice/b", "Content-Range": "bytes */*"})
    assert r.status_code == 204, r.text
    assert r.headers["ETag"] == hashlib.md5(b"head:tail").hexdigest()
    assert requests.get(f"{url}/splice/a", headers=h, timeout=30).content == b"head:tail"
    r = requests.post(f"{url}/splice/a", data=b"", timeout=30,
                      headers={**hr, "Content-Range": "bytes */*"})
    assert r.status_code == 204 and "ETag" not in r.headers and "X-Object-Version" in r.headers
    assert requests.get(f"{url}/splice/a", headers=h, timeout=30).content == b"head:tail"

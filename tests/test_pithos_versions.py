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

"""Sharing, groups, public links and quotas through real HTTP: the allowed and the refused
paths."""

import json
import subprocess
import sys

import requests


def auth(server, user="test:tester", key="testing"):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=30)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def test_sharing_with_accounts_and_groups(pithos_server):
    url_a, ha = auth(pithos_server)
    _, hb = auth(pithos_server, "test2:tester2", "testing2")
    requests.put(f"{url_a}/docs", headers=ha, timeout=30)
    for name in ("team/plan", "team/sub/notes", "private"):
        requests.put(f"{url_a}/docs/{name}", data=name.encode(), headers=ha, timeout=30)
    obj = f"{url_a}/docs/team/plan"
    # Nothing is shared yet: B is refused, and learns nothing about names.
    assert requests.get(obj, headers=hb, timeout=30).status_code == 403
    assert requests.get(f"{url_a}/docs/nope", headers=hb, timeout=30).status_code == 403
    assert requests.get(obj).status_code == 401
    # A shares the pseudo-directory team/ with a group holding B's account, read only.
    r = requests.post(url_a, headers={**ha, "X-Account-Group-Friends": "test2"}, timeout=30)
    assert r.status_code == 204
    assert requests.head(url_a, headers=ha, timeout=30).headers[
        "X-Account-Group-Friends"] == "test2"
    requests.put(f"{url_a}/docs/team/", data=b"", headers={
        **ha, "Content-Type": "application/directory"}, timeout=30)
    r = requests.post(f"{url_a}/docs/team/", headers={
        **ha, "X-Object-Sharing": "read=test:friends"}, timeout=30)
    assert r.status_code == 202
    got = requests.get(obj, headers=hb, timeout=30)
    assert got.status_code == 200 and got.content == b"team/plan"
    assert got.headers["X-Object-Allowed-To"] == "read"
    assert requests.get(f"{url_a}/docs/team/sub/notes", headers=hb, timeout=30).status_code \
        == 200  # inherited from the directory
    assert requests.get(f"{url_a}/docs/private", headers=hb, timeout=30).status_code == 403
    head = requests.head(obj, headers=ha, timeout=30)
    assert head.headers["X-Object-Sharing"] == "read=test:friends"
    assert head.headers["X-Object-Shared-By"] == "team/"
    # B lists only what is shared with it; A's ?shared shows the shared objects.
    listed = requests.get(f"{url_a}/docs", params={"format": "json"}, headers=hb,
                          timeout=30).json()
    assert sorted(e["name"] for e in listed) == ["team/", "team/plan", "team/sub/notes"]
    accounts = requests.get(f"{pithos_server.url}/v1", params={"format": "json"},
                            headers=hb, timeout=30).json()
    assert accounts == [{"name": "AUTH_test"}]
    # Read sharing gives no write; only the owner changes sharing or deletes.
    assert requests.put(obj, data=b"x", headers=hb, timeout=30).status_code == 403
    r = requests.post(obj, headers={**ha, "X-Object-Sharing": "write=test2"}, timeout=30)
    assert r.status_code == 202
    r = requests.put(obj, data=b"written by B", headers=hb, timeout=30)
    assert r.status_code == 201
    assert requests.get(obj, headers=ha, timeout=30).content == b"written by B"
    assert requests.post(obj, headers={**hb, "X-Object-Sharing": "read=*"},
                         timeout=30).status_code == 403
    assert requests.post(obj, headers={**hb, "X-Object-Public": "true"},
                         timeout=30).status_code == 403
    assert requests.delete(obj, headers=hb, timeout=30).status_code == 403
    bad = requests.post(obj, headers={**ha, "X-Object-Sharing": "delete=all"}, timeout=30)
    assert bad.status_code == 400
    # Unsharing revokes.
    requests.post(f"{url_a}/docs/team/", headers={**ha, "X-Object-Sharing": ""}, timeout=30)
    requests.post(obj, headers={**ha, "X-Object-Sharing": ""}, timeout=30)
    assert requests.get(obj, headers=hb, timeout=30).status_code == 403


def test_public_links(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/pub", headers=h, timeout=30)
    requests.put(f"{url}/pub/photo.jpg", data=b"0123456789", headers=h, timeout=30)
    r = requests.post(f"{url}/pub/photo.jpg", headers={**h, "X-Object-Public": "true"},
                      timeout=30)
    link = r.headers["X-Object-Public"]
    assert "/public/" in link and len(link.rsplit("/", 1)[1]) >= 32
    assert requests.head(f"{url}/pub/photo.jpg", headers=h,
                         timeout=30).headers["X-Object-Public"] == link
    got = requests.get(link, timeout=30)  # no token
    assert got.status_code == 200 and got.content == b"0123456789"
    part = requests.get(link, headers={"Range": "bytes=2-4"}, timeout=30)
    assert part.status_code == 206 and part.content == b"234"
    assert requests.get(link, headers={"If-None-Match": got.headers["ETag"]},
                        timeout=30).status_code == 304
    assert requests.get(link + "x", timeout=30).status_code == 404
    requests.post(f"{url}/pub/photo.jpg", headers={**h, "X-Object-Public": "false"},
                  timeout=30)
    assert requests.get(link, timeout=30).status_code == 404


def test_quotas(pithos_server):
    url, h = auth(pithos_server)
    requests.put(f"{url}/small", headers={**h, "X-Container-Policy-Quota": "100"}, timeout=30)
    assert requests.put(f"{url}/small/a", data=b"x" * 60, headers=h,
                        timeout=30).status_code == 201
    r = requests.put(f"{url}/small/b", data=b"x" * 60, headers=h, timeout=30)
    assert r.status_code == 413
    # Chunked (length unknown up front): refused at commit, nothing left behind.
    r = requests.put(f"{url}/small/c", data=iter([b"x" * 30, b"y" * 30]), headers=h,
                     timeout=30)
    assert r.status_code == 413
    head = requests.head(f"{url}/small", headers=h, timeout=30)
    assert head.headers["X-Container-Object-Count"] == "1"
    assert head.headers["X-Container-Bytes-Used"] == "60"
    assert requests.head(f"{url}/small/c", headers=h, timeout=30).status_code == 404
    # Overwriting within the quota is fine.
    assert requests.put(f"{url}/small/a", data=b"z" * 90, headers=h,
                        timeout=30).status_code == 201
    # An account quota, set by the operator.
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", "quota", "test2",
                           "--bytes", "50", "--data-dir", str(pithos_server.data_dir)],
                          capture_output=True, timeout=60, check=True)
    assert json.loads(proc.stdout)["quota_bytes"] == 50
    url2, h2 = auth(pithos_server, "test2:tester2", "testing2")
    requests.put(f"{url2}/q", headers=h2, timeout=30)
    assert requests.put(f"{url2}/q/big", data=b"x" * 51, headers=h2,
                        timeout=30).status_code == 413
    assert requests.put(f"{url2}/q/ok", data=b"x" * 10, headers=h2,
                        timeout=30).status_code == 201

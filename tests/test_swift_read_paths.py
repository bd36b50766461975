"""The object read path of a live server on each catalog database (SQLite; PostgreSQL when
PITHOS_TEST_POSTGRES_URL names one): the owner's sharing and public-link headers, sharing
inherited from a pseudo-directory, and refusals (401/403) before any 404."""


import pytest
import requests
from conftest import PithosServer, catalog_databases, postgres_database


@pytest.fixture(scope="module", params=catalog_databases())
def server(request, tmp_path_factory):
    catalog = drop = None
    if request.param == "postgresql":
        catalog, drop = postgres_database("reads")
    srv = PithosServer(tmp_path_factory.mktemp("reads"), catalog=catalog)
    yield srv
    srv.stop()
    if drop is not None:
        drop()


def auth(server, user, key):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=30)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def test_owner_sees_sharing_and_public_link(server):
    url, h = auth(server, "test:tester", "testing")
    assert requests.put(f"{url}/own", headers=h, timeout=30).status_code == 201
    for name in ("plain", "dir/", "dir/sub/o"):
        assert requests.put(f"{url}/own/{name}", data=name.encode(), headers=h,
                            timeout=30).status_code == 201
    head = requests.head(f"{url}/own/plain", headers=h, timeout=30)
    assert head.status_code == 200
    assert "X-Object-Sharing" not in head.headers and "X-Object-Public" not in head.headers
    link = requests.post(f"{url}/own/plain", headers={**h, "X-Object-Public": "true"},
                         timeout=30).headers["X-Object-Public"]
    got = requests.get(f"{url}/own/plain", headers=h, timeout=30)
    assert got.content == b"plain" and got.headers["X-Object-Public"] == link
    public = requests.get(link, timeout=30)
    assert public.status_code == 200 and public.content == b"plain"
    assert requests.head(link, timeout=30).headers["Content-Length"] == "5"
    # A version by id shows the object's link too.
    vid = got.headers["X-Object-Version"]
    assert requests.head(f"{url}/own/plain", params={"version": vid}, headers=h,
                         timeout=30).headers["X-Object-Public"] == link
    # Sharing set on the pseudo-directory shows on what is under it, and only there.
    assert requests.post(f"{url}/own/dir/", headers={**h, "X-Object-Sharing": "read=test2"},
                         timeout=30).status_code == 202
    under = requests.head(f"{url}/own/dir/sub/o", headers=h, timeout=30)
    assert under.headers["X-Object-Sharing"] == "read=test2"
    assert under.headers["X-Object-Shared-By"] == "dir/"
    own = requests.head(f"{url}/own/dir/", headers=h, timeout=30)
    assert own.headers["X-Object-Sharing"] == "read=test2"
    assert "X-Object-Shared-By" not in own.headers
    assert "X-Object-Sharing" not in requests.head(f"{url}/own/plain", headers=h,
                                                   timeout=30).headers
    # Unpublished: the link is gone, and so is the header.
    requests.post(f"{url}/own/plain", headers={**h, "X-Object-Public": "false"}, timeout=30)
    assert requests.get(link, timeout=30).status_code == 404
    assert "X-Object-Public" not in requests.head(f"{url}/own/plain", headers=h,
                                                  timeout=30).headers


def test_refusals_come_before_not_found(server):
    url, h = auth(server, "test:tester", "testing")
    _, other = auth(server, "test2:tester2", "testing2")
    _, reader = auth(server, "test:reader", "reading")
    requests.put(f"{url}/priv", headers=h, timeout=30)
    for name in ("secret", "dir/", "dir/doc"):
        requests.put(f"{url}/priv/{name}", data=b"x", headers=h, timeout=30)
    base = url.rsplit("/", 1)[0]
    paths = ["priv/secret", "priv/nope", "priv/dir/doc", "nocontainer/x"]
    for path in paths:
        assert requests.get(f"{url}/{path}", headers=other, timeout=30).status_code == 403
        assert requests.head(f"{url}/{path}", headers=reader, timeout=30).status_code == 403
        assert requests.get(f"{url}/{path}", timeout=30).status_code == 401
    assert requests.get(f"{base}/AUTH_nobody/c/x", headers=other, timeout=30).status_code \
        == 403
    assert requests.get(f"{url}/priv/nope", headers=h, timeout=30).status_code == 404
    assert requests.get(f"{url}/nocontainer/x", headers=h, timeout=30).status_code == 404
    # Shared from a pseudo-directory: readable by the other account, and only under it.
    requests.post(f"{url}/priv/dir/", headers={**h, "X-Object-Sharing": "read=test2"},
                  timeout=30)
    got = requests.get(f"{url}/priv/dir/doc", headers=other, timeout=30)
    assert got.status_code == 200 and got.headers["X-Object-Allowed-To"] == "read"
    assert "X-Object-Sharing" not in got.headers  # the owner's only
    assert requests.get(f"{url}/priv/dir/missing", headers=other, timeout=30).status_code \
        == 404
    assert requests.get(f"{url}/priv/secret", headers=other, timeout=30).status_code == 403
    assert requests.put(f"{url}/priv/dir/doc", data=b"y", headers=other,
                        timeout=30).status_code == 403
    # A container read ACL lets the account's other user in.
    requests.post(f"{url}/priv", headers={**h, "X-Container-Read": "test:reader"}, timeout=30)
    assert requests.get(f"{url}/priv/secret", headers=reader, timeout=30).status_code == 200
    assert requests.get(f"{url}/priv/nope", headers=reader, timeout=30).status_code == 404

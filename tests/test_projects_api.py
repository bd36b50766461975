"""Projects over HTTP against a live `pithos serve` (issue 25): Keystone v3 password logins
scoped to a project, token validation, project and user views, a cloud admin's changes,
Astakos' quota view, passwords, and 50 parallel uploads against a project quota that fits 10.

Users: test:tester (admin of account test), test2:tester2 (admin of test2), test:reader, and
admin:root, a cloud admin (an admin of account "admin")."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import PithosServer

T = 30
SERVER_CONFIGS = ("embedded", "scaleout")


@pytest.fixture(scope="module")
def server(pithos_server: PithosServer) -> PithosServer:
    cli(pithos_server, "user", "add", "admin:root", "--key", "rooting", "--admin")
    return pithos_server


def cli(server: PithosServer, *args: str, input: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", *args,
                           *server.storage_flags], capture_output=True, text=True,
                          timeout=60, input=input)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def login(server, user: str, password: str, project: dict | None = None,
          domain: dict | None = None) -> requests.Response:
    doc: dict = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": domain or {"name": "Default"}, "password": password}}}}}
    if project is not None:
        doc["auth"]["scope"] = {"project": project}
    return requests.post(f"{server.url}/v3/auth/tokens", json=doc, timeout=T)


def token(server, user: str, password: str, project: dict | None = None) -> str:
    r = login(server, user, password, project)
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def api(server, method: str, path: str, tok: str | None, **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    if tok:
        headers["X-Auth-Token"] = tok
    return requests.request(method, server.url + path, headers=headers, timeout=T, **kw)


def make_project(server, name: str, members: tuple[str, ...] = (),
                 limits: dict | None = None) -> str:
    root = token(server, "root", "rooting", {"name": "admin", "domain": {"name": "Default"}})
    r = api(server, "POST", "/v3/projects", root, json={"project": {"name": name}})
    assert r.status_code == 201, r.text
    pid = r.json()["project"]["id"]
    for member in members:
        r = api(server, "PUT", f"/v3/projects/{pid}/users/{member}/roles/member", root)
        assert r.status_code == 204, r.text
    if limits:
        r = api(server, "PUT", f"/account/v1.0/projects/{pid}/quotas", root, json=limits)
        assert r.status_code == 200, r.text
        assert {k: v["limit"] for k, v in r.json().items() if k in limits} == limits
    return pid


def test_login_scoped_to_a_project_by_name_or_id_and_to_the_home_project(server):
    pid = make_project(server, "scoped", ("test:tester",))
    by_name = login(server, "tester", "testing", {"name": "scoped",
                                                  "domain": {"name": "Default"}})
    assert by_name.status_code == 201, by_name.text
    doc = by_name.json()["token"]
    assert doc["project"] == {"id": pid, "name": "scoped",
                              "domain": {"id": "default", "name": "Default"}}
    assert {e["type"] for e in doc["catalog"]} >= {"object-store", "image", "identity"}
    store = next(e for e in doc["catalog"] if e["type"] == "object-store")
    assert store["endpoints"][0]["url"].endswith("/v1/AUTH_test")  # its account's storage
    assert login(server, "tester", "testing", {"id": pid}).status_code == 201
    home = login(server, "tester", "testing", {"name": "test", "domain": {"id": "default"}})
    assert home.json()["token"]["project"]["id"] == "test"
    assert login(server, "test:tester", "testing").json()["token"]["project"]["id"] == "test"
    # Not a member, a wrong password, another domain: the same 401, naming nothing.
    for r in (login(server, "tester2", "testing2", {"name": "scoped"}),
              login(server, "test2:tester2", "testing2", {"id": pid}),
              login(server, "tester", "wrong", {"name": "scoped"}),
              login(server, "tester", "testing", {"name": "scoped"}, {"name": "Other"}),
              login(server, "tester", "testing", {"name": "no-such-project"})):
        assert r.status_code == 401
        assert "scoped" not in r.text and pid not in r.text
    assert login(server, "tester", "testing", {"name": ["x"]}).status_code == 400


def test_token_validation_is_for_its_own_user_or_a_cloud_admin(server):
    mine = token(server, "test:tester", "testing")
    theirs = token(server, "test2:tester2", "testing2")
    r = api(server, "GET", "/v3/auth/tokens", mine, headers={"X-Subject-Token": mine})
    assert r.status_code == 200 and r.headers["X-Subject-Token"] == mine
    assert r.json()["token"]["user"]["id"] == "test:tester"
    assert api(server, "HEAD", "/v3/auth/tokens", mine,
               headers={"X-Subject-Token": mine}).status_code == 200
    r = api(server, "GET", "/v3/auth/tokens", mine, headers={"X-Subject-Token": theirs})
    assert r.status_code == 404 and "tester2" not in r.text
    assert api(server, "GET", "/v3/auth/tokens", None,
               headers={"X-Subject-Token": theirs}).status_code == 401
    root = token(server, "admin:root", "rooting")
    r = api(server, "GET", "/v3/auth/tokens", root, headers={"X-Subject-Token": theirs})
    assert r.status_code == 200 and r.json()["token"]["user"]["name"] == "tester2"
    gone = token(server, "test:tester", "testing")
    assert api(server, "DELETE", "/v3/auth/tokens", gone,
               headers={"X-Subject-Token": gone}).status_code == 204
    assert api(server, "GET", "/v1/AUTH_test", gone).status_code == 401


def test_members_see_their_projects_and_users_only_themselves(server):
    pid = make_project(server, "seen", ("test:reader",))
    reader = token(server, "test:reader", "reading")
    other = token(server, "test2:tester2", "testing2")
    names = {p["name"] for p in api(server, "GET", "/v3/projects", reader).json()["projects"]}
    assert {"test", "seen"} <= names and "test2" not in names
    assert "seen" not in api(server, "GET", "/v3/projects", other).text
    assert api(server, "GET", f"/v3/projects/{pid}", reader).json()["project"]["name"] == "seen"
    r = api(server, "GET", f"/v3/projects/{pid}", other)
    assert r.status_code == 404 and "seen" not in r.text
    assert api(server, "GET", "/v3/auth/projects", reader).status_code == 200
    assert api(server, "GET", "/v3/users/test:reader", reader).json()["user"]["name"] == "reader"
    assert api(server, "GET", "/v3/users/reader", reader).status_code == 200
    r = api(server, "GET", "/v3/users/test2:tester2", reader)
    assert r.status_code == 404 and "tester2" not in r.text
    assert api(server, "GET", "/v3/users?name=tester2", reader).json()["users"] == []
    # Only a cloud admin makes projects, adds members and sets limits.
    assert api(server, "POST", "/v3/projects", other,
               json={"project": {"name": "mine"}}).status_code == 403
    assert api(server, "PUT", f"/v3/projects/{pid}/users/test2:tester2/roles/member",
               other).status_code == 403
    assert api(server, "PUT", f"/account/v1.0/projects/{pid}/quotas", reader,
               json={"bytes": 1}).status_code == 403
    assert api(server, "GET", "/v3/projects", None).status_code == 401


def test_passwords_beside_keys(server):
    cli(server, "user", "passwd", "test2:tester2", input="correct horse\n")
    assert login(server, "test2:tester2", "correct horse").status_code == 201
    assert login(server, "test2:tester2", "testing2").status_code == 201  # the key still works
    tok = token(server, "test2:tester2", "testing2")
    r = api(server, "POST", "/v3/users/test2:tester2/password", tok,
            json={"user": {"original_password": "wrong", "password": "battery staple"}})
    assert r.status_code == 401
    r = api(server, "POST", "/v3/users/test2:tester2/password", tok,
            json={"user": {"original_password": "correct horse",
                           "password": "battery staple"}})
    assert r.status_code == 204
    assert login(server, "test2:tester2", "battery staple").status_code == 201
    assert login(server, "test2:tester2", "correct horse").status_code == 401
    # tempauth v1.0 is unchanged: the key.
    r = requests.get(server.auth_url, headers={"X-Auth-User": "test2:tester2",
                                               "X-Auth-Key": "testing2"}, timeout=T)
    assert r.status_code == 200


def test_50_parallel_uploads_against_a_project_quota_that_fits_10(server):
    size = 5000
    pid = make_project(server, "uploads", ("test:tester",), {"bytes": 10 * size})
    tok = token(server, "tester", "testing", {"id": pid})
    base = f"{server.url}/v1/AUTH_test/uploads"
    # Created while acting in the project: charged to it.
    assert requests.put(base, headers={"X-Auth-Token": tok}, timeout=T).status_code == 201

    def upload(i: int) -> int:
        body = bytes([i]) * size
        return requests.put(f"{base}/o{i:02d}", data=body, headers={"X-Auth-Token": tok},
                            timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(upload, range(50)))
    assert set(statuses) <= {201, 413}, statuses
    assert statuses.count(201) == 10
    listed = requests.get(base, headers={"X-Auth-Token": tok}, params={"format": "json"},
                          timeout=T).json()
    assert len(listed) == 10 and sum(o["bytes"] for o in listed) == 10 * size
    quotas = api(server, "GET", "/account/v1.0/quotas", tok).json()
    assert quotas[pid]["bytes"] == {"limit": 10 * size, "usage": 10 * size, "pending": 0}
    assert quotas[pid]["objects"]["usage"] == 10
    # The account's home project was not charged for them.
    home_before = quotas["test"]["bytes"]["usage"]
    gone = f"{base}/o{statuses.index(201):02d}"
    assert requests.delete(gone, headers={"X-Auth-Token": tok}, timeout=T).status_code == 204
    quotas = api(server, "GET", "/account/v1.0/quotas", tok).json()
    # Its version is kept (and charged) until the history is purged.
    assert (quotas[pid]["bytes"]["usage"], quotas[pid]["objects"]["usage"]) == (10 * size, 9)
    r = requests.delete(gone, params={"until": str(time.time() + 1)},
                        headers={"X-Auth-Token": tok}, timeout=T)
    assert r.status_code in (200, 204), r.text
    quotas = api(server, "GET", "/account/v1.0/quotas", tok).json()
    assert quotas[pid]["bytes"]["usage"] == 9 * size
    assert quotas["test"]["bytes"]["usage"] == home_before


def test_a_container_names_its_project_only_among_the_users_own(server):
    pid = make_project(server, "elsewhere", ("test2:tester2",))
    tok = token(server, "test:tester", "testing")
    r = requests.put(f"{server.url}/v1/AUTH_test/elsewhere",
                     headers={"X-Auth-Token": tok, "X-Container-Policy-Project": pid},
                     timeout=T)
    assert r.status_code == 404 and "elsewhere" not in r.text
    mine = make_project(server, "mine-too", ("test:tester",), {"objects": 1})
    r = requests.put(f"{server.url}/v1/AUTH_test/moved", headers={"X-Auth-Token": tok},
                     timeout=T)
    assert r.status_code == 201
    for name in ("a", "b"):
        assert requests.put(f"{server.url}/v1/AUTH_test/moved/{name}", data=b"x",
                            headers={"X-Auth-Token": tok}, timeout=T).status_code == 201
    # Moving two objects into a project that holds one at most: refused, nothing moved.
    r = requests.post(f"{server.url}/v1/AUTH_test/moved",
                      headers={"X-Auth-Token": tok, "X-Container-Policy-Project": mine},
                      timeout=T)
    assert r.status_code == 413
    held = api(server, "GET", f"/account/v1.0/projects/{mine}/quotas", tok).json()
    assert held["objects"]["usage"] == 0
    assert json.loads(cli(server, "project", "show", mine))["members"] == ["test:tester"]


def test_a_user_number_past_the_id_column_names_nobody(server):
    """A user's id is an Integer column (32-bit in PostgreSQL, 64 in SQLite): a larger
    number (or a digit that is not ASCII) is a 404, not an overflow of the catalog's driver
    (a 500 or a 503)."""
    admin = token(server, "test:tester", "testing")
    for ref in (str(1 << 31), str(1 << 63), "9" * 24, "\u00b2"):
        for method, path, kw in (("GET", f"/v3/users/{ref}", {}),
                                 ("GET", f"/v3/users/{ref}/projects", {}),
                                 ("PUT", f"/v3/projects/test/users/{ref}/roles/member", {})):
            r = api(server, method, path, admin, **kw)
            assert r.status_code in (403, 404), (method, path, r.status_code, r.text[:200])
    r = api(server, "GET", f"/v3/users/{(1 << 31) - 1}", admin)
    assert r.status_code == 404


def test_a_member_removed_loses_its_tokens_scoped_to_the_project(server):
    """Its token scoped to the project went on acting (and charging) there for its whole
    lifetime; removed with the membership (the workers' token cache keeps one a few
    seconds: asked until it says so, within a bound)."""
    import time

    pid = make_project(server, "leaving", ("test:reader",))
    scoped = token(server, "test:reader", "reading", {"id": pid})
    home = token(server, "test:reader", "reading")
    root = token(server, "root", "rooting", {"name": "admin", "domain": {"name": "Default"}})
    assert api(server, "GET", "/v3/auth/tokens", root,
               headers={"X-Subject-Token": scoped}).status_code == 200
    r = api(server, "DELETE", f"/v3/projects/{pid}/users/test:reader/roles/member", root)
    assert r.status_code == 204, r.text
    deadline = time.monotonic() + 60
    while api(server, "GET", "/v1/AUTH_test", scoped).status_code != 401:
        assert time.monotonic() < deadline, "the scoped token still acts"
        time.sleep(0.5)
    assert api(server, "GET", "/v3/auth/tokens", root,
               headers={"X-Subject-Token": scoped}).status_code == 404
    # Its other tokens are its own still.
    assert api(server, "GET", "/v3/auth/tokens", root,
               headers={"X-Subject-Token": home}).status_code == 200

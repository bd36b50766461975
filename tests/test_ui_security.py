"""The web UI's session and CSRF design (docs/ui.md) against a real `pithos serve`, by plain
HTTP: a matrix of the UI's endpoints and the API routes a session reaches, called with no
session, another user's session, a forged, missing or another session's CSRF token, a session
used after signing out, and a token beside a cookie; each answers 401/403 (or the other
user's own data), leaks no name, and writes nothing.  Then the cookies' flags, the headers of
every UI response, sign-in only by JSON, the redirect of /, and no token in any URL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import PithosServer

T = 30
STATIC = Path(__file__).resolve().parent.parent / "pithos" / "api" / "ui_static"
SECRET_NAMES = ("box", "secret.txt", "hidden-name")


@dataclass
class Session:
    cookie: str
    csrf: str


def sign_in(server: PithosServer, user: str, key: str, **headers: str) -> requests.Response:
    return requests.post(f"{server.url}/ui/api/session", json={"user": user, "key": key},
                         headers=headers, timeout=T)


def session(server: PithosServer, user: str, key: str) -> Session:
    r = sign_in(server, user, key)
    assert r.status_code == 200, r.text
    return Session(r.cookies["pithos_session"], r.json()["csrf"])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[PithosServer]:
    s = PithosServer(tmp_path_factory.mktemp("ui-security"))
    try:
        owner = session(s, "test:tester", "testing")
        h = {"X-CSRF-Token": owner.csrf}
        c = {"pithos_session": owner.cookie}
        for path, body in (("box", None), ("box/secret.txt", b"secret"),
                           ("box/hidden-name/x", b"x")):
            r = requests.put(f"{s.url}/v1/AUTH_test/{path}", data=body, headers=h, cookies=c,
                             timeout=T)
            assert r.status_code in (201, 202), r.text
        yield s
    finally:
        s.stop()


# (method, path, headers, the owner's status with a good session): what a session reaches.
ENDPOINTS = (
    ("GET", "/ui/api/session", {}, 200),
    ("GET", "/ui/api/shared", {}, 200),
    ("GET", "/v1", {}, 204),
    ("GET", "/v1/AUTH_test?format=json", {}, 200),
    ("HEAD", "/v1/AUTH_test/box", {}, 204),
    ("GET", "/v1/AUTH_test/box?format=json", {}, 200),
    ("GET", "/v1/AUTH_test/box/secret.txt", {}, 200),
    ("GET", "/v1/AUTH_test/box/secret.txt?version=list&format=json", {}, 200),
    ("GET", "/v1/AUTH_test/box/no-such-object", {}, 404),
    ("PUT", "/v1/AUTH_test/box/written.txt", {}, 201),
    ("POST", "/v1/AUTH_test/box/secret.txt", {"X-Object-Sharing": "read=test2"}, 202),
    ("PUT", "/v1/AUTH_test/box/moved.txt", {"X-Move-From": "/box/written.txt"}, 201),
    ("DELETE", "/v1/AUTH_test/box/moved.txt", {}, 204),
    ("GET", "/image/v2/images", {}, 200),
    ("GET", "/account/v1.0/quotas", {}, 200),
)


def call(server: PithosServer, method: str, path: str, headers: dict[str, str],
         cookie: str | None, csrf: str | None, token: str | None = None) -> requests.Response:
    h = dict(headers)
    if csrf is not None:
        h["X-CSRF-Token"] = csrf
    if token is not None:
        h["X-Auth-Token"] = token
    body = b"written" if method == "PUT" and "X-Move-From" not in headers else None
    return requests.request(method, server.url + path, headers=h, data=body, timeout=T,
                            cookies={"pithos_session": cookie} if cookie else None,
                            allow_redirects=False)


def refused(r: requests.Response, statuses: set[int]) -> None:
    assert r.status_code in statuses, (r.request.method, r.request.url, r.status_code, r.text)
    if r.request.method != "HEAD":
        assert r.text.strip(), "a refusal says why"
    for name in SECRET_NAMES:
        assert name not in r.text, f"a refusal leaked {name!r}: {r.text!r}"


def owner_state(server: PithosServer) -> tuple[list[str], str | None]:
    owner = session(server, "test:tester", "testing")
    r = call(server, "GET", "/v1/AUTH_test/box?format=json", {}, owner.cookie, owner.csrf)
    head = call(server, "HEAD", "/v1/AUTH_test/box/secret.txt", {}, owner.cookie, owner.csrf)
    return sorted(e["name"] for e in r.json()), head.headers.get("X-Object-Sharing")


def test_the_matrix_of_callers_refuses_and_leaks_nothing(server: PithosServer) -> None:
    before = owner_state(server)
    owner = session(server, "test:tester", "testing")
    other = session(server, "test2:tester2", "testing2")
    ended = session(server, "test:tester", "testing")
    r = call(server, "DELETE", "/ui/api/session", {}, ended.cookie, ended.csrf)
    assert r.status_code == 204
    token2 = requests.get(server.auth_url, timeout=T, headers={
        "X-Auth-User": "test2:tester2", "X-Auth-Key": "testing2"}).headers["X-Auth-Token"]
    for method, path, headers, _ in ENDPOINTS:
        own_ui = path.startswith("/ui/api/") or path in ("/v1", "/image/v2/images",
                                                         "/account/v1.0/quotas")
        # No session at all.
        refused(call(server, method, path, headers, None, None), {401})
        # No session, a CSRF token alone (a session's, or made up): still nobody.
        refused(call(server, method, path, headers, None, owner.csrf), {401})
        # Another user's session with its own CSRF token: its own things only.
        r = call(server, method, path, headers, other.cookie, other.csrf)
        if own_ui:
            assert r.status_code in (200, 204), (method, path, r.status_code)
            assert "box" not in r.text and "secret" not in r.text
        else:
            refused(r, {403})
        # The owner's session with a forged token, none, or another session's: 403.
        for csrf in ("0" * 64, None, "", other.csrf, owner.csrf.upper()):
            refused(call(server, method, path, headers, owner.cookie, csrf), {403})
        # A session used after signing out (with its right CSRF token): 401.
        refused(call(server, method, path, headers, ended.cookie, ended.csrf), {401})
        # An API token beside a cookie: the token decides alone, as the API always did.
        r = call(server, method, path, headers, owner.cookie, owner.csrf, token=token2)
        if path.startswith("/ui/api/"):
            refused(r, {401})  # the UI's endpoints take no token, and the cookie is ignored
        elif not own_ui:
            refused(r, {403})
    # Nothing the refused calls did changed the owner's things.
    assert owner_state(server) == before
    # And the same calls with the owner's session and its token do what they say.
    for method, path, headers, status in ENDPOINTS:
        r = call(server, method, path, headers, owner.cookie, owner.csrf)
        assert r.status_code == status, (method, path, r.status_code, r.text)
    assert owner_state(server)[1] == "read=test2"
    r = call(server, "DELETE", "/ui/api/session", {}, owner.cookie, owner.csrf)
    assert r.status_code == 204
    refused(call(server, "GET", "/ui/api/session", {}, owner.cookie, owner.csrf), {401})


def test_cookies_headers_and_sign_in(server: PithosServer) -> None:
    r = sign_in(server, "test:tester", "testing")
    assert r.status_code == 200
    cookies = {c.split("=", 1)[0]: c for c in re.split(r", (?=pithos_)",
                                                       r.headers["Set-Cookie"])}
    flags = {k: {f.strip().split("=")[0].lower() for f in v.split(";")[1:]}
             for k, v in cookies.items()}
    assert flags["pithos_session"] >= {"httponly", "samesite", "path", "max-age"}
    assert "samesite=strict" in cookies["pithos_session"].lower()
    assert "path=/;" in cookies["pithos_session"].lower() + ";"
    assert "secure" not in flags["pithos_session"]  # plain HTTP here
    assert "httponly" not in flags["pithos_csrf"]  # the page reads it
    max_age = int(re.search(r"Max-Age=(\d+)", cookies["pithos_session"]).group(1))
    assert 0 < max_age <= 8 * 3600
    # The session's secret is in its HttpOnly cookie only: not in the body, nor any URL.
    secret = r.cookies["pithos_session"]
    assert secret not in r.text and "token" not in r.text.lower()
    # Behind a TLS proxy that says so: Secure.
    tls = sign_in(server, "test:tester", "testing", **{"X-Forwarded-Proto": "https"})
    assert all("secure" in c.lower() for c in re.split(r", (?=pithos_)",
                                                      tls.headers["Set-Cookie"]))
    # Wrong credentials, and sign-in by anything but JSON (a form of another site): refused.
    assert sign_in(server, "test:tester", "nope").status_code == 401
    assert sign_in(server, "nobody:here", "nope").status_code == 401
    assert sign_in(server, "no-colon", "x").status_code == 400
    form = requests.post(f"{server.url}/ui/api/session", timeout=T,
                         data={"user": "test:tester", "key": "testing"})
    assert form.status_code == 415 and "Set-Cookie" not in form.headers
    # Every UI response carries the policy; no page can be framed.
    for path, csrf in (("/ui/", None), ("/ui/index.html", None), ("/ui/app.js", None),
                       ("/ui/ui.css", None), ("/ui/nope.js", None), ("/ui/api/session", None),
                       ("/ui/api/session", "forged")):
        got = requests.get(server.url + path, timeout=T, cookies={"pithos_session": secret},
                           headers={"X-CSRF-Token": csrf} if csrf else {})
        csp = got.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert got.headers["X-Frame-Options"] == "DENY"
        assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(f"{server.url}/ui/..%2Fcatalog.sqlite", timeout=T).status_code == 404
    assert requests.get(f"{server.url}/ui/nope.js", timeout=T).status_code == 404
    # / sends a browser to the UI; a Swift client sees the 404 it always saw.
    browser = requests.get(f"{server.url}/", headers={"Accept": "text/html,*/*"},
                           allow_redirects=False, timeout=T)
    assert browser.status_code == 303 and browser.headers["Location"] == "/ui/"
    plain = requests.get(f"{server.url}/", timeout=T)
    unknown = requests.get(f"{server.url}/no-such-path", timeout=T)
    assert plain.status_code in (404, 412)  # the answer of any path no route takes
    assert (plain.status_code, plain.text) == (unknown.status_code, unknown.text)


def test_the_pages_have_no_inline_script_nor_anything_from_elsewhere() -> None:
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script"
    assert not re.search(r"\son[a-z]+=", html), "no inline event handler"
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), \
            f"{f.name} names another origin"
        # No token in a URL: the API is called with headers, never ?token= nor a path.
        assert "token=" not in text.lower() and "X-Auth-Token" not in text


def test_every_ui_file_ships_as_package_data() -> None:
    """A wheel (a non-editable install) carries what pyproject's package-data names: every
    file the UI serves must match it, and StaticFiles serves each of them."""
    import fnmatch
    import tomllib

    from pithos.api.ui import CONTENT_TYPES, StaticFiles

    with open(STATIC.parent.parent.parent / "pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["pithos.api"]
    files = sorted(f.name for f in STATIC.iterdir())
    assert {"index.html", "app.js", "api.js", "files.js", "machines.js", "ui.css"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(f"ui_static/{name}", g) for g in globs), name
        assert "." + name.rsplit(".", 1)[-1] in CONTENT_TYPES, f"{name}: a type to serve it as"
    assert sorted(StaticFiles().files) == files


def test_secure_cookies_forced_by_the_operator(tmp_path, monkeypatch) -> None:
    """PITHOS_UI_SECURE_COOKIES=1: Secure even over plain HTTP (a TLS proxy that does not
    say so), in the app `pithos serve` builds."""
    from falcon import testing

    from pithos.api.app import create_app
    from pithos.catalog import local_url
    from pithos.cli.serve import build_services
    from pithos.config import Storage

    monkeypatch.setenv("PITHOS_UI_SECURE_COOKIES", "1")
    data = str(tmp_path / "data")
    services = build_services(Storage(data, f"file://{data}/blocks", local_url(data)))
    services.identity.add_user("acct", "me", "secret-key", admin=True)
    client = testing.TestClient(create_app(services))
    r = client.simulate_post("/ui/api/session", json={"user": "acct:me", "key": "secret-key"})
    assert r.status_code == 200
    assert {c.name: c.secure for c in r.cookies.values()} == {"pithos_session": True,
                                                               "pithos_csrf": True}
    assert all(c.http_only == (c.name == "pithos_session") for c in r.cookies.values())


def test_users_html_never_runs_on_the_uis_origin(server: PithosServer) -> None:
    """Another account's HTML or SVG in a public container (or a static web site's page),
    fetched anonymously (a link from elsewhere sends no SameSite=Strict cookie), ran on the
    UI's origin: its script could read the CSRF cookie and drive a signed-in victim's
    session.  Every such answer opens as a page of no origin, nothing sniffed; the fast
    reads' answers (an owner's plain GET of a small object) the same; the UI's own pages
    keep their policy."""
    r = requests.get(server.auth_url, timeout=T,
                     headers={"X-Auth-User": "test2:tester2", "X-Auth-Key": "testing2"})
    url, h = r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}
    assert requests.put(f"{url}/site", timeout=T, headers={
        **h, "X-Container-Read": ".r:*,.rlistings",
        "X-Container-Meta-Web-Index": "index.html"}).status_code in (201, 202)
    page = b"<script>fetch('/v1/AUTH_test', {headers: {'X-CSRF-Token': 'x'}})</script>"
    for name, kind in (("evil.html", "text/html"), ("index.html", "text/html"),
                       ("evil.svg", "image/svg+xml")):
        assert requests.put(f"{url}/site/{name}", data=page, timeout=T,
                            headers={**h, "Content-Type": kind}).status_code == 201
    for got in (requests.get(f"{url}/site/evil.html", timeout=T),
                requests.get(f"{url}/site/evil.svg", timeout=T),
                requests.get(f"{url}/site/", timeout=T),  # the static site's index
                requests.get(f"{url}/site/evil.html", headers=h, timeout=T)):  # fast read
        assert got.status_code == 200 and got.content == page, got.status_code
        assert got.headers["Content-Security-Policy"] == "sandbox"
        assert got.headers["X-Content-Type-Options"] == "nosniff"
    ui = requests.get(f"{server.url}/ui/", timeout=T)
    assert "sandbox" not in ui.headers["Content-Security-Policy"]

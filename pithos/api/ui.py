"""The web UI (docs/ui.md): its static files under /ui/, its session endpoint
/ui/api/session, the redirect of a browser from / and the cookie authentication the token
middleware falls back to.

A session is a token of the identity service (random, stored only as its SHA-256, expiring
like every token) that lives in an HttpOnly cookie instead of a header; signing out revokes
it.  A request authenticated by the cookie must carry the session's CSRF token in the
X-CSRF-Token header, whatever its method: the CSRF token is an HMAC of the session token,
so the server checks it without storing anything, and a page of another site (which cannot
read our cookies nor our responses) cannot produce it.  The browser's script reads it from
a second, readable cookie (double submit, bound to the session).  Tokens never appear in a
URL.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from importlib import resources
from typing import Any

import falcon

from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import json_body
from pithos.api.paths import RESELLER_PREFIX
from pithos.core.errors import InvalidArgument
from pithos.identity import split_user
from pithos.objects import UserInfo

SESSION_COOKIE = "pithos_session"
CSRF_COOKIE = "pithos_csrf"
CSRF_HEADER = "X-CSRF-Token"
# A browser session lasts a working day; the API's tokens last longer (pithos.identity).
SESSION_TTL_S = 8 * 3600.0
STATIC_DIR = "ui_static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Every UI response: scripts and styles from our own files only (no inline script, nothing
# from another origin), never framed, types as declared.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def csrf_token(session: str) -> str:
    """The CSRF token of a session: derived from the session's secret, so only a holder of
    the (HttpOnly) session cookie, through our own page, can know it."""
    return hmac.new(session.encode(), b"pithos-ui-csrf", hashlib.sha256).hexdigest()


def cookie_user(services: Services, req: falcon.Request) -> UserInfo | None:
    """The user of the request's session cookie (None: no cookie); 401 for a session that
    expired or was signed out, 403 for a missing or wrong CSRF token."""
    values = req.get_cookie_values(SESSION_COOKIE)
    if not values:
        return None
    session = values[0]
    # Not from the identity cache: a signed-out session must stop at once on every worker.
    user = services.identity.authenticate(session, cached=False)
    if user is None:
        raise HTTPStatusError(401, "your session has ended: sign in again")
    sent = req.get_header(CSRF_HEADER) or ""
    if not hmac.compare_digest(sent.encode(), csrf_token(session).encode()):
        raise HTTPStatusError(403, "missing or bad CSRF token (reload the page)")
    return user


def _secure(services: Services, req: falcon.Request) -> bool:
    """Whether cookies get the Secure flag: over TLS (ours or a proxy's that says so), or
    always when the operator forces it."""
    forwarded = (req.get_header("X-Forwarded-Proto") or "").lower()
    return services.ui_secure_cookies or req.scheme == "https" or forwarded == "https"


def _set_cookies(services: Services, req: falcon.Request, resp: falcon.Response,
                 session: str, max_age: int) -> None:
    secure = _secure(services, req)
    resp.set_cookie(SESSION_COOKIE, session, max_age=max_age, path="/", secure=secure,
                    http_only=True, same_site="Strict")
    # Readable by our script (it sends it back as X-CSRF-Token); useless without the other.
    resp.set_cookie(CSRF_COOKIE, csrf_token(session) if session else "", max_age=max_age,
                    path="/", secure=secure, http_only=False, same_site="Strict")


def _secure_headers(resp: falcon.Response) -> None:
    for k, v in SECURITY_HEADERS.items():
        resp.set_header(k, v)
    resp.set_header("Cache-Control", "no-store")


class SecurityHeaders:
    """Every response under /ui/ carries SECURITY_HEADERS, refusals too (a 401 or 403 the
    token middleware answers before any UI resource runs)."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        if req.path.startswith("/ui/"):
            _secure_headers(resp)


def _whoami(services: Services, user: UserInfo) -> dict[str, Any]:
    return {"account": user.account, "user": user.name, "admin": user.admin,
            "storage": f"/v1/{RESELLER_PREFIX}{user.account}",
            "compute": any(kind == "compute" for kind, _, _ in services.endpoints)}


class Session:
    """/ui/api/session: POST signs in (JSON {"user": "account:user", "key": ...}), GET says
    who is signed in, DELETE signs out."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _secure_headers(resp)
        # Only JSON: a form of another site cannot send it without the browser asking us
        # first (and we answer no CORS), so nobody signs a visitor in to their account.
        if (req.content_type or "").split(";")[0].strip().lower() != "application/json":
            raise HTTPStatusError(415, "sign in with a JSON body")
        try:
            body = json_body(req, 65536)
            spec, key = body["user"], body["key"]
            if not isinstance(spec, str) or not isinstance(key, str):
                raise TypeError
            account, user = split_user(spec)
        except (ValueError, KeyError, TypeError, InvalidArgument, RecursionError):
            raise HTTPStatusError(400, "give the user as account:user, and its key") from None
        found = self.services.identity.login(account, user, key, ttl_s=SESSION_TTL_S)
        if found is None:
            raise HTTPStatusError(401, "wrong user or key")
        info, session, expires = found
        _set_cookies(self.services, req, resp, session, int(expires - time.time()))
        resp.media = {**_whoami(self.services, info), "csrf": csrf_token(session)}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _secure_headers(resp)
        if req.context.user is None:
            raise HTTPStatusError(401, "not signed in")
        resp.media = _whoami(self.services, req.context.user)

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        _secure_headers(resp)
        if req.context.user is None:
            raise HTTPStatusError(401, "not signed in")
        self.services.identity.revoke((req.get_cookie_values(SESSION_COOKIE) or [""])[0])
        _set_cookies(self.services, req, resp, "", 0)
        resp.status = falcon.HTTP_204


class Shared:
    """/ui/api/shared: the accounts that share something with the signed-in user, each with
    the containers that hold it (a sharee may not list the owner's account)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _secure_headers(resp)
        if req.context.user is None:
            raise HTTPStatusError(401, "not signed in")
        found = self.services.objects.sharing.shared_with(req.context.user)
        resp.media = {"accounts": [{"name": f"{RESELLER_PREFIX}{owner}",
                                    "containers": found[owner]} for owner in sorted(found)]}


class StaticFiles:
    """/ui/ and /ui/{name}: the UI's files, shipped in the package (pithos/api/ui_static),
    read once; nothing else is served from the disk."""

    def __init__(self) -> None:
        root = resources.files("pithos.api").joinpath(STATIC_DIR)
        self.files: dict[str, tuple[bytes, str]] = {}
        for entry in root.iterdir():
            ext = "." + entry.name.rsplit(".", 1)[-1]
            if entry.is_file() and ext in CONTENT_TYPES:
                self.files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[ext])

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str = "index.html"
               ) -> None:
        found = self.files.get(name)
        if found is None:
            raise HTTPStatusError(404, "no such page")
        _secure_headers(resp)
        resp.data, resp.content_type = found

    on_head = on_get


class Root:
    """/: a browser (Accept: text/html) goes to the UI; any other client gets the 404 it
    always got."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if "text/html" not in (req.get_header("Accept") or ""):
            raise falcon.HTTPRouteNotFound()
        resp.status = falcon.HTTP_303
        resp.set_header("Location", "/ui/")

    on_head = on_get


def add_routes(app: falcon.App[Any, Any], services: Services) -> None:
    app.add_middleware(SecurityHeaders())
    static = StaticFiles()
    app.add_route("/", Root())
    app.add_route("/ui/", static)
    app.add_route("/ui/{name}", static)
    app.add_route("/ui/api/session", Session(services))
    app.add_route("/ui/api/shared", Shared(services))

"""CORS for the Swift API, as a Swift proxy answers it (strict_cors_mode): a container's
X-Container-Meta-Access-Control-Allow-Origin (space-separated origins, or `*`), -Max-Age and
-Expose-Headers decide.

- A preflight (OPTIONS with Origin) of a container or object is 200 with
  Access-Control-Allow-Origin / -Allow-Methods / -Max-Age / -Allow-Headers when the origin is
  allowed and Access-Control-Request-Method is a method we answer; 401 otherwise.  OPTIONS
  without Origin is 200 with Allow.  No token is needed (browsers send none).
- Any other request with Origin, to a container or object whose settings allow that origin,
  gets Access-Control-Allow-Origin and Access-Control-Expose-Headers (Swift's list, the
  response's X-Container-Meta-* / X-Object-Meta-*, and the container's -Expose-Headers).

Only requests that carry Origin pay for reading the container's metadata.
"""

from __future__ import annotations

from typing import Any

import falcon

from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import decode_path, path_info
from pithos.api.paths import account_name

ALLOWED = {1: "GET, HEAD, POST, OPTIONS", 2: "GET, HEAD, PUT, POST, DELETE, OPTIONS",
           3: "GET, HEAD, PUT, POST, DELETE, COPY, OPTIONS"}
EXPOSED = ("cache-control", "content-language", "content-type", "expires", "last-modified",
           "pragma", "etag", "x-timestamp", "x-trans-id", "x-openstack-request-id")


class Settings:
    """A container's CORS metadata."""

    def __init__(self, meta: dict[str, str]) -> None:
        get = {k.lower(): v for k, v in meta.items()}.get
        self.allow_origin = (get("access-control-allow-origin") or "").strip()
        self.max_age = get("access-control-max-age")
        self.expose = (get("access-control-expose-headers") or "").split()

    def allows(self, origin: str) -> bool:
        allowed = self.allow_origin.split()
        return origin in allowed or "*" in allowed


class CORSMiddleware:
    def __init__(self, services: Services) -> None:
        self.services = services

    def _target(self, req: falcon.Request) -> tuple[str, str | None, int] | None:
        """(account, container, depth) of a /v1 request (None: not one)."""
        if not req.path.startswith("/v1/"):
            return None
        try:
            segments = [s for s in decode_path(path_info(req.env)) if s]
        except HTTPStatusError:  # a bad path: the API answers it
            return None
        if not segments:
            return None
        return account_name(segments[0]), segments[1] if len(segments) > 1 else None, \
            min(len(segments), 3)

    def _settings(self, account: str, container: str) -> Settings:
        return Settings(self.services.objects.swift_quotas.meta(account, container))

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method != "OPTIONS":
            return
        target = self._target(req)
        if target is None:
            return
        account, container, depth = target
        req.context.cors_done = True
        resp.complete = True  # no resource: the answer is made here
        resp.status = falcon.HTTP_200
        resp.set_header("Allow", ALLOWED[depth])
        resp.content_type = "text/html; charset=UTF-8"
        resp.text = ""
        origin = req.get_header("Origin")
        if not origin or container is None:
            return
        settings = self._settings(account, container)
        method = req.get_header("Access-Control-Request-Method")
        if not settings.allows(origin) or method not in ALLOWED[depth].split(", "):
            resp.status = falcon.HTTP_401
            return
        if settings.allow_origin == "*":
            resp.set_header("Access-Control-Allow-Origin", "*")
        else:
            resp.set_header("Access-Control-Allow-Origin", origin)
            resp.set_header("Vary", "Origin")
        if settings.max_age is not None:
            resp.set_header("Access-Control-Max-Age", settings.max_age)
        resp.set_header("Access-Control-Allow-Methods", ALLOWED[depth])
        asked = [h.strip() for h in (req.get_header("Access-Control-Request-Headers") or ""
                                     ).split(",") if h.strip()]
        if asked:
            resp.set_header("Access-Control-Allow-Headers", ", ".join(dict.fromkeys(asked)))
            vary = resp.get_header("Vary")
            resp.set_header("Vary", f"{vary}, Access-Control-Request-Headers" if vary
                            else "Access-Control-Request-Headers")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        origin = req.get_header("Origin")
        if not origin or getattr(req.context, "cors_done", False):
            return
        target = self._target(req)
        if target is None or target[1] is None:
            return
        account, container, _ = target
        assert container is not None
        settings = self._settings(account, container)
        if not settings.allows(origin):
            return  # strict mode: nothing for an origin the container does not name
        if resp.get_header("Access-Control-Expose-Headers") is None:
            exposed = dict.fromkeys(EXPOSED)
            for name in resp.headers:
                if name.lower().startswith(("x-container-meta", "x-object-meta")):
                    exposed[name.lower()] = None
            exposed.update(dict.fromkeys(h.lower() for h in settings.expose))
            resp.set_header("Access-Control-Expose-Headers", ", ".join(exposed))
        if resp.get_header("Access-Control-Allow-Origin") is None:
            if settings.allow_origin == "*":
                resp.set_header("Access-Control-Allow-Origin", "*")
            else:
                resp.set_header("Access-Control-Allow-Origin", origin)
                vary = resp.get_header("Vary")
                resp.set_header("Vary", f"{vary}, Origin" if vary else "Origin")

"""The WSGI application."""

from __future__ import annotations

from typing import Any

import falcon
from falcon.stream import BoundedStream

from pithos.api import errors
from pithos.api.auth import AuthV1, Info, KeystoneVersion, TokenMiddleware
from pithos.api.body import timed_body
from pithos.api.context import Services
from pithos.api.cors import CORSMiddleware
from pithos.api.fast_read import FastReads
from pithos.api.images import add_routes as add_image_routes
from pithos.api.keystone import add_routes as add_keystone_routes
from pithos.api.openapi import OpenAPIDocument
from pithos.api.subrequest import Gatekeeper, sysmeta_out
from pithos.api.swift import SwiftSink
from pithos.api.symlink import Symlinks
from pithos.api.tempurl import TempURLMiddleware
from pithos.api.ui import add_routes as add_ui_routes


class PublicLinks:
    """/public/TOKEN: published objects, served without authentication."""

    def __init__(self, sink: SwiftSink) -> None:
        self.sink = sink

    def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        self.sink.objects.public(req, resp, token)
        # Anyone's content, served on the web UI's origin: a browser opens it as a page of
        # no origin, so a published HTML file's script cannot act as the signed-in viewer.
        resp.set_header("Content-Security-Policy", "sandbox")
        resp.set_header("X-Content-Type-Options", "nosniff")

    on_head = on_get


class BodyTimeout:
    """Every request's body (`req.stream`, and `bounded_stream` over it: `Request`) read with
    the client timeout: a body that stops arriving ends in ClientTimeout (408), whoever reads
    it.  (A PUT's body is read by `request_body` straight from the socket, with the same
    timeout.)"""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.stream = timed_body(req.env, self.timeout_s)  # type: ignore[assignment]


class Request(falcon.Request):
    """falcon's, whose `bounded_stream` reads `stream` (which BodyTimeout bounds in time)
    rather than the WSGI input under it: falcon's wrapped the input itself, so a JSON body
    (Keystone's token request, which needs no token) or a bulk delete's list that stopped
    arriving held its connection for ever."""

    __slots__ = ()

    def _get_wrapped_wsgi_input(self) -> BoundedStream:
        try:
            length = self.content_length or 0
        except falcon.HTTPInvalidHeader:
            length = 0  # (as falcon's: an invalid Content-Length is no content)
        return BoundedStream(self.stream, length)


class App(falcon.App):
    """falcon lower-cases every response header name; Swift answers with them title-cased
    (X-Object-Meta-Color, Etag, X-Trans-Id), and clients that compare header names as written
    (Swift's own functional tests among them) rely on that: the case is put back on the way
    out, as Swift's HeaderKeyDict does it.  (Non-ASCII names are left alone: str.title() may
    change their length.)"""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        # Swift's middleware, as WSGI layers in front of the API (Swift's pipeline order:
        # the gatekeeper first, symlinks last); each asks the layers below it.
        self._layers = Gatekeeper(Symlinks(self._api))
        # The plainest read of a small object, answered without the layers and falcon
        # (pithos.api.fast_read); None: everything goes through them.
        self.fast_reads: FastReads | None = None

    def _api(self, env: dict[str, Any], start_response: Any) -> Any:
        def titled(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            out = _out(env, headers)
            if status.startswith("204") and not any(
                    k.lower() == "content-length" for k, _ in out):
                # As Swift's: a 204 says its length (falcon sends none without a body).
                out.append(("Content-Length", "0"))
            return start_response(status, out, exc_info)

        return falcon.App.__call__(self, env, titled)

    def __call__(self, env: dict[str, Any], start_response: Any) -> Any:  # type: ignore[override]
        fast = self.fast_reads
        if fast is not None:
            answer = fast(env, start_response)
            if answer is not None:
                return answer
        return self._layers(env, start_response)


def _out(env: dict[str, Any], headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of an answer as App._api hands falcon's on (the fast reads' too): names
    title-cased, and users' content kept from running on our origin (the web UI's, whose
    session a script there could drive: it reads the CSRF cookie, and its requests carry the
    session's).  An object's HTML or SVG (a public container's, a static web site's page)
    opens as a page of no origin (`sandbox`), and nothing is sniffed into a type that runs.
    Not the UI's own pages (their policy is theirs) nor an answer that sets one already."""
    out = sysmeta_out(env, headers, _title, _titled)
    if not env.get("PATH_INFO", "").startswith("/ui/") and not any(
            k.lower() == "content-security-policy" for k, _ in out):
        out += _CONTENT_GUARD
    return out


_CONTENT_GUARD = [("Content-Security-Policy", "sandbox"), ("X-Content-Type-Options", "nosniff")]


# Names title-cased before, kept per worker (bounded: user metadata makes names many).  Only
# names that are not system metadata come here (sysmeta_out reads them as such).
_TITLED_MAX = 4096
_titled: dict[str, str] = {}


def _title(name: str) -> str:
    found = _titled.get(name)
    if found is None:
        found = name.title() if name.isascii() else name
        if len(_titled) < _TITLED_MAX:
            _titled[name] = found
    return found


def create_app(services: Services, fast_reads: bool = True) -> falcon.App:
    """The API.  `fast_reads`: the plainest reads of small objects are answered without
    falcon (pithos.api.fast_read), as the full stack would answer them."""
    # The temporary URL's after the token's: a signed URL acts as its key's account.
    middleware: list[Any] = [TokenMiddleware(services), TempURLMiddleware(services),
                             CORSMiddleware(services)]
    if services.client_timeout_s is not None:
        middleware.insert(0, BodyTimeout(services.client_timeout_s))
    app = App(middleware=middleware, cors_enable=False, request_type=Request)
    app.req_options.keep_blank_qs_values = True
    app.req_options.auto_parse_qs_csv = False
    app.req_options.strip_url_path_trailing_slash = False
    app.resp_options.default_media_type = "application/json"
    errors.install(app)
    app.add_route("/info", Info(services))
    app.add_route("/openapi.json", OpenAPIDocument())
    app.add_route("/auth/v1.0", AuthV1(services))
    app.add_route("/auth/v1", AuthV1(services))
    app.add_route("/v3", KeystoneVersion(services))
    add_keystone_routes(app, services)  # Keystone v3 with projects; Astakos' quotas
    sink = SwiftSink(services)
    app.add_route("/public/{token}", PublicLinks(sink))
    add_image_routes(app, services)  # the Image API v2 subset (Glance), under /image
    add_ui_routes(app, services)  # the web UI: /ui/, its session, / for a browser
    app.add_sink(sink, r"/v1")
    if fast_reads:
        app.fast_reads = FastReads(services, _out)
    return app

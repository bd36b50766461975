"""The one table from our errors to HTTP statuses."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any
from urllib.parse import quote

import falcon

from pithos.core import errors as e

log = logging.getLogger("pithos.api")

# Most specific first: the first class an error is an instance of decides.
STATUS: list[tuple[type[e.PithosError], int]] = [
    (e.ChecksumMismatch, 422),
    (e.TooLarge, 413),
    (e.ClientTimeout, 408),
    (e.IncompleteBody, 499),
    (e.QuotaExceeded, 413),
    (e.PreconditionFailed, 412),
    (e.VersionConflict, 409),
    (e.Conflict, 409),
    (e.NotFound, 404),
    (e.Gone, 410),
    (e.Forbidden, 403),
    (e.Unauthenticated, 401),
    (e.InvalidArgument, 400),
    (e.NoSpace, 507),
    (e.IntegrityError, 500),
    (e.BackendError, 503),
]

REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required",
    412: "Precondition Failed", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Requested Range Not "
    "Satisfiable", 422: "Unprocessable Entity", 499: "Client Disconnect",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    507: "Insufficient Storage",
}


class HTTPStatusError(Exception):
    """An HTTP answer decided by the API layer itself (auth, preconditions, names)."""

    def __init__(self, status: int, message: str = "",
                 headers: dict[str, str] | None = None, html: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        # The message sent as text/html, where Swift's proxy sends it so (swob's default
        # type for a body given without one); text/plain otherwise.
        self.html = html


def status_of(exc: e.PithosError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


# Paths whose errors are JSON: OpenStack's clients (openstacksdk) show a reason only from a
# JSON body ({"<title>": {"message": ...}}), and print a bare "Bad Request" for text.
JSON_ERROR_PREFIXES: tuple[str, ...] = ("/image/",)


# Swift's explanations (swob.RESPONSE_REASONS) for an error that has no message of its own: its
# body is then `<html><h1>TITLE</h1><p>EXPLANATION</p></html>`, as text/html.
EXPLANATIONS = {
    400: "The server could not comply with the request since it is either malformed or "
         "otherwise incorrect.",
    401: "This server could not verify that you are authorized to access the document you "
         "requested.",
    403: "Access was denied to this resource.",
    404: "The resource could not be found.",
    405: "The method is not allowed for this resource.",
    408: "The server has waited too long for the request to be sent by the client.",
    409: "There was a conflict when trying to complete your request.",
    411: "Content-Length header required.",
    412: "A precondition for this request was not met.",
    413: "The body of your request was too large for this server.",
    416: "The Range requested is not available.",
    422: "Unable to process the contained instructions",
    499: "The client was disconnected during request.",
    500: "The server has either erred or is incapable of performing the requested operation.",
    501: "The server is either unable or unwilling to support the request.",
    503: "The server is currently unavailable. Please try again at a later time.",
}


def www_authenticate(req: falcon.Request) -> str:
    """The challenge of a 401, as Swift's tempauth words it: the realm is the account segment
    of a /v1 path (quoted as the client would send it), else "unknown"."""
    parts = req.path.split("/", 3)
    realm = parts[2] if len(parts) > 2 and parts[1] == "v1" and parts[2] else "unknown"
    return f'Swift realm="{quote(realm)}"'


def _answer(resp: falcon.Response, status: int, message: str,
            headers: dict[str, str] | None = None, req: falcon.Request | None = None,
            html: bool = False) -> None:
    resp.status = falcon.code_to_http_status(status) if status != 499 else "499 Client Disconnect"
    for k, v in (headers or {}).items():
        resp.set_header(k, v)
    if req is not None and req.path.startswith(JSON_ERROR_PREFIXES):
        title = REASONS.get(status, "Error")
        resp.content_type = "application/json"
        resp.text = json.dumps({title.lower().replace(" ", "_"): {
            "code": status, "title": title, "message": message or title}})
        return
    if status == 401 and req is not None and "www-authenticate" not in resp.headers:
        resp.set_header("WWW-Authenticate", www_authenticate(req))
    # As Swift's: the message as it is (text/plain), or Swift's HTML page for the status.
    if message:
        resp.content_type = "text/html; charset=UTF-8" if html else "text/plain; charset=utf-8"
        resp.text = message
    elif status in EXPLANATIONS:
        resp.content_type = "text/html; charset=UTF-8"
        resp.text = (f"<html><h1>{REASONS.get(status, 'Error')}</h1>"
                     f"<p>{EXPLANATIONS[status]}</p></html>")
    else:
        resp.content_type = "text/plain; charset=utf-8"
        resp.text = ""


def pithos_error(req: falcon.Request, resp: falcon.Response, exc: e.PithosError,
                 params: Any) -> None:
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s: %s", req.method, req.path, exc)
    _answer(resp, status, str(exc), req=req)


def http_status_error(req: falcon.Request, resp: falcon.Response, exc: HTTPStatusError,
                      params: Any) -> None:
    _answer(resp, exc.status, exc.message, exc.headers, req=req, html=exc.html)


def unexpected_error(req: falcon.Request, resp: falcon.Response, exc: Exception,
                     params: Any) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("%s %s failed", req.method, req.path)
    _answer(resp, 500, "internal error")


# First path segments of the APIs that are not Swift's: an unknown path under them is their
# 404; any other unknown path is Swift's "Bad URL" (no controller for it: 412).
NOT_SWIFT = frozenset({"image", "compute", "ui", "v3", "public"})


def no_route(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    # (A target that is not a path, OPTIONS * or http://host, has no first segment: 412.)
    first = req.path.split("/", 2)[1] if req.path.startswith("/") else ""
    if first in NOT_SWIFT or req.path.startswith("//"):
        # (A path that begins with an empty segment, //v1/AUTH_test: Swift's tempauth cannot
        # split it and answers 404, before its proxy would say "Bad URL".)
        _answer(resp, 404, "", req=req)
        return
    txid = "tx" + secrets.token_hex(12)
    resp.set_header("X-Trans-Id", txid)
    resp.set_header("X-Openstack-Request-Id", txid)
    _answer(resp, 412, "Bad URL", req=req, html=True)


def install(app: falcon.App) -> None:
    app.add_error_handler(Exception, unexpected_error)
    app.add_error_handler(falcon.HTTPRouteNotFound, no_route)
    app.add_error_handler(e.PithosError, pithos_error)
    app.add_error_handler(HTTPStatusError, http_status_error)

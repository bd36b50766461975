"""The one table from our errors to HTTP statuses."""

from __future__ import annotations

import json
import logging
from typing import Any

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
    500: "Internal Server Error", 503: "Service Unavailable", 507: "Insufficient Storage",
}


class HTTPStatusError(Exception):
    """An HTTP answer decided by the API layer itself (auth, preconditions, names)."""

    def __init__(self, status: int, message: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def status_of(exc: e.PithosError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


# Paths whose errors are JSON: OpenStack's clients (openstacksdk) show a reason only from a
# JSON body ({"<title>": {"message": ...}}), and print a bare "Bad Request" for text.
JSON_ERROR_PREFIXES: tuple[str, ...] = ("/image/",)


def _answer(resp: falcon.Response, status: int, message: str,
            headers: dict[str, str] | None = None, req: falcon.Request | None = None) -> None:
    resp.status = falcon.code_to_http_status(status) if status != 499 else "499 Client Disconnect"
    for k, v in (headers or {}).items():
        resp.set_header(k, v)
    if req is not None and req.path.startswith(JSON_ERROR_PREFIXES):
        title = REASONS.get(status, "Error")
        resp.content_type = "application/json"
        resp.text = json.dumps({title.lower().replace(" ", "_"): {
            "code": status, "title": title, "message": message or title}})
        return
    resp.content_type = "text/plain; charset=utf-8"
    text = message or REASONS.get(status, "")
    resp.text = text + ("\n" if text and not text.endswith("\n") else "")


def pithos_error(req: falcon.Request, resp: falcon.Response, exc: e.PithosError,
                 params: Any) -> None:
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s: %s", req.method, req.path, exc)
    _answer(resp, status, str(exc), req=req)


def http_status_error(req: falcon.Request, resp: falcon.Response, exc: HTTPStatusError,
                      params: Any) -> None:
    _answer(resp, exc.status, exc.message, exc.headers, req=req)


def unexpected_error(req: falcon.Request, resp: falcon.Response, exc: Exception,
                     params: Any) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("%s %s failed", req.method, req.path)
    _answer(resp, 500, "internal error")


def install(app: falcon.App) -> None:
    app.add_error_handler(Exception, unexpected_error)
    app.add_error_handler(e.PithosError, pithos_error)
    app.add_error_handler(HTTPStatusError, http_status_error)

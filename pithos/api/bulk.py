"""Swift's bulk delete (`DELETE` or `POST /v1/<account>?bulk-delete`, as the `bulk` middleware
of a Swift proxy): the body lists URL-quoted `/container/object` or `/container` paths, one a
line.  Each is deleted as its own request would be, with the caller's rights; the answer is 200
with a summary (plain text, or JSON when the client accepts it), failures listed inside.
rclone deletes the segments of its large objects this way, and swiftclient many objects."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import falcon

from pithos.api.context import Services
from pithos.api.errors import REASONS, HTTPStatusError
from pithos.api.http import check_names
from pithos.core.errors import Conflict
from pithos.objects.acl import Action

if TYPE_CHECKING:
    from pithos.api.swift import Authz

MAX_DELETES_PER_REQUEST = 10000
MAX_FAILED_DELETES = 1000


def info() -> dict[str, int]:
    """The `bulk_delete` section of /info."""
    return {"max_deletes_per_request": MAX_DELETES_PER_REQUEST,
            "max_failed_deletes": MAX_FAILED_DELETES}


def _paths(req: falcon.Request, services: Services) -> list[str]:
    limits = services.limits
    # A quoted line is at most three bytes per byte of its name, plus slashes.
    max_line = 3 * (limits.max_container_name_length + limits.max_object_name_length) + 8
    body = req.bounded_stream.read(MAX_DELETES_PER_REQUEST * (max_line + 1) + 1)
    lines = [line.strip() for line in body.split(b"\n")]
    paths = [line for line in lines if line]
    if len(paths) > MAX_DELETES_PER_REQUEST:
        raise HTTPStatusError(413, f"Maximum Bulk Deletes: {MAX_DELETES_PER_REQUEST} per "
                                   "request")
    if any(len(p) > max_line for p in paths):
        raise HTTPStatusError(400, "Invalid File Name")
    try:
        return [unquote(p.decode("ascii", "strict"), errors="strict") for p in paths]
    except UnicodeError:
        raise HTTPStatusError(400, "Invalid UTF8 in a path") from None


def bulk_delete(services: Services, authz: Authz, req: falcon.Request,
                resp: falcon.Response, account: str) -> None:
    user = req.context.user
    if user is None:
        raise HTTPStatusError(401, "authentication required")
    catalog = services.catalog
    modified_by = f"{user.account}:{user.name}"
    deleted = not_found = 0
    errors: list[list[str]] = []
    for path in _paths(req, services):
        container, _, obj = path.lstrip("/").partition("/")
        try:
            check_names(services.limits, account, container, obj or None)
            if obj:
                _, c = authz.container(user, account, container, Action.OBJECT_WRITE)
                if catalog.delete_object(c.id, obj, modified_by):
                    deleted += 1
                else:
                    not_found += 1
            else:
                _, c = authz.container(user, account, container, Action.CONTAINER_WRITE)
                try:
                    catalog.delete_container(c.id)
                except Conflict:
                    raise HTTPStatusError(409) from None
                deleted += 1
        except HTTPStatusError as exc:
            if exc.status == 404:
                not_found += 1
            else:
                errors.append([quote(path), f"{exc.status} {REASONS.get(exc.status, '')}"])
                if len(errors) >= MAX_FAILED_DELETES:
                    break
    send_result(req, resp, deleted, not_found, errors)


def send_result(req: falcon.Request, resp: falcon.Response, deleted: int, not_found: int,
                errors: list[list[str]]) -> None:
    result = {"Number Deleted": deleted, "Number Not Found": not_found,
              "Response Status": "400 Bad Request" if errors else "200 OK",
              "Response Body": "", "Errors": errors}
    resp.status = falcon.HTTP_200
    if "json" in (req.get_header("Accept") or ""):
        resp.content_type = "application/json; charset=utf-8"
        resp.text = json.dumps(result)
    else:
        resp.content_type = "text/plain; charset=utf-8"
        lines = [f"{k}: {v}" for k, v in result.items() if k != "Errors"]
        lines.append("Errors:")
        lines.extend(f"{name}, {status}" for name, status in errors)
        resp.text = "\n".join(lines) + "\n"

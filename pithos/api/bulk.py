"""Swift's bulk delete (`DELETE` or `POST /v1/<account>?bulk-delete`, as the `bulk` middleware
of a Swift proxy): the body lists URL-quoted `/container/object` or `/container` paths, one a
line.  Each is deleted as its own request would be, with the caller's rights
(pithos.objects.bulk); the answer is 200 with a summary (plain text, or JSON when the client
accepts it), failures listed inside.  rclone deletes the segments of its large objects this
way, and swiftclient many objects.  A static large object's delete answers the same way."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

import falcon

from pithos.api.context import Services
from pithos.api.errors import REASONS, HTTPStatusError, status_of
from pithos.objects.bulk import MAX_DELETES_PER_REQUEST, DeleteResult


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


def bulk_delete(services: Services, req: falcon.Request, resp: falcon.Response,
                account: str) -> None:
    user = req.context.user
    if user is None:  # before the body is read
        raise HTTPStatusError(401, "authentication required")
    result = services.objects.bulk.delete_paths(user, account, _paths(req, services))
    send_result(req, resp, result)


def send_result(req: falcon.Request, resp: falcon.Response, result: DeleteResult) -> None:
    errors = [[quote(path), f"{status_of(exc)} {REASONS.get(status_of(exc), '')}"]
              for path, exc in result.errors]
    send_report(req, resp, {"Number Deleted": result.deleted,
                            "Number Not Found": result.not_found,
                            "Response Status": "400 Bad Request" if errors else "200 OK",
                            "Response Body": "", "Errors": errors}, "delete")


def send_report(req: falcon.Request, resp: falcon.Response, summary: dict[str, Any],
                root_tag: str) -> None:
    """A bulk operation's report, as Swift's bulk middleware writes it: always 200 (the
    outcome is in "Response Status"), in the form `report` gives it."""
    resp.status = falcon.HTTP_200
    resp.content_type, resp.text = report(req, summary, root_tag)


def report(req: falcon.Request, summary: dict[str, Any], root_tag: str) -> tuple[str, str]:
    """(content type, body) of a report of Swift's bulk and SLO middleware: JSON when the
    client accepts it, XML (under `root_tag`: "delete", "extract", "upload") when it accepts
    that, else "Key: value" lines and then one "name, reason" line per entry of
    summary["Errors"]."""
    accept = (req.get_header("Accept") or "").lower()
    if "json" in accept:
        return "application/json; charset=utf-8", json.dumps(summary)
    if "xml" in accept:
        out = [f"<{root_tag}>\n"]
        for key in sorted(k for k in summary if k != "Errors"):
            tag = key.replace(" ", "_").lower()
            out.append(f"<{tag}>{escape(str(summary[key]))}</{tag}>\n")
        out.append("<errors>\n")
        out.extend(f"<object><name>{escape(name)}</name><status>{escape(why)}</status>"
                   "</object>\n" for name, why in summary["Errors"])
        out.append(f"</errors>\n</{root_tag}>\n")
        kind = "text/xml" if "text/xml" in accept else "application/xml"
        return f"{kind}; charset=utf-8", "".join(out)
    lines = [f"{k}: {v}" for k, v in summary.items() if k != "Errors"]
    lines.append("Errors:")
    lines.extend(f"{name}, {why}" for name, why in summary["Errors"])
    return "text/plain; charset=utf-8", "\n".join(lines) + "\n"

"""Account and container listings in Swift's three formats (plain, json, xml)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

import falcon

from pithos.api.errors import HTTPStatusError
from pithos.api.http import iso_date, utf8_header
from pithos.objects import ContainerSummary, ListingEntry, slo
from pithos.objects.changes import Feed
from pithos.objects.service import ContainerSubdir

_TRUE = {"true", "1", "yes", "on", "t", "y"}


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def listing_format(req: falcon.Request) -> str:
    fmt = (req.get_param("format") or "").lower()
    if fmt in ("json", "xml", "plain"):
        return fmt
    if fmt:
        raise HTTPStatusError(400, f"unknown format {fmt!r}")
    accept = (req.get_header("Accept") or "").lower()
    if "application/json" in accept:
        return "json"
    if "application/xml" in accept or "text/xml" in accept:
        return "xml"
    return "plain"


def listing_params(req: falcon.Request, max_limit: int) -> dict[str, object]:
    limit_text = req.get_param("limit")
    limit = max_limit
    # As Swift's: a limit that is not a number of digits is no limit ("5000.0", "-1").
    if limit_text is not None and limit_text.isascii() and limit_text.isdigit():
        limit = int(limit_text)
        if limit > max_limit:
            raise HTTPStatusError(412, f"Maximum limit is {max_limit}")
    params: dict[str, object] = {
        "limit": limit,
        "marker": req.get_param("marker") or "",
        "end_marker": req.get_param("end_marker") or "",
        "prefix": req.get_param("prefix") or "",
        "reverse": truthy(req.get_param("reverse")),
    }
    return params


CONTENT_TYPES = {"json": "application/json; charset=utf-8",
                 "xml": "application/xml; charset=utf-8",
                 "plain": "text/plain; charset=utf-8"}


def send_empty(resp: falcon.Response, fmt: str) -> None:
    """A 204 typed as the listing would be (as Swift's)."""
    resp.content_type = CONTENT_TYPES[fmt]
    resp.status = falcon.HTTP_204


def _send(resp: falcon.Response, fmt: str, body: str, empty: bool) -> None:
    # An empty plain listing is a 204, still typed as the listing would be (as Swift's).
    if fmt == "plain" and empty:
        send_empty(resp, fmt)
        return
    resp.content_type = CONTENT_TYPES[fmt]
    resp.status = falcon.HTTP_200
    resp.text = body


def send_containers(resp: falcon.Response, fmt: str, account: str,
                    rows: Sequence[ContainerSummary]) -> None:
    if fmt == "json":
        body = json.dumps([{"subdir": r.name} if isinstance(r, ContainerSubdir) else
                           {"name": r.name, "count": r.objects, "bytes": r.bytes,
                            "last_modified": iso_date(r.created),
                            "storage_policy": "default"} for r in rows])
    elif fmt == "xml":
        items = "".join(
            f"<subdir name={quoteattr(r.name)}><name>{escape(r.name)}</name></subdir>"
            if isinstance(r, ContainerSubdir) else
            f"<container><name>{escape(r.name)}</name><count>{r.objects}</count>"
            f"<bytes>{r.bytes}</bytes><last_modified>{iso_date(r.created)}</last_modified>"
            "<storage_policy>default</storage_policy></container>"
            for r in rows)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<account name={quoteattr(account)}>'
                f"{items}</account>")
    else:
        body = "".join(f"{r.name}\n" for r in rows)
    _send(resp, fmt, body, not rows)


def _object(e: ListingEntry) -> dict[str, object]:
    """An object's line of a listing, as Swift's: an SLO's hash is its manifest's MD5 and
    its own ETag (quoted) is slo_etag; a content type is the client's UTF-8."""
    item: dict[str, object] = {
        "name": e.name, "hash": e.etag, "bytes": e.size,
        "content_type": utf8_header(e.content_type), "last_modified": iso_date(e.created)}
    if e.slo_manifest is not None:
        item["hash"] = slo.manifest_etag(e.slo_manifest)
        item["slo_etag"] = f'"{e.etag}"'
    return item


object_item = _object  # (a JSON listing's line, for the listings made elsewhere)


def send_objects(resp: falcon.Response, fmt: str, container: str,
                 entries: Sequence[ListingEntry]) -> None:
    if fmt == "json":
        body = json.dumps([{"subdir": e.name} if e.subdir else _object(e) for e in entries])
    elif fmt == "xml":
        items = "".join(
            f"<subdir name={quoteattr(e.name)}><name>{escape(e.name)}</name></subdir>"
            if e.subdir else
            "<object>" + "".join(f"<{k}>{escape(str(v))}</{k}>"
                                 for k, v in _object(e).items()) + "</object>"
            for e in entries)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<container name={quoteattr(container)}>'
                f"{items}</container>")
    else:
        body = "".join(f"{e.name}\n" for e in entries)
    _send(resp, fmt, body, not entries)


def send_changes(resp: falcon.Response, feed: Feed) -> None:
    """A page of the change feed (GET ?changes_since=), always JSON."""
    resp.status = falcon.HTTP_200
    resp.content_type = "application/json; charset=utf-8"
    resp.text = json.dumps({
        "cursor": feed.cursor, "more": feed.more,
        "changes": [{"name": c.name, "deleted": c.deleted, "bytes": c.size, "hash": c.etag,
                     "content_type": c.content_type, "last_modified": iso_date(c.created),
                     "version": c.vid} for c in feed.changes]})

"""Swift's object versioning (X-Versions-Enabled) in HTTP: the container flag, the
X-Object-Version-Id header, ?version-id on object requests and ?versions listings.  Which
rows a Swift client sees is pithos.objects.object_versioning's rule; the writes are the
catalog's (pithos/catalog/object_versions.py)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any
from urllib.parse import quote

import falcon

from pithos.api import listing
from pithos.api.errors import HTTPStatusError
from pithos.api.http import iso_date, utf8_header
from pithos.objects import ContainerInfo, ObjectVersion, slo
from pithos.objects import object_versioning as ov
from pithos.objects.quotas import BYTES as QUOTA_BYTES
from pithos.objects.service import ObjectService
from pithos.objects.versioned_writes import MODES as LEGACY_MODES

HEADER = "X-Versions-Enabled"
VERSION_ID = "version-id"
ID_HEADER = "X-Object-Version-Id"
_OUR_ID = re.compile(r"[0-9a-f]{32}")
_SWIFT_ID = re.compile(r"[0-9]{1,10}(\.[0-9]{1,5})?(_[0-9a-f]{1,16})?")
MD5_OF_EMPTY = "d41d8cd98f00b204e9800998ecf8427e"


def info() -> dict[str, Any]:
    return {}


def container_policy(req: falcon.Request, objects: ObjectService,
                     existing: ContainerInfo | None, policy: dict[str, object],
                     meta: dict[str, str | None]) -> None:
    """A container PUT or POST with X-Versions-Enabled: the mode and when it changed."""
    value = req.get_header(HEADER)
    if value is None:
        return
    legacy = any(req.get_header(h) for h in ("X-Versions-Location", "X-History-Location"))
    if legacy or (existing is not None and existing.versioning in LEGACY_MODES):
        raise HTTPStatusError(400, "Cannot enable object versioning on a container that is "
                                   "already using the legacy versioned writes feature.")
    enable = listing.truthy(value)
    current = objects.container_detail(existing).meta if existing is not None else {}
    policy["versioning"] = ov.ENABLED if enable else ov.SUSPENDED
    meta[ov.SPANS_KEY] = ov.toggled(current, enable, time.time())


def container_headers(resp: falcon.Response, objects: ObjectService, c: ContainerInfo
                      ) -> None:
    """X-Versions-Enabled; the bytes used count every version kept (as Swift's)."""
    if c.versioning in ov.MODES:
        resp.set_header(HEADER, "True" if c.versioning == ov.ENABLED else "False")
        resp.set_header("X-Container-Bytes-Used", str(objects.catalog.kept_bytes(c.id)))


def check_quota(objects: ObjectService, req: falcon.Request, container: ContainerInfo) -> None:
    """Swift's container quota (X-Container-Meta-Quota-Bytes) counts every version kept:
    a refusal before the body is read (the commit holds the live bytes to it)."""
    if container.versioning not in ov.MODES or container.quota_bytes is None:
        return
    quota = objects.container_detail(container).meta.get(QUOTA_BYTES, "")
    if quota.isascii() and quota.isdigit() and objects.catalog.kept_bytes(container.id) + (
            req.content_length or 0) > int(quota):
        raise HTTPStatusError(413, "Upload exceeds quota.")


def _spans(objects: ObjectService, container: ContainerInfo) -> list[tuple[float, float | None]]:
    return ov.spans(objects.container_detail(container).meta)


def version_id(req: falcon.Request) -> str | None:
    return req.get_param(VERSION_ID) or None


def _check(container: ContainerInfo, vid: str, allow_null: bool = True) -> None:
    if vid == ov.NULL and allow_null:
        return
    if container.versioning not in ov.MODES:
        raise HTTPStatusError(400, "version-aware operations require that the container "
                                   "is versioned")
    if not (_OUR_ID.fullmatch(vid) or _SWIFT_ID.fullmatch(vid)):
        raise HTTPStatusError(400, "Invalid version parameter")


# -- objects -------------------------------------------------------------------------------------


def chosen(objects: ObjectService, req: falcon.Request, resp: falcon.Response,
           container: ContainerInfo, name: str) -> ObjectVersion | None:
    """GET/HEAD ?version-id=: the version asked for (404 when there is none).  None without
    the parameter, or when it names a delete marker: `resp` is then Swift's 404 for it,
    typed as a marker."""
    vid = version_id(req)
    if vid is None:
        return None
    _check(container, vid)
    if vid == ov.NULL:
        v = objects.find_object(container, name)
        if v is None or (container.versioning in ov.MODES
                         and ov.versioned(v.created, _spans(objects, container))):
            raise HTTPStatusError(404, "The resource could not be found.")
        return v
    v = objects.object_version(container, name, vid) if _OUR_ID.fullmatch(vid) else None
    if v is None:
        marker = [r for r in objects.catalog.version_rows(
            container.id, marker=name, inclusive=True, objects=1)
            if r.name == name and r.vid == vid and r.content_type == ov.DELETE_MARKER]
        if not marker:
            raise HTTPStatusError(404, "The resource could not be found.")
        resp.status = falcon.HTTP_404
        resp.set_header(ID_HEADER, vid)
        resp.content_type = ov.DELETE_MARKER
        resp.text = ""
    return v


def version(objects: ObjectService, req: falcon.Request, container: ContainerInfo,
            name: str) -> ObjectVersion | None:
    """The content version ?version-id names (not 'null': that is the object); None
    without one."""
    vid = version_id(req)
    if vid is None or vid == ov.NULL:
        return None
    _check(container, vid)
    v = objects.object_version(container, name, vid) if _OUR_ID.fullmatch(vid) else None
    if v is None:
        raise HTTPStatusError(404, "The resource could not be found.")
    return v


def read_headers(objects: ObjectService, req: falcon.Request, resp: falcon.Response,
                 container: ContainerInfo, v: ObjectVersion) -> None:
    """X-Object-Version-Id on a GET or HEAD of a versioned container's object (none for the
    null version, as Swift)."""
    if container.versioning not in ov.MODES:
        return
    vid = version_id(req)
    if vid is not None:
        resp.set_header(ID_HEADER, vid)
    elif ov.versioned(v.created, _spans(objects, container)):
        resp.set_header(ID_HEADER, v.vid)
        # Where this version is read by its id (Swift's symlink to it).
        path = req.env.get("PATH_INFO", "")
        with contextlib.suppress(UnicodeError):
            path = path.encode("latin-1").decode("utf-8")
        resp.set_header("Content-Location", f"{quote(path)}?{VERSION_ID}={v.vid}")


def replaced_null(objects: ObjectService, container: ContainerInfo, name: str) -> str | None:
    """Before a write while versioning is suspended: the current version if it is Swift's
    null version, which the write replaces for good (its row then goes)."""
    if container.versioning != ov.SUSPENDED:
        return None
    current = objects.find_object(container, name)
    if current is None or ov.versioned(current.created, _spans(objects, container)):
        return None
    return current.vid


def written(resp: falcon.Response, container: ContainerInfo, objects: ObjectService,
            name: str, replaced: str | None = None) -> None:
    """After a PUT, copy or COPY: the new version's id, if versioning is on; the null
    version it replaced (`replaced_null`) dropped."""
    vid = resp.get_header("X-Object-Version")
    if container.versioning == ov.ENABLED and vid:
        resp.set_header(ID_HEADER, vid)
    if replaced is not None and vid and vid != replaced:
        objects.catalog.remove_version(container.id, name, replaced)


def copy_source(req: falcon.Request, container: ContainerInfo, name: str,
                objects: ObjectService) -> None:
    """COPY ?version-id=: the copy is of that version (a restore).  Handed to the copy as
    Pithos's X-Source-Version (falcon reads headers from the environment)."""
    vid = version_id(req)
    if vid is None:
        return
    v = chosen(objects, req, falcon.Response(), container, name)
    if v is None:
        raise HTTPStatusError(404, "The resource could not be found.")
    req.env["HTTP_X_SOURCE_VERSION"] = v.vid


def put(objects: ObjectService, req: falcon.Request, resp: falcon.Response,
        container: ContainerInfo, name: str) -> bool:
    """PUT ?version-id=: that version becomes the latest again (a zero-byte request).
    False without the parameter."""
    vid = version_id(req)
    if vid is None:
        return False
    _check(container, vid, allow_null=False)
    if req.content_length is None and "chunked" not in (
            req.get_header("Transfer-Encoding") or "").lower():
        raise HTTPStatusError(411, "Length Required")
    if req.content_length or (req.content_length is None and req.stream.read(1)):
        raise HTTPStatusError(400, "PUT version-id requests require a zero byte body")
    if not (_OUR_ID.fullmatch(vid) and objects.catalog.make_current(container.id, name, vid)):
        raise HTTPStatusError(404, "The specified version does not exist")
    resp.status = falcon.HTTP_201
    resp.set_header(ID_HEADER, vid)
    resp.content_type = "text/html; charset=UTF-8"
    resp.text = ""
    return True


def delete(objects: ObjectService, req: falcon.Request, resp: falcon.Response,
           container: ContainerInfo, name: str, modified_by: str | None) -> bool:
    """A DELETE that is Swift's object versioning's (with ?version-id, or in a container
    with versioning on); False: a plain DELETE, for the caller."""
    vid = version_id(req)
    catalog = objects.catalog
    if vid is None:
        null = replaced_null(objects, container, name)
        if null is not None:
            # Suspended: the null version is deleted for good, as Swift's.
            catalog.remove_version(container.id, name, null, modified_by)
            _done(resp, {})
            return True
        if container.versioning != ov.ENABLED:
            return False
        marker = catalog.put_delete_marker(container.id, name, ov.DELETE_MARKER, modified_by)
        headers = {ID_HEADER: marker.vid}
        if not marker.existed:
            raise HTTPStatusError(404, "The resource could not be found.", headers=headers)
        _done(resp, headers)
        return True
    if vid == ov.NULL and container.versioning not in ov.MODES:
        return False
    _check(container, vid)
    if vid == ov.NULL:
        # The object in its container, whichever it is: the null version is dropped (its
        # bytes freed); a versioned one stays among the versions.
        current = objects.get_object(container, name)
        if ov.versioned(current.created, _spans(objects, container)):
            objects.delete_object(container, name, modified_by)
        else:
            catalog.remove_version(container.id, name, current.vid, modified_by)
    elif not (_OUR_ID.fullmatch(vid) and catalog.remove_version(container.id, name, vid,
                                                              modified_by)):
        raise HTTPStatusError(404, "The resource could not be found.")
    _done(resp, {ID_HEADER: vid})
    return True


def _done(resp: falcon.Response, headers: dict[str, str]) -> None:
    resp.status = falcon.HTTP_204
    resp.content_type = "text/html; charset=UTF-8"
    for k, val in headers.items():
        resp.set_header(k, val)


def check_empty(objects: ObjectService, container: ContainerInfo) -> None:
    """A versioned container is deleted only when no version is left in it (409, as
    Swift's, whose versions container is not empty then)."""
    if container.versioning not in ov.MODES:
        return
    if _entries(objects, container, limit=1, prefix="", marker="", version_marker=None,
                reverse=False, delimiter=""):
        raise HTTPStatusError(409, "There was a conflict when trying to complete your "
                                   "request: versions of objects remain in the container.")


def _entries(objects: ObjectService, container: ContainerInfo, *, limit: int, prefix: str,
             marker: str, version_marker: str | None, reverse: bool, delimiter: str
             ) -> list[ov.Shown | str]:
    on = ov.spans(objects.container_detail(container).meta) if (
        container.versioning in ov.MODES) else []

    def fetch(cursor: str, inclusive: bool, count: int) -> Any:
        return objects.catalog.version_rows(container.id, prefix=prefix, marker=cursor,
                                            inclusive=inclusive, reverse=reverse,
                                            objects=count)

    return ov.listing(fetch, on, limit=limit, prefix=prefix, marker=marker,
                      version_marker=version_marker, reverse=reverse, delimiter=delimiter)


# -- listings ----------------------------------------------------------------------------------


def send_current(req: falcon.Request, resp: falcon.Response, objects: ObjectService,
                 container: ContainerInfo, account: str, entries: list[Any]) -> bool:
    """A JSON listing of a versioned container: an object whose latest is a version names
    it (symlink_path ...?version-id=ID, version_symlink), as Swift's symlinks to versions
    show.  False: not such a listing, for the caller."""
    if container.versioning not in ov.MODES or listing.listing_format(req) != "json":
        return False
    on = _spans(objects, container)
    vids = objects.catalog.current_vids(container.id, [
        e.name for e in entries if not e.subdir and ov.versioned(e.created, on)])
    items: list[dict[str, Any]] = []
    for e in entries:
        if e.subdir:
            items.append({"subdir": e.name})
            continue
        item = listing.object_item(e)
        if e.name in vids:
            item["symlink_path"] = quote(f"/v1/{account}/{container.name}/{e.name}") + \
                f"?{VERSION_ID}={vids[e.name]}"
            item["version_symlink"] = True
        items.append(item)
    resp.status = falcon.HTTP_200
    resp.content_type = listing.CONTENT_TYPES["json"]
    resp.text = json.dumps(items)
    return True


def send_listing(req: falcon.Request, resp: falcon.Response, objects: ObjectService,
                 container: ContainerInfo, params: dict[str, Any]) -> None:
    """GET ?versions: every version and delete marker, JSON only (406 otherwise, as Swift)."""
    fmt = (req.get_param("format") or "").lower()
    accept = (req.get_header("Accept") or "*/*").lower()
    if fmt not in ("", "json") or (not fmt and not any(
            t in accept for t in ("application/json", "*/*", "application/*"))):
        raise HTTPStatusError(406, "Not Acceptable")
    marker = str(params["marker"])
    version_marker = req.get_param("version_marker")
    if version_marker is not None and not marker:
        raise HTTPStatusError(400, "version_marker param requires marker")
    delimiter = req.get_param("delimiter") or ""
    if set(delimiter) & set("0123456789."):
        raise HTTPStatusError(400, "invalid delimiter param")
    entries = _entries(objects, container, limit=int(params["limit"]),
                       prefix=str(params["prefix"]), marker=marker,
                       version_marker=version_marker, reverse=bool(params["reverse"]),
                       delimiter=delimiter)
    resp.status = falcon.HTTP_200
    resp.content_type = listing.CONTENT_TYPES["json"]
    resp.text = json.dumps([{"subdir": e} if isinstance(e, str) else _item(e)
                            for e in entries])


def _item(e: ov.Shown) -> dict[str, Any]:
    r = e.row
    marker = r.deleted
    item: dict[str, Any] = {
        "name": r.name, "hash": MD5_OF_EMPTY if marker else r.etag,
        "bytes": 0 if marker else r.size,
        "content_type": ov.DELETE_MARKER if marker else utf8_header(r.content_type),
        "last_modified": iso_date(r.created), "version_id": e.version_id,
        "is_latest": r.current}
    if r.slo_manifest is not None and not marker:
        item["hash"] = slo.manifest_etag(r.slo_manifest)
        item["slo_etag"] = f'"{r.etag}"'
    return item

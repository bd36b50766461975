"""The Image API v2 subset (Glance) under /image: what `openstack image ...` sends.  The
resources only translate; the rules (who sees and changes what, uploads, qcow2 import) are
pithos.objects.images'.

Glance's wire: images are JSON objects whose custom properties sit beside the attributes; a
PATCH is a JSON patch (`application/openstack-images-v2.1-json-patch`) of add/replace/remove
on `/attribute` or `/property`; lists page newest first with `limit`, `marker` and a `next`
link; errors are text with a reason.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import falcon

from pithos.api.body import request_body
from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import json_body
from pithos.api.paths import base_url
from pithos.core.errors import Forbidden, InvalidArgument
from pithos.objects.images import (
    CONTAINER_FORMATS,
    DISK_FORMATS,
    MEMBER_STATUSES,
    STATUSES,
    VISIBILITIES,
    Image,
    ImageMember,
)

# Glance's JSON patch media types, and RFC 6902's.
PATCH_TYPES = ("application/openstack-images-v2.1-json-patch",
               "application/openstack-images-v2.0-json-patch", "application/json-patch+json")
MAX_JSON_BYTES = 1 << 20
DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
# The attributes of Glance's image document that are not properties.
ATTRIBUTES = ("id", "name", "status", "visibility", "protected", "os_hidden", "checksum",
              "os_hash_algo", "os_hash_value", "owner", "size", "virtual_size", "min_ram",
              "min_disk", "disk_format", "container_format", "created_at", "updated_at",
              "tags", "self", "file", "schema")


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def image_doc(image: Image) -> dict[str, Any]:
    doc: dict[str, Any] = dict(image.properties)
    doc.update({
        "id": image.id, "name": image.name or None, "status": image.status,
        "visibility": image.visibility, "protected": image.protected, "os_hidden": False,
        "checksum": image.checksum, "os_hash_algo": None, "os_hash_value": None,
        "owner": image.owner, "size": image.size,
        # Every stored image is raw: its virtual size is its size.
        "virtual_size": image.size, "min_ram": image.min_ram, "min_disk": image.min_disk,
        "disk_format": image.disk_format, "container_format": image.container_format,
        "created_at": _iso(image.created_at), "updated_at": _iso(image.updated_at),
        "tags": [], "self": f"/v2/images/{image.id}", "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image"})
    return doc


def member_doc(m: ImageMember) -> dict[str, Any]:
    return {"image_id": m.image_id, "member_id": m.member, "status": m.status,
            "created_at": _iso(m.created_at), "updated_at": _iso(m.updated_at),
            "schema": "/v2/schemas/member"}


def _json_body(req: falcon.Request) -> Any:
    return json_body(req, MAX_JSON_BYTES)


class Versions:
    """GET /image and /image/: the versions document keystoneauth discovers the API by."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        href = f"{base_url(self.services, req)}/image/v2/"
        resp.media = {"versions": [
            {"id": f"v2.{minor}", "status": "CURRENT" if minor == 9 else "SUPPORTED",
             "links": [{"rel": "self", "href": href}]} for minor in range(9, -1, -1)]}


class _Base:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.images = services.objects.images


class ImageCollection(_Base):
    """GET (list) and POST (create) /image/v2/images."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # (A parameter given twice counts once: the last.)
        q = {k: req.get_param(k) for k in ("limit", "marker", "name", "visibility", "status",
                                           "owner", "member_status")}
        limit = min(_int_param(q["limit"], "limit", DEFAULT_LIMIT), MAX_LIMIT)
        found = self.images.list(
            req.context.user, name=q["name"], visibility=q["visibility"], status=q["status"],
            owner=q["owner"], member_status=q["member_status"] or "accepted", limit=limit,
            marker=q["marker"])
        doc: dict[str, Any] = {"images": [image_doc(i) for i in found],
                               "first": "/v2/images", "schema": "/v2/schemas/images"}
        if found and len(found) == limit:
            rest = {k: v for k, v in q.items() if k != "marker" and v is not None}
            doc["next"] = "/v2/images?" + urlencode({**rest, "marker": found[-1].id})
        resp.media = doc

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = _json_body(req)
        if not isinstance(body, dict):
            raise InvalidArgument("an image is a JSON object")
        body = dict(body)
        tags = body.pop("tags", [])
        if tags:
            raise InvalidArgument("tags are not supported")
        for key in ("min_disk", "min_ram"):
            if body.get(key) is None:
                body.pop(key, None)
        attrs = {k: body.pop(k) for k in ("name", "disk_format", "container_format",
                                          "min_disk", "min_ram", "visibility", "protected")
                 if k in body}
        image_id = body.pop("id", None)
        body.pop("os_hidden", None)
        bad = sorted(set(body) & set(ATTRIBUTES))
        if bad:
            raise Forbidden(f"Attribute '{bad[0]}' is read-only.")
        image = self.images.create(req.context.user, image_id=image_id, properties=body,
                                   **attrs)
        resp.status = falcon.HTTP_201
        resp.set_header("Location", f"{base_url(self.services, req)}/image/v2/images/{image.id}")
        resp.set_header("OpenStack-image-import-methods", "")
        resp.media = image_doc(image)


class ImageItem(_Base):
    """GET, PATCH and DELETE /image/v2/images/{image_id}."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        resp.media = image_doc(self.images.get(req.context.user, image_id))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        kind = (req.content_type or "").split(";")[0].strip().lower()
        if kind not in PATCH_TYPES:
            raise HTTPStatusError(415, f"a PATCH is {PATCH_TYPES[0]}, not {kind or 'nothing'}")
        ops = _json_body(req)
        if not isinstance(ops, list):
            raise InvalidArgument("a JSON patch is a list of operations")
        changes: dict[str, Any] = {}
        for op in ops:
            if not isinstance(op, dict) or op.get("op") not in ("add", "replace", "remove") \
                    or not isinstance(op.get("path"), str):
                raise InvalidArgument("each operation is add, replace or remove of a path")
            path = op["path"]
            if not path.startswith("/") or "/" in path[1:] or len(path) < 2:
                raise InvalidArgument(f"unsupported path {path!r}: /attribute or /property")
            key = path[1:].replace("~1", "/").replace("~0", "~")
            if key == "tags":
                if op["op"] != "remove" and op.get("value") not in ([], None):
                    raise InvalidArgument("tags are not supported")
                continue
            if op["op"] == "remove":
                if key in ATTRIBUTES:
                    raise Forbidden(f"Attribute '{key}' cannot be removed.")
                changes[key] = None
            else:
                if "value" not in op:
                    raise InvalidArgument(f"operation {op['op']} of {path} needs a value")
                changes[key] = op["value"]
        changes.pop("os_hidden", None)
        image = self.images.update(req.context.user, image_id, changes)
        resp.media = image_doc(image)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        self.images.delete(req.context.user, image_id)
        resp.status = falcon.HTTP_204


class ImageFile(_Base):
    """PUT (upload, once) and GET (download) /image/v2/images/{image_id}/file."""

    def on_put(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        body = request_body(req.env, None, self.services.client_timeout_s)
        self.images.upload(req.context.user, image_id, body, req.content_length)
        resp.status = falcon.HTTP_204

    def on_get(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self.images.get(req.context.user, image_id)
        if image.root is None or image.status != "active":
            resp.status = falcon.HTTP_204  # as Glance: an image without data
            return
        resp.stream = self.images.read(req.context.user, image_id)
        resp.content_length = image.size or 0
        resp.content_type = "application/octet-stream"
        if image.checksum:
            resp.set_header("Content-MD5", image.checksum)


class MemberCollection(_Base):
    """GET (list) and POST (add) /image/v2/images/{image_id}/members."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        resp.media = {"members": [member_doc(m) for m in
                                  self.images.members(req.context.user, image_id)],
                      "schema": "/v2/schemas/members"}

    def on_post(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        body = _json_body(req)
        member = body.get("member") if isinstance(body, dict) else None
        if not isinstance(member, str):
            raise InvalidArgument("the body is {\"member\": \"<project id>\"}")
        resp.media = member_doc(self.images.add_member(req.context.user, image_id, member))


class MemberItem(_Base):
    """GET, PUT (accept or reject, by the member) and DELETE (by the owner)
    /image/v2/images/{image_id}/members/{member_id}."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, image_id: str,
               member_id: str) -> None:
        resp.media = member_doc(self.images.member(req.context.user, image_id, member_id))

    def on_put(self, req: falcon.Request, resp: falcon.Response, image_id: str,
               member_id: str) -> None:
        body = _json_body(req)
        status = body.get("status") if isinstance(body, dict) else None
        if not isinstance(status, str):
            raise InvalidArgument("the body is {\"status\": \"accepted\"} (or pending, "
                                  "rejected)")
        resp.media = member_doc(self.images.set_member_status(req.context.user, image_id,
                                                              member_id, status))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, image_id: str,
                  member_id: str) -> None:
        self.images.remove_member(req.context.user, image_id, member_id)
        resp.status = falcon.HTTP_204


class Schemas:
    """GET /image/v2/schemas/{name}: image, images, member, members (clients validate a
    PATCH against the image schema)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if req.context.user is None:
            raise HTTPStatusError(401, "authentication required")
        found = SCHEMAS.get(name)
        if found is None:
            raise HTTPStatusError(404, f"no schema {name!r}: image, images, member, members")
        resp.media = found


def _int_param(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"{name} is a whole number") from None
    if value < 0:
        raise InvalidArgument(f"{name} is not negative")
    return value


def _image_schema() -> dict[str, Any]:
    nullable_str = {"type": ["null", "string"]}
    props: dict[str, Any] = {
        "id": {"type": "string", "readOnly": True,
               "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                          "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
        "name": {"type": ["null", "string"], "maxLength": 255},
        "status": {"type": "string", "readOnly": True, "enum": list(STATUSES)},
        "visibility": {"type": "string", "enum": list(VISIBILITIES)},
        "protected": {"type": "boolean"},
        "os_hidden": {"type": "boolean"},
        "checksum": {**nullable_str, "readOnly": True, "maxLength": 32},
        "os_hash_algo": {**nullable_str, "readOnly": True, "maxLength": 64},
        "os_hash_value": {**nullable_str, "readOnly": True, "maxLength": 128},
        "owner": {**nullable_str, "readOnly": True, "maxLength": 255},
        "size": {"type": ["null", "integer"], "readOnly": True},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True},
        "min_ram": {"type": "integer"},
        "min_disk": {"type": "integer"},
        "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS]},
        "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS]},
        "created_at": {"type": "string", "readOnly": True},
        "updated_at": {"type": "string", "readOnly": True},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
        "self": {"type": "string", "readOnly": True},
        "file": {"type": "string", "readOnly": True},
        "schema": {"type": "string", "readOnly": True},
        "kernel_id": {"type": ["null", "string"]},
        "ramdisk_id": {"type": ["null", "string"]},
        "locations": {"type": "array", "items": {"type": "object"}},
        "direct_url": {"type": "string", "readOnly": True},
    }
    return {"name": "image", "properties": props, "additionalProperties": {"type": "string"},
            "links": [{"rel": "self", "href": "{self}"},
                      {"rel": "enclosure", "href": "{file}"},
                      {"rel": "describedby", "href": "{schema}"}]}


def _member_schema() -> dict[str, Any]:
    return {"name": "member", "properties": {
        "image_id": {"type": "string"}, "member_id": {"type": "string"},
        "status": {"type": "string", "enum": list(MEMBER_STATUSES)},
        "created_at": {"type": "string"}, "updated_at": {"type": "string"},
        "schema": {"type": "string", "readOnly": True}}}


SCHEMAS: dict[str, dict[str, Any]] = {
    "image": _image_schema(),
    "images": {"name": "images", "properties": {
        "images": {"type": "array", "items": _image_schema()},
        "schema": {"type": "string"}, "first": {"type": "string"},
        "next": {"type": "string"}},
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}]},
    "member": _member_schema(),
    "members": {"name": "members", "properties": {
        "members": {"type": "array", "items": _member_schema()},
        "schema": {"type": "string"}}},
}


def add_routes(app: falcon.App, services: Services) -> None:
    versions = Versions(services)
    app.add_route("/image", versions)
    app.add_route("/image/", versions)
    app.add_route("/image/v2/images", ImageCollection(services))
    app.add_route("/image/v2/images/{image_id}", ImageItem(services))
    app.add_route("/image/v2/images/{image_id}/file", ImageFile(services))
    app.add_route("/image/v2/images/{image_id}/members", MemberCollection(services))
    app.add_route("/image/v2/images/{image_id}/members/{member_id}", MemberItem(services))
    app.add_route("/image/v2/schemas/{name}", Schemas())

"""Row helpers shared by the catalog's parts: versions as ObjectVersion records, name windows
of listings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    select,
)

from pithos.catalog import schema as s
from pithos.catalog.records import (
    ObjectVersion,
)

# "Not read yet" for an optional argument whose None is a value.
ASK = object()
# Upper bound of every string that can follow a prefix in a listing (used to skip a subdir).
MAX_CHAR = "\U0010ffff"


def name_window(q: Any, col: Any, prefix: str, marker: str, end_marker: str,
                 reverse: bool) -> Any:
    if prefix:
        q = q.where(and_(col >= prefix, col < prefix + MAX_CHAR))
    if reverse:
        # In reverse, the marker bounds from above and the end marker from below (as Swift).
        if marker:
            q = q.where(col < marker)
        if end_marker:
            q = q.where(col > end_marker)
        return q.order_by(col.desc())
    if marker:
        q = q.where(col > marker)
    if end_marker:
        q = q.where(col < end_marker)
    return q.order_by(col)


def version_columns() -> Any:
    o, v = s.objects, s.versions
    return select(o.c.id.label("object_id"), o.c.container_id, o.c.name, o.c.uuid,
                  v.c.id.label("version_id"), v.c.vid, v.c.root, v.c.size, v.c.etag,
                  v.c.content_type, v.c.created, v.c.modified_by, v.c.delete_at,
                  v.c.dlo_manifest, v.c.slo_manifest, v.c.inline_data)


def version_record(conn: Connection, row: Any) -> ObjectVersion:
    meta: dict[str, dict[str, str]] = {}
    for d, k, val in conn.execute(select(s.version_meta.c.domain, s.version_meta.c.key,
                                         s.version_meta.c.value)
                                  .where(s.version_meta.c.version_id == row.version_id)):
        meta.setdefault(d, {})[k] = val
    return ObjectVersion(row.object_id, row.container_id, row.name, row.uuid, row.version_id,
                         row.vid, row.root, row.size, row.etag, row.content_type, row.created,
                         row.modified_by, row.delete_at, row.dlo_manifest, row.slo_manifest,
                         meta, None if row.inline_data is None else bytes(row.inline_data))


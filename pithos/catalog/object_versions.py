"""Swift's object versioning (X-Versions-Enabled) on the versions table: a Swift version is a
version row (its id the row's `vid`), a delete marker a deletion row whose content type says
so, and the object's current version Swift's "latest".  The rules that decide which rows a
Swift client sees are pithos.objects.object_versioning's; here are the reads and writes."""

from __future__ import annotations

import secrets
import time
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from pithos.catalog import schema as s
from pithos.catalog.db_errors import retried_write
from pithos.catalog.engine import CatalogEngine
from pithos.catalog.rows import MAX_CHAR
from pithos.catalog.space import recovery_write

o, v = s.objects, s.versions


class VersionRow(NamedTuple):
    """One version row of an object, for a versions listing (`Catalog.version_rows`)."""
    name: str
    current: bool  # the object's current version
    vid: str
    size: int
    etag: str
    content_type: str
    created: float
    deleted: bool  # a deletion row (a delete marker when its content type says so)
    slo_manifest: str | None


class DeleteMarker(NamedTuple):
    """What `Catalog.put_delete_marker` did: the marker's version id, and whether a visible
    object was deleted by it."""
    vid: str
    existed: bool


class ObjectVersionsMixin(CatalogEngine):
    """Catalog methods of Swift's object versioning."""

    @retried_write
    def put_delete_marker(self, container_id: int, name: str, content_type: str,
                          modified_by: str | None = None) -> DeleteMarker:
        """Delete an object with a deletion row typed `content_type` (Swift's delete
        marker), written whether or not the object exists (as Swift's)."""
        now = time.time()
        with self._write() as conn:
            # The object's row made (or renewed) as a write would and locked, and only then
            # its current version read: on PostgreSQL a look that found no row while a first
            # PUT of the name was committing would write an uncounted marker over the
            # object that PUT made visible (the container's count one too high).
            object_id, _, size, _ = self._object_for_write(  # type: ignore[attr-defined]
                conn, container_id, name, now)
            existed = size is not None
            if existed:
                self._mark_deleted(conn, container_id, object_id, size, now,  # type: ignore
                                   modified_by)
                marker = conn.execute(select(o.c.current_id).where(o.c.id == object_id)
                                      ).scalar_one()
                conn.execute(update(v).where(v.c.id == marker)
                             .values(content_type=content_type))
            else:
                # No visible object: the marker made its current version; nothing to count.
                marker = conn.execute(insert(v).values(
                    object_id=object_id, vid=secrets.token_hex(16), root=None, size=0,
                    etag="", content_type=content_type, created=now,
                    modified_by=modified_by, deleted=True)).inserted_primary_key[0]
                conn.execute(update(o).where(o.c.id == object_id).values(current_id=marker))
            vid = conn.execute(select(v.c.vid).where(v.c.id == marker)).scalar_one()
            self._changed(conn, [(container_id, object_id)])  # type: ignore[attr-defined]
        return DeleteMarker(str(vid), existed)

    @retried_write
    @recovery_write
    def remove_version(self, container_id: int, name: str, vid: str,
                     modified_by: str | None = None) -> bool:
        """Delete one version row of an object for good (its bytes leave the project's
        charge; its map becomes garbage unless another row names it).  If it is the current
        version the object is deleted first, with a plain deletion row.  False if the object
        has no such version."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(self._lock(
                select(o.c.id, o.c.current_id, v.c.id.label("version_id"), v.c.size,
                       v.c.deleted, v.c.delete_at)
                .select_from(o.join(v, v.c.object_id == o.c.id))
                .where(and_(o.c.container_id == container_id, o.c.name == name,
                            v.c.vid == vid)))).first()
            if row is None:
                return False
            # Its bytes leave the project first: the project's holdings are locked before
            # the container's stat shard, in every write (Catalog._count).
            if row.size:
                self._charge_container(conn, container_id, 0, -int(row.size),  # type: ignore
                                       False)
            if row.current_id == row.version_id:
                if not row.deleted and (row.delete_at is None or row.delete_at > now):
                    self._mark_deleted(conn, container_id, row.id, row.size, now,  # type: ignore
                                       modified_by)
                else:
                    self._drop_current(conn, row.id)
            self._drop_rows(conn, [row.version_id])
            self._changed(conn, [(container_id, row.id)])  # type: ignore[attr-defined]
            return True

    def _drop_current(self, conn: Connection, object_id: int) -> None:
        """The object's current row (a deletion) is about to go: the object is left with a
        plain deletion row as its current one, so that it stays deleted."""
        marker = conn.execute(insert(v).values(
            object_id=object_id, vid=secrets.token_hex(16), root=None, size=0, etag="",
            content_type="", created=time.time(), modified_by=None, deleted=True)
        ).inserted_primary_key[0]
        conn.execute(update(o).where(o.c.id == object_id).values(current_id=marker))

    @staticmethod
    def _drop_rows(conn: Connection, ids: list[int]) -> None:
        conn.execute(delete(s.version_meta).where(s.version_meta.c.version_id.in_(ids)))
        conn.execute(delete(v).where(v.c.id.in_(ids)))

    @retried_write
    def make_current(self, container_id: int, name: str, vid: str) -> bool:
        """Make a kept content version of an object its current one again (Swift's PUT
        ?version-id): no new row, the counters follow.  False if there is no such version."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(self._lock(
                select(o.c.id, o.c.current_id, v.c.id.label("version_id"), v.c.size)
                .select_from(o.join(v, v.c.object_id == o.c.id))
                .where(and_(o.c.container_id == container_id, o.c.name == name,
                            v.c.vid == vid, v.c.deleted.is_(False))))).first()
            if row is None:
                return False
            cur = conn.execute(select(v.c.size, v.c.deleted, v.c.delete_at)
                               .where(v.c.id == row.current_id)).first()
            visible = cur is not None and not cur.deleted and (
                cur.delete_at is None or cur.delete_at > now)
            conn.execute(update(o).where(o.c.id == row.id).values(current_id=row.version_id))
            # Both rows stay kept: only the container's live counters change.
            self._count(conn, container_id, 0 if visible else 1,  # type: ignore[attr-defined]
                        int(row.size) - (int(cur.size) if visible and cur else 0))
            self._changed(conn, [(container_id, row.id)])  # type: ignore[attr-defined]
            return True

    def current_vids(self, container_id: int, names: list[str]) -> dict[str, str]:
        """The version id of each named object's current version (those that have one)."""
        out: dict[str, str] = {}
        with self._read() as conn:
            for i in range(0, len(names), 500):
                out.update((r.name, r.vid) for r in conn.execute(
                    select(o.c.name, v.c.vid).select_from(
                        o.join(v, v.c.id == o.c.current_id))
                    .where(and_(o.c.container_id == container_id,
                                o.c.name.in_(names[i:i + 500])))))
        return out

    def kept_bytes(self, container_id: int) -> int:
        """The bytes every version row of the container's objects holds (Swift's
        X-Container-Bytes-Used of a versioned container counts its versions)."""
        with self._read() as conn:
            return int(conn.execute(
                select(func.coalesce(func.sum(v.c.size), 0))
                .select_from(o.join(v, v.c.object_id == o.c.id))
                .where(o.c.container_id == container_id)).scalar_one())

    def version_rows(self, container_id: int, *, prefix: str = "", marker: str = "",
                     inclusive: bool = False, reverse: bool = False, objects: int = 1000
                     ) -> list[VersionRow]:
        """Every version row of up to `objects` objects of the container after `marker`
        (`inclusive`: from it) in name order (`reverse`: backwards), each object's rows
        newest first."""
        q = select(o.c.id, o.c.name, o.c.current_id).where(o.c.container_id == container_id)
        if prefix:
            q = q.where(and_(o.c.name >= prefix, o.c.name < prefix + MAX_CHAR))
        if marker:
            if reverse:
                q = q.where(o.c.name <= marker if inclusive else o.c.name < marker)
            else:
                q = q.where(o.c.name >= marker if inclusive else o.c.name > marker)
        q = q.order_by(o.c.name.desc() if reverse else o.c.name).limit(objects)
        with self._read() as conn:
            objs: list[Any] = list(conn.execute(q).all())
            if not objs:
                return []
            rows: list[Any] = list(conn.execute(
                select(v.c.object_id, v.c.id, v.c.vid, v.c.size, v.c.etag, v.c.content_type,
                       v.c.created, v.c.deleted, v.c.slo_manifest)
                .where(v.c.object_id.in_([r.id for r in objs]))
                .order_by(v.c.object_id, v.c.id.desc())).all())
        by_object: dict[int, list[Any]] = {}
        for r in rows:
            by_object.setdefault(r.object_id, []).append(r)
        return [VersionRow(ob.name, r.id == ob.current_id, r.vid, int(r.size), r.etag,
                           r.content_type, float(r.created), bool(r.deleted), r.slo_manifest)
                for ob in objs for r in by_object.get(ob.id, [])]

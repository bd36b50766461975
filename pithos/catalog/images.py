"""Images in the catalog: their rows, properties and members (Plankton; the rules of who sees
and changes what are pithos.objects.images')."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from pithos.catalog import schema as s
from pithos.catalog.records import Image, ImageMember
from pithos.core.errors import Conflict, InvalidArgument

# The columns of `images` a caller may set through update_image.
UPDATABLE = frozenset({"name", "disk_format", "container_format", "min_disk", "min_ram",
                       "visibility", "protected"})


class ImagesMixin:
    """Image rows: a part of Catalog (pithos.catalog.catalog)."""

    def create_image(self, account_id: int, image_id: str, *, name: str,
                     disk_format: str | None, container_format: str | None, min_disk: int,
                     min_ram: int, visibility: str, protected: bool,
                     properties: Mapping[str, str], status: str = "queued",
                     container: str | None = None, obj: str | None = None,
                     root: bytes | None = None, size: int | None = None,
                     checksum: str | None = None, made_object: bool = False,
                     sources: Sequence[int] = (), project_id: str | None = None) -> Image:
        """A new image row.  `sources`: ids of the object versions whose map it names; Conflict
        if one is gone by now (as put_version's), or if the id is taken.  The image is
        charged to `project_id` (None: the account's home project) in the same transaction:
        QuotaExceeded past its limit of images."""
        now = time.time()
        with self._write() as conn:  # type: ignore[attr-defined]
            self._require_versions(conn, sources)
            conn.execute(insert(s.images).values(
                id=image_id, account_id=account_id, name=name, container=container,
                object=obj, root=root, size=size, checksum=checksum, disk_format=disk_format,
                container_format=container_format, min_disk=min_disk, min_ram=min_ram,
                visibility=visibility, status=status, protected=protected,
                made_object=made_object, created=now, updated=now, project_id=project_id))
            self._charge_in(conn,  # type: ignore[attr-defined]
                            project_id or self._account_name(conn, account_id), {"images": 1})
            if properties:
                conn.execute(insert(s.image_properties), [
                    {"image_id": image_id, "key": k, "value": v} for k, v in properties.items()])
            found = self._image_in(conn, image_id)
        assert found is not None
        return found

    @staticmethod
    def _require_versions(conn: Connection, sources: Sequence[int]) -> None:
        if not sources:
            return
        wanted = set(sources)
        found = conn.execute(select(func.count()).select_from(s.versions)
                             .where(s.versions.c.id.in_(wanted))).scalar()
        if found != len(wanted):
            raise Conflict("the object this image names was removed meanwhile; retry")

    def image(self, image_id: str) -> Image | None:
        """The image, whoever may see it; None if there is none."""
        with self._read() as conn:  # type: ignore[attr-defined]
            return self._image_in(conn, image_id)

    def _image_in(self, conn: Connection, image_id: str) -> Image | None:
        rows = self._image_rows(conn, _columns().where(s.images.c.id == image_id))
        return rows[0] if rows else None

    @staticmethod
    def _image_rows(conn: Connection, stmt: Any) -> list[Image]:
        rows = conn.execute(stmt).all()
        props: dict[str, dict[str, str]] = {r.id: {} for r in rows}
        ids = list(props)
        for i in range(0, len(ids), 500):
            p = s.image_properties
            for image_id, key, value in conn.execute(
                    select(p.c.image_id, p.c.key, p.c.value)
                    .where(p.c.image_id.in_(ids[i:i + 500]))):
                props[image_id][key] = value
        return [Image(r.id, r.owner, r.name, r.container, r.object,
                      bytes(r.root) if r.root is not None else None, r.size, r.checksum,
                      r.disk_format, r.container_format, r.min_disk, r.min_ram, r.visibility,
                      r.status, bool(r.protected), props[r.id], r.created, r.updated,
                      bool(r.made_object)) for r in rows]

    def list_images(self, account: str, *, visibility: str | None = None,
                    name: str | None = None, status: str | None = None,
                    owner: str | None = None, member_status: str = "accepted",
                    limit: int = 25, marker: Image | None = None) -> list[Image]:
        """The images `account` sees, newest first (then by id), after `marker`: its own,
        public ones, and shared ones it is a member of with `member_status` ("all": any);
        community images only when asked for by `visibility`."""
        i, m = s.images, s.image_members
        member = exists().where(and_(m.c.image_id == i.c.id, m.c.member == account,
                                     *([] if member_status == "all"
                                       else [m.c.status == member_status])))
        mine = s.accounts.c.name == account
        if visibility is None:
            seen = or_(mine, i.c.visibility == "public",
                       and_(i.c.visibility == "shared", member))
        elif visibility == "shared":
            seen = and_(i.c.visibility == "shared", or_(mine, member))
        elif visibility in ("public", "community"):
            seen = i.c.visibility == visibility
        elif visibility == "all":
            seen = or_(mine, i.c.visibility.in_(("public", "community")),
                       and_(i.c.visibility == "shared", member))
        else:
            seen = and_(mine, i.c.visibility == visibility)
        stmt = _columns().where(seen)
        if name is not None:
            stmt = stmt.where(i.c.name == name)
        if status is not None:
            stmt = stmt.where(i.c.status == status)
        if owner is not None:
            stmt = stmt.where(s.accounts.c.name == owner)
        if marker is not None:
            stmt = stmt.where(or_(i.c.created < marker.created_at,
                                  and_(i.c.created == marker.created_at, i.c.id < marker.id)))
        stmt = stmt.order_by(i.c.created.desc(), i.c.id.desc()).limit(limit)
        with self._read() as conn:  # type: ignore[attr-defined]
            return self._image_rows(conn, stmt)

    def update_image(self, image_id: str, fields: Mapping[str, Any],
                     properties: Mapping[str, str | None] | None = None, *,
                     status: str | None = None, expect_status: Collection[str] | None = None,
                     data: Mapping[str, Any] | None = None,
                     sources: Sequence[int] = ()) -> Image | None:
        """Change an image's `fields` (of UPDATABLE), properties (None removes a key), status
        and `data` (columns: container, object, root, size, checksum, made_object), in
        one transaction.  None when the image is gone; Conflict when its status is not in
        `expect_status`, or a version of `sources` is gone (as create_image)."""
        bad = set(fields) - UPDATABLE
        if bad:
            raise InvalidArgument(f"not updatable: {sorted(bad)}")
        values: dict[str, Any] = {**fields, **(data or {}), "updated": time.time()}
        if status is not None:
            values["status"] = status
        i = s.images
        with self._write() as conn:  # type: ignore[attr-defined]
            current = conn.execute(select(i.c.status).where(i.c.id == image_id)
                                   .with_for_update()).scalar()
            if current is None:
                return None
            if expect_status is not None and current not in expect_status:
                raise Conflict(f"the image is {current}")
            self._require_versions(conn, sources)
            conn.execute(update(i).where(i.c.id == image_id).values(values))
            p = s.image_properties
            for key, value in (properties or {}).items():
                conn.execute(delete(p).where(and_(p.c.image_id == image_id, p.c.key == key)))
                if value is not None:
                    conn.execute(insert(p).values(image_id=image_id, key=key, value=value))
            return self._image_in(conn, image_id)

    def delete_image(self, image_id: str) -> Image | None:
        """Remove the image with its properties and members; what it was, None if there was
        none.  Its map is then garbage unless something else names it."""
        with self._write() as conn:  # type: ignore[attr-defined]
            found = self._image_in(conn, image_id)
            if found is not None:
                charged = conn.execute(select(s.images.c.project_id, s.images.c.account_id)
                                       .where(s.images.c.id == image_id)).one()
                self._charge_in(conn, charged.project_id  # type: ignore[attr-defined]
                                or self._account_name(conn, charged.account_id),
                                {"images": -1})
                for table in (s.image_properties, s.image_members):
                    conn.execute(delete(table).where(table.c.image_id == image_id))
                conn.execute(delete(s.images).where(s.images.c.id == image_id))
            return found

    @staticmethod
    def _account_name(conn: Connection, account_id: int) -> str:
        return str(conn.execute(select(s.accounts.c.name)
                                .where(s.accounts.c.id == account_id)).scalar_one())

    def image_roots(self) -> Iterator[bytes]:
        """The map root of every image: roots for the collector, beside version_roots."""
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(select(s.images.c.root).distinct()
                                .where(s.images.c.root.is_not(None))).scalars().all()
        for root in rows:
            yield bytes(root)

    # -- members -------------------------------------------------------------------------------

    def put_image_member(self, image_id: str, member: str, status: str,
                         create: bool) -> ImageMember | None:
        """Add (`create`: Conflict if already one) or update (None if not one) a member."""
        m = s.image_members
        now = time.time()
        with self._write() as conn:  # type: ignore[attr-defined]
            found = conn.execute(select(m.c.created).where(
                and_(m.c.image_id == image_id, m.c.member == member))).scalar()
            if create:
                if found is not None:
                    raise Conflict(f"{member} is already a member of this image")
                conn.execute(insert(m).values(image_id=image_id, member=member, status=status,
                                              created=now, updated=now))
                return ImageMember(image_id, member, status, now, now)
            if found is None:
                return None
            conn.execute(update(m).where(and_(m.c.image_id == image_id, m.c.member == member))
                         .values(status=status, updated=now))
            return ImageMember(image_id, member, status, float(found), now)

    def delete_image_member(self, image_id: str, member: str) -> bool:
        m = s.image_members
        with self._write() as conn:  # type: ignore[attr-defined]
            return bool(conn.execute(delete(m).where(
                and_(m.c.image_id == image_id, m.c.member == member))).rowcount)

    def image_members(self, image_id: str) -> list[ImageMember]:
        m = s.image_members
        with self._read() as conn:  # type: ignore[attr-defined]
            return [ImageMember(r.image_id, r.member, r.status, r.created, r.updated)
                    for r in conn.execute(select(m).where(m.c.image_id == image_id)
                                          .order_by(m.c.member))]

    def image_member(self, image_id: str, member: str) -> ImageMember | None:
        m = s.image_members
        with self._read() as conn:  # type: ignore[attr-defined]
            r = conn.execute(select(m).where(and_(m.c.image_id == image_id,
                                                  m.c.member == member))).first()
        return None if r is None else ImageMember(r.image_id, r.member, r.status, r.created,
                                                  r.updated)


def _columns() -> Any:
    i = s.images
    return (select(i.c.id, s.accounts.c.name.label("owner"), i.c.name, i.c.container,
                   i.c.object, i.c.root, i.c.size, i.c.checksum, i.c.disk_format,
                   i.c.container_format, i.c.min_disk, i.c.min_ram, i.c.visibility, i.c.status,
                   i.c.protected, i.c.made_object, i.c.created, i.c.updated)
            .select_from(i.join(s.accounts, s.accounts.c.id == i.c.account_id)))

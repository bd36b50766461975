"""What the garbage collector and the writer leases read and write in the catalog: every
retained root, roots committed since a mark, and the lease rows (pithos.catalog.leases)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import (
    and_,
    delete,
    func,
    insert,
    select,
)

from pithos.catalog import schema as s
from pithos.catalog.records import InlineContent, LeaseRow, RootsAfter, VersionNaming


class GcRowsMixin:
    """Roots and writer lease rows: a part of Catalog (pithos.catalog.catalog)."""

    def version_roots(self, batch: int = 10000) -> Iterator[bytes]:
        """The map root of every retained version (current or not), each at least once; not
        those of versions kept inline, whose roots name nothing stored."""
        last = 0
        while True:
            with self._read() as conn:
                rows = conn.execute(select(s.versions.c.id, s.versions.c.root)
                                    .where(and_(s.versions.c.id > last,
                                                s.versions.c.root.is_not(None),
                                                s.versions.c.inline_data.is_(None)))
                                    .order_by(s.versions.c.id).limit(batch)).all()
            for r in rows:
                yield bytes(r.root)
            if len(rows) < batch:
                return
            last = rows[-1].id

    def max_version_id(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.max(s.versions.c.id))).scalar() or 0)

    def roots_after(self, version_id: int) -> RootsAfter:
        """Roots of versions committed after `version_id`, and the newest id seen: the
        collector asks again just before each sweep, to spare maps committed while it ran."""
        with self._read() as conn:
            rows = conn.execute(select(s.versions.c.id, s.versions.c.root,
                                       s.versions.c.inline_data.is_(None).label("stored"))
                                .where(s.versions.c.id > version_id)
                                .order_by(s.versions.c.id)).all()
        newest = rows[-1].id if rows else version_id
        return RootsAfter([bytes(r.root) for r in rows if r.root is not None and r.stored],
                          int(newest))

    def versions_naming(self, roots: Iterable[bytes], batch: int = 500
                        ) -> list[VersionNaming]:
        """Every retained version whose map is one of `roots`, by account, container, name
        and age: to name the objects that damage reaches.  No index covers roots, so this
        scans the versions: for an operator's report, not a hot path."""
        wanted = list(dict.fromkeys(roots))
        v, o, c, a = s.versions, s.objects, s.containers, s.accounts
        found: list[VersionNaming] = []
        for i in range(0, len(wanted), batch):
            with self._read() as conn:
                rows = conn.execute(
                    select(v.c.root, a.c.name, c.c.name, o.c.name, v.c.vid,
                           o.c.current_id == v.c.id)
                    .select_from(v.join(o, o.c.id == v.c.object_id)
                                 .join(c, c.c.id == o.c.container_id)
                                 .join(a, a.c.id == c.c.account_id))
                    .where(v.c.root.in_(wanted[i:i + batch]))
                    .order_by(a.c.name, c.c.name, o.c.name, v.c.id)).all()
            found.extend(VersionNaming(bytes(r[0]), r[1], r[2], r[3], r[4], bool(r[5]))
                         for r in rows)
        return found

    def inline_contents(self, batch: int = 500) -> Iterator[InlineContent]:
        """Every retained version kept inline, with its content and names (fsck and scrub
        check each content against its root: its row is its only copy)."""
        v, o, c, a = s.versions, s.objects, s.containers, s.accounts
        last = 0
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    select(v.c.id, v.c.root, a.c.name, c.c.name, o.c.name, v.c.vid,
                           o.c.current_id == v.c.id, v.c.inline_data)
                    .select_from(v.join(o, o.c.id == v.c.object_id)
                                 .join(c, c.c.id == o.c.container_id)
                                 .join(a, a.c.id == c.c.account_id))
                    .where(and_(v.c.id > last, v.c.inline_data.is_not(None)))
                    .order_by(v.c.id).limit(batch)).all()
            for r in rows:
                yield InlineContent(VersionNaming(bytes(r[1]), r[2], r[3], r[4], r[5],
                                                  bool(r[6])), bytes(r[7]))
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def publish_upload_lease(self, lease_id: int, oldest: float | None) -> None:
        """A process's writer lease: its oldest writer in flight began at `oldest` (None: it
        has none, and the row goes).  See pithos/catalog/leases.py."""
        ul = s.upload_leases
        with self._lease_write() as conn:
            conn.execute(delete(ul).where(ul.c.id == lease_id))
            if oldest is not None:
                # `expires` is no longer read (a lease lives as long as its process); far
                # in the future, so a collector of an earlier release spares it too.
                conn.execute(insert(ul).values(id=lease_id, started=oldest, expires=1e15))

    def upload_lease_rows(self) -> list[LeaseRow]:
        """Every writer lease row."""
        with self._read() as conn:
            rows = conn.execute(select(s.upload_leases.c.id, s.upload_leases.c.started)).all()
        return [LeaseRow(int(r.id), float(r.started)) for r in rows]

    def delete_upload_lease(self, lease_id: int) -> None:
        """Drop a lease row (its process is dead: the collector revokes it)."""
        with self._write() as conn:
            conn.execute(delete(s.upload_leases).where(s.upload_leases.c.id == lease_id))


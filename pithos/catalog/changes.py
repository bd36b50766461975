"""The change feed of a container and the preconditions of conditional writes.

Every write that changes what an object is (a new version, a deletion, new metadata, a
version undone) gives the object the container's next change number, as the last statement
of its transaction (`_changed`): the containers row is locked from there to the commit, so
numbers commit in order and a reader that has seen number N has seen every change below it.
An object keeps one number, its last change's, so the feed reads each object once, with its
state now, in O(changes after the cursor) through the (container_id, change_seq) index; a
deleted object keeps its row (its current version is a deletion marker), so deletes are in
the feed too.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, and_, bindparam, literal_column, select

from pithos.catalog import schema as s
from pithos.catalog.engine import CatalogEngine
from pithos.catalog.records import Change, ChangePage, Expect
from pithos.core.errors import PreconditionFailed

c, o, v = s.containers, s.objects, s.versions

BUMP = (c.update().where(c.c.id == bindparam("container_id"))
        .values(change_seq=c.c.change_seq + literal_column("1")).returning(c.c.change_seq))

MARK = o.update().where(o.c.id == bindparam("object_id")).values(change_seq=bindparam("seq"))

# Both in one statement on PostgreSQL (a data-modifying CTE): every writer of the container
# waits for its row from the bump to the commit, so a round trip less there is one less for
# each of them.
_bump = BUMP.cte("bump")
BUMP_AND_MARK = (o.update().where(o.c.id == bindparam("object_id"))
                 .values(change_seq=select(_bump.c.change_seq).scalar_subquery()))

CHANGES = (select(o.c.change_seq, o.c.name, v.c.vid, v.c.size, v.c.etag, v.c.content_type,
                  v.c.created, v.c.deleted, v.c.delete_at)
           .select_from(o.outerjoin(v, v.c.id == o.c.current_id))
           .where(and_(o.c.container_id == bindparam("container_id"),
                       o.c.change_seq > bindparam("after")))
           .order_by(o.c.change_seq))


def check_expect(expect: Expect | None, current_etag: str | None) -> None:
    """PreconditionFailed unless `expect` holds for an object whose visible version has ETag
    `current_etag` (None: no visible version)."""
    if expect is None:
        return
    if expect.absent and current_etag is not None:
        raise PreconditionFailed("If-None-Match: * and the object exists")
    if expect.match is not None:
        if current_etag is None:
            raise PreconditionFailed("If-Match and the object does not exist")
        if "*" not in expect.match and current_etag not in expect.match:
            raise PreconditionFailed("If-Match: the object's ETag is " + current_etag)


class ChangesMixin(CatalogEngine):
    """Catalog methods of the change feed."""

    def _changed(self, conn: Connection, changed: list[tuple[int, int]]) -> None:
        """Give each (container id, object id) its container's next change number.  Call it
        last in the transaction: it locks the containers rows until the commit, in the
        order of their ids (a move between two containers and one back lock the same row
        first)."""
        for container_id, object_id in sorted(changed):
            if not self.is_sqlite:
                self._run_in(conn, BUMP_AND_MARK, {"container_id": container_id,
                                                   "object_id": object_id})
                continue
            seq = int(self._fetch_in(conn, BUMP, container_id=container_id)[0][0])
            self._run_in(conn, MARK, {"object_id": object_id, "seq": seq})

    def changes(self, container_id: int, after: int, limit: int,
                now: float | None = None) -> ChangePage:
        """The container's objects whose last change is numbered after `after` (0: all), in
        change order, at most `limit`, each as it is now (expired counts as deleted)."""
        now = time.time() if now is None else now
        with self._read() as conn:
            rows: list[Any] = list(conn.execute(CHANGES.limit(limit + 1), {
                "container_id": container_id, "after": after}).all())
        out = []
        for r in rows[:limit]:
            seq, name, vid, size, etag, ctype, created, deleted, delete_at = r
            gone = (vid is None or bool(deleted)
                    or (delete_at is not None and delete_at <= now))
            out.append(Change(int(seq), name, gone, 0 if gone else int(size),
                              "" if gone else etag, "" if gone else ctype,
                              float(created or 0.0), vid or ""))
        return ChangePage(out, out[-1].seq if out else after, len(rows) > limit)

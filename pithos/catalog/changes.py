"""The change feed of a container and the preconditions of conditional writes.

Every write that changes what an object is (a new version, a deletion, new metadata, a
version undone) marks the object changed (`_changed`), and every object is given numbers in
the order of its changes, so that a reader that has seen number N has seen every change
below it:

- SQLite (one writer at a time): the write takes the container's next change number, as
  the last statement of its transaction.
- PostgreSQL: a number taken at write time would hold the containers row from there to the
  commit (so that numbers commit in order), and every writer of the container would commit
  after the one before, each after its own WAL flush: ~400 small PUTs a second at most on
  the development VM, whatever the cores.  So a write leaves its object unnumbered
  (`change_seq` NULL) with a stamp from a sequence (`change_stamp`: the order of changes
  among the unnumbered), locking nothing more than its object's row, which it holds
  already; the feed's reader numbers the container's unnumbered objects first
  (`_sequence`): under the containers row (readers of one container take turns), in stamp
  order, after the container's last number.  Only committed changes are numbered (an
  uncommitted one is not seen, and an object whose row a writer holds is skipped), numbers
  are given in one transaction per container at a time, and a reader reads after
  numbering: a number below one it has seen was given by a numbering committed before, to
  a change committed before.  A change committed later, or skipped, is numbered by a later
  reader, above every number given so far.

An object keeps one number, its last change's, so the feed reads each object once, with its
state now, in O(changes after the cursor) through the (container_id, change_seq) index; a
deleted object keeps its row (its current version is a deletion marker), so deletes are in
the feed too.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, and_, bindparam, literal_column, select, text

from pithos.catalog import schema as s
from pithos.catalog.engine import CatalogEngine
from pithos.catalog.records import Change, ChangePage, Expect
from pithos.core.errors import PreconditionFailed

c, o, v = s.containers, s.objects, s.versions

BUMP = (c.update().where(c.c.id == bindparam("container_id"))
        .values(change_seq=c.c.change_seq + literal_column("1")).returning(c.c.change_seq))

MARK = o.update().where(o.c.id == bindparam("object_id")).values(change_seq=bindparam("seq"))

# PostgreSQL: the object changed, unnumbered until a reader numbers it (see the docstring).
MARK_PENDING = text("UPDATE objects SET change_seq = NULL, "
                    "change_stamp = nextval('pithos_change_stamps') WHERE id = :object_id")

# The container's unnumbered objects, numbered in stamp order after its last number; its
# row locked first, one numbering per container at a time.  NO KEY UPDATE, not UPDATE: a
# writer's foreign-key checks take KEY SHARE on the container's row (an object made, then
# updated, in one transaction), and must not wait for a reader.  An object whose row a
# writer holds is skipped, not waited for: its change is numbered by a later reader, above
# every number given now, so a reader never waits for a writer (nor deadlocks with one).
_LAST_NUMBER = text("SELECT change_seq FROM containers WHERE id = :c FOR NO KEY UPDATE")
_NUMBER = text(
    "WITH pending AS (SELECT id, change_stamp FROM objects "
    "WHERE container_id = :c AND change_seq IS NULL ORDER BY id "
    "FOR NO KEY UPDATE SKIP LOCKED), "
    "ranked AS (SELECT id, row_number() OVER (ORDER BY change_stamp, id) AS rn "
    "FROM pending), "
    "numbered AS (UPDATE objects o SET change_seq = :base + r.rn FROM ranked r "
    "WHERE o.id = r.id RETURNING o.change_seq) "
    "SELECT max(change_seq) FROM numbered")
_SET_LAST = text("UPDATE containers SET change_seq = :top WHERE id = :c")

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
        """Mark each (container id, object id) changed (see the module's docstring).  Call
        it last in the transaction: on SQLite it takes the container's next change number;
        on PostgreSQL it only writes the objects' rows, which the write holds already."""
        for container_id, object_id in sorted(changed):
            if not self.is_sqlite:
                conn.execute(MARK_PENDING, {"object_id": object_id})
                continue
            seq = int(self._fetch_in(conn, BUMP, container_id=container_id)[0][0])
            self._run_in(conn, MARK, {"object_id": object_id, "seq": seq})

    def _sequence(self, container_id: int) -> None:
        """Number the container's changes committed so far and not numbered yet
        (PostgreSQL), in one transaction that holds the containers row."""
        with self._write(keeps_info=True) as conn:
            base = conn.execute(_LAST_NUMBER, {"c": container_id}).scalar()
            if base is None:
                return  # no such container
            top = conn.execute(_NUMBER, {"c": container_id, "base": base}).scalar()
            if top is not None:
                conn.execute(_SET_LAST, {"c": container_id, "top": top})

    def changes(self, container_id: int, after: int, limit: int,
                now: float | None = None) -> ChangePage:
        """The container's objects whose last change is numbered after `after` (0: all), in
        change order, at most `limit`, each as it is now (expired counts as deleted)."""
        now = time.time() if now is None else now
        if not self.is_sqlite:
            self._sequence(container_id)
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

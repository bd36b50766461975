"""ETags declared by a hashmap upload and not yet confirmed by the server.

A `PUT ?hashmap` with an ETag commits its version with that ETag at once, beside a mark, a
version_meta row of domain `etag` (key `declared`, the ETag declared): invisible to clients,
kept by a metadata POST (which replaces the `user` and `sys` domains only), gone with its
version.  The server later reads the content, and `settle_etag` drops the mark, replacing
the ETag with the MD5 found if the declaration was false (pithos.objects.declared_etags).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import and_, delete, literal_column, select, update

from pithos.catalog import schema as s
from pithos.catalog.db_errors import retried_write
from pithos.catalog.engine import CatalogEngine

DOMAIN = "etag"
KEY = "declared"
# The domain as a constant in the scan's SQL, not a parameter: the marks' index is partial
# (schema.version_meta_etag_marks), and neither SQLite nor a generic PostgreSQL plan uses a
# partial index for a parameter that only happens to equal its predicate's constant.
_MARKS = literal_column(f"'{DOMAIN}'")


class DeclaredEtag(NamedTuple):
    """A version whose ETag was declared and is not yet confirmed: its content (root, size)
    and the ETag it carries."""
    version_id: int
    root: bytes | None
    size: int
    etag: str


class DeclaredEtagsMixin(CatalogEngine):
    """Catalog methods of declared ETags."""

    def declared_etags(self, limit: int = 100, after: int = 0) -> list[DeclaredEtag]:
        """Versions (ids above `after`, in id order) whose ETag awaits confirmation."""
        vm, v = s.version_meta, s.versions
        with self._read() as conn:
            rows = conn.execute(
                select(v.c.id, v.c.root, v.c.size, v.c.etag)
                .select_from(vm.join(v, v.c.id == vm.c.version_id))
                .where(and_(vm.c.domain == _MARKS, vm.c.key == KEY, vm.c.version_id > after))
                .order_by(vm.c.version_id).limit(limit)).all()
        return [DeclaredEtag(r.id, r.root, r.size, r.etag) for r in rows]

    @retried_write
    def settle_etag(self, version_id: int, md5: str) -> bool:
        """The content of the version was read and its MD5 is `md5`: drop the mark, and if
        the ETag declared was another, make `md5` the version's ETag (a change of the
        object's in the feed when it is the current version).  Returns whether the ETag
        changed; False too when the version is gone or was settled already."""
        vm, v, o = s.version_meta, s.versions, s.objects
        with self._write(keeps_info=True) as conn:  # (no account or container row)
            # The object's row first, as every write of an object (Catalog._count).
            row = conn.execute(self._lock(
                select(o.c.id, o.c.container_id, o.c.current_id)
                .where(o.c.id == select(v.c.object_id).where(v.c.id == version_id)
                       .scalar_subquery()))).first()
            mark = conn.execute(select(vm.c.value).where(and_(
                vm.c.version_id == version_id, vm.c.domain == DOMAIN))).first()
            if row is None or mark is None:
                return False
            conn.execute(delete(vm).where(and_(vm.c.version_id == version_id,
                                               vm.c.domain == DOMAIN)))
            changed = conn.execute(update(v).where(and_(v.c.id == version_id,
                                                        v.c.etag != md5))
                                   .values(etag=md5)).rowcount > 0
            if changed and row.current_id == version_id:
                self._changed(conn, [(row.container_id, row.id)])  # type: ignore[attr-defined]
            return changed

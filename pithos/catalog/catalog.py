"""The Catalog: every SQL statement of the object service, behind plain methods.

Concurrency: a write is one short transaction.  On SQLite it starts with BEGIN IMMEDIATE (the
database-wide write lock, taken up front so two writers never deadlock upgrading a read lock);
on PostgreSQL rows are locked where a read decides a write.  Usage counters live in sharded rows
(schema.container_stats) so writers of one container rarely touch the same row.  A read that
is one statement runs outside any transaction (a statement reads one snapshot).

Speed: the statements of every small request (hot_statements.py) are built once, compiled once
per catalog and run on a DBAPI cursor (prepared.py); the others go through SQLAlchemy.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from pithos.catalog import hot_statements as h
from pithos.catalog import schema as s
from pithos.catalog.changes import ChangesMixin, check_expect
from pithos.catalog.db_errors import retried_write
from pithos.catalog.declared_etags import DeclaredEtagsMixin
from pithos.catalog.engine import STAT_SHARDS, CatalogEngine, missing_driver
from pithos.catalog.gc_rows import GcRowsMixin
from pithos.catalog.images import ImagesMixin
from pithos.catalog.lease_check import LeaseCheck
from pithos.catalog.object_versions import ObjectVersionsMixin
from pithos.catalog.pg_commit import PgCommitMixin
from pithos.catalog.pg_read_batch import PgReadBatchMixin
from pithos.catalog.projects import ProjectsMixin
from pithos.catalog.records import (
    AccountAndContainer,
    AccountInfo,
    ContainerInfo,
    ContainerSummary,
    CurrentVersion,
    Expect,
    ListingEntry,
    ObjectVersion,
    VersionSummary,
)
from pithos.catalog.rows import ASK, MAX_CHAR, name_window, version_columns, version_record
from pithos.catalog.sharing import SharingMixin
from pithos.catalog.space import (
    recovery_write,
)
from pithos.catalog.users import UsersMixin
from pithos.core.errors import Conflict, InvalidArgument, NotFound

__all__ = ["MAX_CONTENT_TYPE", "STAT_SHARDS", "Catalog", "missing_driver"]

# The versions' content_type column is VARCHAR(256): past it PostgreSQL refuses the row (a
# 5xx after the content was stored), so a longer one is the request's error, said at once.
MAX_CONTENT_TYPE = 256


def _check_content_type(content_type: str | None) -> None:
    if content_type is not None and len(content_type) > MAX_CONTENT_TYPE:
        raise InvalidArgument(f"Content-Type longer than {MAX_CONTENT_TYPE} characters")


class Catalog(UsersMixin, SharingMixin, GcRowsMixin, ImagesMixin, ChangesMixin, ProjectsMixin,
              ObjectVersionsMixin, PgCommitMixin, PgReadBatchMixin, DeclaredEtagsMixin,
              CatalogEngine):
    """The catalog at a SQLAlchemy URL (e.g. ``sqlite:///data/catalog.sqlite`` or
    ``postgresql://user@host/db``).  Creates or upgrades the schema on open.

    Every method returns the records of pithos.catalog.records (never a database row or a
    positional tuple) and raises only PithosError subclasses: besides those it documents,
    NoSpace for a full disk, Conflict for a write that lost to a concurrent one, and
    BackendError (`transient` when a retry may succeed) for a database that failed or is
    out of reach (pithos/catalog/db_errors.py)."""

    # Opening, closing and transactions: pithos.catalog.engine.CatalogEngine.

    # -- accounts ------------------------------------------------------------------------------

    def ensure_account(self, name: str) -> int:
        with self._write() as conn:
            return self._ensure_account(conn, name)

    def _ensure_account(self, conn: Connection, name: str) -> int:
        found = conn.execute(select(s.accounts.c.id).where(s.accounts.c.name == name)).scalar()
        if found is not None:
            return int(found)
        try:
            with conn.begin_nested():
                return int(conn.execute(insert(s.accounts).values(
                    name=name, created=time.time())).inserted_primary_key[0])
        except SQLIntegrityError:  # created concurrently
            return int(conn.execute(
                select(s.accounts.c.id).where(s.accounts.c.name == name)).scalar_one())

    def account(self, name: str, detail: bool = True) -> AccountInfo | None:
        """The account; without `detail` its counters and metadata are left out (zero and
        empty), for the many requests that need only its id and ACL."""
        if not detail:
            rows = self._fetch(h.ACCOUNT, name=name)
            return h.account_info(rows[0]) if rows else None
        with self._read() as conn:
            row = conn.execute(select(s.accounts).where(s.accounts.c.name == name)).first()
            if row is None:
                return None
            ncont = conn.execute(select(func.count()).select_from(s.containers).where(
                s.containers.c.account_id == row.id)).scalar_one()
            objs, size = conn.execute(
                select(func.coalesce(func.sum(s.container_stats.c.objects), 0),
                       func.coalesce(func.sum(s.container_stats.c.bytes), 0))
                .select_from(s.container_stats.join(s.containers))
                .where(s.containers.c.account_id == row.id)).one()
            meta = dict(conn.execute(select(s.account_meta.c.key, s.account_meta.c.value).where(
                s.account_meta.c.account_id == row.id)).all())
        return AccountInfo(row.id, row.name, row.created, int(ncont), int(objs), int(size),
                           meta, row.quota_bytes, row.acl)

    def update_account(self, account_id: int, meta: Mapping[str, str | None] | None = None,
                       acl: str | None = None, set_acl: bool = False) -> None:
        """Set (or, for None / empty values, remove) metadata keys; optionally the ACL."""
        with self._write() as conn:
            if meta:
                self._update_meta(conn, s.account_meta, s.account_meta.c.account_id,
                                  account_id, meta)
            if set_acl:
                conn.execute(update(s.accounts).where(s.accounts.c.id == account_id)
                             .values(acl=acl or None))

    @staticmethod
    def _update_meta(conn: Connection, table: Any, owner_col: Any, owner: int,
                     meta: Mapping[str, str | None]) -> None:
        for key, value in meta.items():
            conn.execute(delete(table).where(and_(owner_col == owner, table.c.key == key)))
            if value:
                conn.execute(insert(table).values({owner_col.name: owner, "key": key,
                                                   "value": value}))

    def list_accounts(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(select(s.accounts.c.name).order_by(s.accounts.c.name))
                        .scalars())

    # -- containers ----------------------------------------------------------------------------

    def container(self, account_id: int, name: str, detail: bool = True
                  ) -> ContainerInfo | None:
        """The container; without `detail` its counters and metadata are left out."""
        if not detail:
            rows = self._fetch(h.CONTAINER, account_id=account_id, name=name)
            return h.container_info(rows[0]) if rows else None
        with self._read() as conn:
            return self._container(conn, account_id, name, detail)

    def account_and_container(self, account: str, container: str) -> AccountAndContainer:
        """The account and its container by name, as account(detail=False) and
        container(detail=False) (None for either that does not exist), in one statement;
        the container also tells whether it holds any sharing entry (`has_sharing`)."""
        def load() -> AccountAndContainer:
            rows = self._fetch(h.ACCOUNT_AND_CONTAINER, account=account, container=container)
            return h.account_and_container(rows[0] if rows else None)

        # Cached briefly in a server worker (CatalogEngine._cached_info): found ones only.
        return self._cached_info(("ac", account, container), load,
                                 lambda found: found.container is not None)

    def _container(self, conn: Connection, account_id: int, name: str,
                   detail: bool = True) -> ContainerInfo | None:
        row = conn.execute(select(s.containers).where(and_(
            s.containers.c.account_id == account_id, s.containers.c.name == name))).first()
        if row is None:
            return None
        if not detail:
            return ContainerInfo(row.id, row.account_id, row.name, row.created, 0, 0, {},
                                 row.read_acl, row.write_acl, row.versioning, row.quota_bytes,
                                 chunking=row.chunking)
        objs, size = conn.execute(
            select(func.coalesce(func.sum(s.container_stats.c.objects), 0),
                   func.coalesce(func.sum(s.container_stats.c.bytes), 0))
            .where(s.container_stats.c.container_id == row.id)).one()
        meta = dict(conn.execute(select(s.container_meta.c.key, s.container_meta.c.value).where(
            s.container_meta.c.container_id == row.id)).all())
        return ContainerInfo(row.id, row.account_id, row.name, row.created, int(objs),
                             int(size), meta, row.read_acl, row.write_acl, row.versioning,
                             row.quota_bytes, chunking=row.chunking)

    def create_container(self, account_id: int, name: str,
                         meta: Mapping[str, str | None] | None = None,
                         **policy: Any) -> bool:
        """Create a container, or update an existing one's metadata and policy.  Returns
        whether it was created."""
        policy = dict(policy)
        # The project a new container is charged to when the policy names none (the one its
        # creator acts in); an existing container keeps its own.
        new_project = policy.pop("new_project_id", None)
        with self._write() as conn:
            found = conn.execute(select(s.containers.c.id).where(and_(
                s.containers.c.account_id == account_id, s.containers.c.name == name))).scalar()
            created = found is None
            if created:
                found = conn.execute(insert(s.containers).values(
                    account_id=account_id, name=name, created=time.time(),
                    **{"project_id": new_project, **policy})).inserted_primary_key[0]
                conn.execute(insert(s.container_stats), [
                    {"container_id": found, "shard": i, "objects": 0, "bytes": 0}
                    for i in range(STAT_SHARDS)])
                self._ensure_storage_holdings(conn, int(found))
            elif policy:
                if "project_id" in policy:
                    self._move_container(conn, int(found), policy.pop("project_id"))
                if policy:
                    conn.execute(update(s.containers).where(s.containers.c.id == found)
                                 .values(**policy))
            if meta:
                self._update_meta(conn, s.container_meta, s.container_meta.c.container_id,
                                  int(found), meta)
        return created

    def update_container(self, container_id: int, meta: Mapping[str, str | None] | None = None,
                         **policy: Any) -> None:
        """Change a container's metadata and policy.  A change of its project
        (`project_id`) moves its usage to the new project, within that project's limits
        (QuotaExceeded: nothing changed)."""
        policy.pop("new_project_id", None)
        with self._write() as conn:
            if "project_id" in policy:
                self._move_container(conn, container_id, policy.pop("project_id"))
            if policy:
                conn.execute(update(s.containers).where(s.containers.c.id == container_id)
                             .values(**policy))
            if meta:
                self._update_meta(conn, s.container_meta, s.container_meta.c.container_id,
                                  container_id, meta)

    @retried_write
    @recovery_write
    def delete_container(self, container_id: int) -> None:
        """Delete an empty container; Conflict if it holds a visible object."""
        now = time.time()
        with self._write() as conn:
            live = conn.execute(self._visible(select(s.objects.c.id), now).where(
                s.objects.c.container_id == container_id).limit(1)).first()
            if live is not None:
                raise Conflict("container not empty")
            # What it still holds (its versions kept, objects expired and not reaped yet)
            # leaves its project's usage with it.
            objects, kept = self._container_holds(conn, container_id)
            self._charge_container(conn, container_id, -objects, -kept, False)
            conn.execute(delete(s.containers).where(s.containers.c.id == container_id))

    def _container_holds(self, conn: Connection, container_id: int) -> tuple[int, int]:
        """(objects its counters count, bytes its versions hold): its project's charge."""
        objects = conn.execute(select(func.coalesce(func.sum(s.container_stats.c.objects), 0))
                               .where(s.container_stats.c.container_id == container_id)
                               ).scalar_one()
        kept = conn.execute(select(func.coalesce(func.sum(s.versions.c.size), 0))
                            .select_from(s.versions.join(s.objects))
                            .where(s.objects.c.container_id == container_id)).scalar_one()
        return int(objects), int(kept)

    def _move_container(self, conn: Connection, container_id: int,
                        project_id: str | None) -> None:
        objects, size = self._container_holds(conn, container_id)
        self._charge_container(conn, container_id, -objects, -size, False)
        conn.execute(update(s.containers).where(s.containers.c.id == container_id)
                     .values(project_id=project_id))
        self._ensure_storage_holdings(conn, container_id)
        # Checked: moving data into a project is charging it (QuotaExceeded, nothing moved).
        self._charge_container(conn, container_id, objects, size, True)

    def list_containers(self, account_id: int, prefix: str = "", marker: str = "",
                        end_marker: str = "", limit: int = 10000, reverse: bool = False,
                        until: float | None = None) -> list[ContainerSummary]:
        """The account's containers with their usage, by name; with `until`, the containers
        that existed then (and still do) with their usage at that time."""
        c = s.containers
        if until is not None:
            return self._containers_at(account_id, prefix, marker, end_marker, limit, reverse,
                                       until)
        stats = (select(s.container_stats.c.container_id,
                        func.sum(s.container_stats.c.objects).label("objects"),
                        func.sum(s.container_stats.c.bytes).label("bytes"))
                 .group_by(s.container_stats.c.container_id).subquery())
        q = (select(c.c.name, stats.c.objects, stats.c.bytes, c.c.created)
             .select_from(c.outerjoin(stats, stats.c.container_id == c.c.id))
             .where(c.c.account_id == account_id))
        q = name_window(q, c.c.name, prefix, marker, end_marker, reverse).limit(limit)
        with self._read() as conn:
            return [ContainerSummary(r.name, int(r.objects or 0), int(r.bytes or 0), r.created)
                    for r in conn.execute(q)]

    def _containers_at(self, account_id: int, prefix: str, marker: str, end_marker: str,
                       limit: int, reverse: bool, until: float) -> list[ContainerSummary]:
        c, v = s.containers, s.versions
        q = select(c.c.id, c.c.name, c.c.created).where(and_(c.c.account_id == account_id,
                                                             c.c.created <= until))
        q = name_window(q, c.c.name, prefix, marker, end_marker, reverse).limit(limit)
        out = []
        with self._read() as conn:
            for row in conn.execute(q).all():
                n, size = conn.execute(self._visible(
                    select(func.count(), func.coalesce(func.sum(v.c.size), 0)), until, until)
                    .where(s.objects.c.container_id == row.id)).one()
                out.append(ContainerSummary(row.name, int(n), int(size), row.created))
        return out

    # -- objects -------------------------------------------------------------------------------

    @staticmethod
    def _visible(q: Any, now: float, until: float | None = None) -> Any:
        """Restrict `q` to visible objects joined with their current version, or with the
        version they had at time `until`."""
        v = s.versions
        if until is None:
            joined = s.objects.join(v, v.c.id == s.objects.c.current_id)
        else:
            then = (select(v.c.object_id, func.max(v.c.id).label("version_id"))
                    .where(v.c.created <= until).group_by(v.c.object_id).subquery())
            joined = s.objects.join(then, then.c.object_id == s.objects.c.id).join(
                v, v.c.id == then.c.version_id)
            now = min(now, until)
        return q.select_from(joined).where(and_(
            v.c.deleted.is_(False), or_(v.c.delete_at.is_(None), v.c.delete_at > now)))

    def object(self, container_id: int, name: str, now: float | None = None
               ) -> ObjectVersion | None:
        """The current version of an object, None if absent, deleted or expired."""
        return h.object_version(self._fetch(h.OBJECT, container_id=container_id, name=name,
                                            now=time.time() if now is None else now))

    def object_and_public_token(self, container_id: int, name: str, now: float | None = None
                                ) -> CurrentVersion | None:
        """As object(), with the object's public token (None if unpublished), in one
        statement."""
        # (Concurrent look-ups share a statement on PostgreSQL: pg_read_batch.py.)
        rows = self._object_rows(container_id, name, now)
        version = h.object_version(rows)
        return None if version is None else CurrentVersion(version, h.extra(rows))

    @retried_write
    def put_version(self, container_id: int, name: str, *, root: bytes, size: int, etag: str,
                    content_type: str, meta: Mapping[str, Mapping[str, str]],
                    modified_by: str | None = None, delete_at: float | None = None,
                    dlo_manifest: str | None = None, slo_manifest: str | None = None,
                    created: float | None = None, guard: LeaseCheck | None = None,
                    grant: tuple[int, Sequence[bytes]] | None = None,
                    sources: Sequence[int] = (), expect: Expect | None = None,
                    source: ObjectVersion | None = None, source_expect: Expect | None = None,
                    move: bool = False, inline: bytes | None = None) -> ObjectVersion:
        """Make a new version the current one, atomically with the usage counters (and with
        `grant`: (account id, block hashes) it may name from now on).  The map it names must
        already be durable (write ordering).  `sources`: ids of the versions whose maps it
        shares without having put or touched their blocks (a copy, an SLO's segments, the
        version an in-place update starts from); Conflict if one of them is gone by now,
        since a collector may then have taken blocks the new map names.

        `expect`: the precondition on this object's current version (PreconditionFailed,
        nothing written).  `source`: the version this one copies, which must still be its
        object's current one (PreconditionFailed when `source_expect` does not hold on that
        object, else Conflict: retry); with `move`, that object is deleted in the same
        transaction (a server-side move).  `inline`: the content itself, kept in the row
        (a small object: `root` is its blocks' would-be root, none of them stored).
        `guard`: the writer's commit guard, checked inside this commit's own transaction
        (PostgreSQL: leases.WriterLeases.guarded_commit; LeaseLost, nothing written)."""
        _check_content_type(content_type)
        now = time.time()
        if not self.is_sqlite and source is None:
            # One round trip (pithos/catalog/pg_commit.py), the commit guard's check in it.
            obj_id, uuid, version_id, vid = self._put_version_call(
                container_id, name, root=root, size=size, etag=etag,
                content_type=content_type, meta=meta, modified_by=modified_by,
                delete_at=delete_at, dlo_manifest=dlo_manifest, slo_manifest=slo_manifest,
                created=created or now, now=now, grant=grant, sources=sources,
                expect=expect, inline=inline, guard=guard)
            return ObjectVersion(obj_id, container_id, name, uuid, version_id, vid, root,
                                 size, etag, content_type, created or now, modified_by,
                                 delete_at, dlo_manifest, slo_manifest,
                                 {d: dict(kv) for d, kv in meta.items() if kv}, inline)
        # Changes no account's or container's looked-up columns: the lookups stay cached.
        with self._write(keeps_info=True) as conn:
            if guard is not None:
                self._check_lease(conn, guard)
            if source is not None:
                self._check_source(conn, source, source_expect, now)
            if sources:
                wanted = set(sources)
                found = conn.execute(select(func.count()).select_from(s.versions).where(
                    s.versions.c.id.in_(wanted))).scalar()
                if found != len(wanted):
                    raise Conflict("a source of this object was removed meanwhile; retry")
            if grant is not None:
                self._grant(conn, *grant)
            obj_id, uuid, old_size, old_etag = self._object_for_write(conn, container_id, name,
                                                                      now)
            check_expect(expect, old_etag)
            if move and source is not None and source.object_id == obj_id:
                raise Conflict("an object cannot be moved onto itself")
            vid = secrets.token_hex(16)
            version_id = int(self._fetch_in(
                conn, h.NEW_VERSION, object_id=obj_id, vid=vid, root=root, size=size,
                etag=etag, content_type=content_type, created=created or now,
                modified_by=modified_by, delete_at=delete_at, dlo_manifest=dlo_manifest,
                slo_manifest=slo_manifest, inline_data=inline)[0][0])
            rows = [{"version_id": version_id, "domain": domain, "key": k, "value": v}
                    for domain, kv in meta.items() for k, v in kv.items()]
            if rows:
                self._run_in(conn, h.NEW_META, rows)
            self._run_in(conn, h.SET_CURRENT, {"object_id": obj_id, "current_id": version_id})
            policy = h.container_policy(
                self._fetch_in(conn, h.CONTAINER_POLICY, container_id=container_id)[0])
            self._check_quota(conn, container_id, size - (old_size or 0), policy)
            # The project holds every version kept: this one more, less those a container
            # that keeps no history drops now.
            dropped = (self._history_bytes(conn, obj_id, version_id)
                       if policy.versioning == "none" else 0)
            self._count(conn, container_id, 0 if old_size is not None else 1,
                        size - (old_size or 0), check=True, project_id=policy.project_id,
                        kept=size - dropped)
            self._drop_history_unless_kept(conn, container_id, obj_id, version_id,
                                           policy.versioning)
            changed = [(container_id, obj_id)]
            if move and source is not None:
                self._mark_deleted(conn, source.container_id, source.object_id, source.size,
                                   now, modified_by)
                changed.append((source.container_id, source.object_id))
            self._changed(conn, changed)
        return ObjectVersion(obj_id, container_id, name, uuid, version_id, vid, root, size,
                             etag, content_type, created or now, modified_by, delete_at,
                             dlo_manifest, slo_manifest,
                             {d: dict(kv) for d, kv in meta.items() if kv}, inline)

    def _check_source(self, conn: Connection, source: ObjectVersion, expect: Expect | None,
                      now: float) -> None:
        """The source of a copy or move is still current (its row locked on PostgreSQL) and
        meets `expect`."""
        self._lock_object(conn, object_id=source.object_id)
        row = conn.execute(self._lock(self._visible(
            select(s.versions.c.id, s.versions.c.etag), now)
            .where(s.objects.c.id == source.object_id))).first()
        check_expect(expect, None if row is None else row.etag)
        if row is None:
            raise NotFound("the source object is gone")
        if row.id != source.version_id:
            raise Conflict("the source object changed meanwhile; retry")

    def _object_for_write(self, conn: Connection, container_id: int, name: str,
                          now: float) -> tuple[int, str, int | None, str | None]:
        """(object id, its UUID, size and ETag of its visible current version or None),
        creating the object row (locked on PostgreSQL); a recreated object (after a delete
        or expiry) gets a new UUID."""
        found = self._fetch_in(conn, h.OBJECT_FOR_WRITE, container_id=container_id, name=name)
        if not found:
            uuid = str(uuidlib.uuid4())
            made = self._fetch_in(conn, h.NEW_OBJECT[self._dialect.name],
                                  container_id=container_id, name=name, uuid=uuid)
            if made:
                return int(made[0][0]), uuid, None, None
            # Created concurrently (PostgreSQL): the insert waited for that writer's commit.
            found = self._fetch_in(conn, h.OBJECT_FOR_WRITE, container_id=container_id,
                                   name=name)
        obj_id, current_id, uuid = found[0]
        current = (self._fetch_in(conn, h.VERSION_STATE, version_id=current_id)
                   if current_id is not None else None)
        if not current:
            return int(obj_id), uuid, None, None
        size, deleted, delete_at, etag = current[0]
        if deleted or (delete_at is not None and delete_at <= now):
            if not deleted:  # expired but not reaped: its usage is still counted
                self._count(conn, container_id, -1, -size)
            uuid = str(uuidlib.uuid4())
            self._run_in(conn, h.NEW_UUID, {"object_id": obj_id, "uuid": uuid})
            return int(obj_id), uuid, None, None
        return int(obj_id), uuid, int(size), etag

    def _count(self, conn: Connection, container_id: int, objects: int, size: int,
               check: bool = False, project_id: str | None = None, kept: int = 0) -> None:
        """Change the container's counters (live objects, their current bytes) and charge
        its project the objects and `kept`, the change of the bytes its versions hold
        (every version kept: the current ones and the history).  `check`: a charge past the
        project's limit is QuotaExceeded (a new version); `project_id`: the container's
        project, if read already.

        Lock order (PostgreSQL), the same in every write: the objects rows, for a write
        checked against a byte quota the container's and then the account's row
        (_check_quota), the project's holdings (bytes, then objects), the container's stat
        shard, the containers rows of
        the change numbers (last: ChangesMixin._changed).  The holdings come before the
        shard: a write that counts in two containers of one project (a reap, a move) then
        takes its second shard already holding the project's rows, which every other
        charging write waits for before it takes a shard."""
        if objects or kept:
            self._charge_container(conn, container_id, objects, kept, check, project_id)
        if objects or size:
            # One shard per pooled connection, so per transaction: a write that counts
            # twice in one container (a new version over an expired one, a reap) locks one
            # shard row, never two in an order another write could reverse.
            shard = conn.info.get("pithos_stat_shard")
            if shard is None:
                shard = conn.info["pithos_stat_shard"] = random.randrange(STAT_SHARDS)
            self._run_in(conn, h.COUNT, {"container_id": container_id, "shard": shard,
                                         "add_objects": objects, "add_bytes": size})

    def _history_bytes(self, conn: Connection, object_id: int, current_id: int) -> int:
        """The bytes an object's versions other than `current_id` hold (deletion markers
        hold none)."""
        return int(conn.execute(select(func.coalesce(func.sum(s.versions.c.size), 0)).where(
            and_(s.versions.c.object_id == object_id, s.versions.c.id != current_id))
        ).scalar_one())

    @retried_write
    def update_object_meta(self, container_id: int, name: str,
                           meta: Mapping[str, Mapping[str, str]], *,
                           delete_at: float | None, content_type: str | None = None,
                           replace_domains: tuple[str, ...] = ("user", "sys"),
                           expect: Expect | None = None, replace_dlo: bool = False,
                           dlo_manifest: str | None = None) -> ObjectVersion:
        """Replace the metadata of the current version in place (Swift POST): the content
        version is not copied.  `expect`: its precondition (PreconditionFailed).  With
        `replace_dlo`, X-Object-Manifest becomes `dlo_manifest` (None: not a DLO any more)."""
        _check_content_type(content_type)
        now = time.time()
        with self._write() as conn:
            self._lock_object(conn, container_id=container_id, name=name)
            row = conn.execute(self._lock(self._visible(version_columns(), now).where(and_(
                s.objects.c.container_id == container_id, s.objects.c.name == name)))).first()
            check_expect(expect, None if row is None else row.etag)
            if row is None:
                raise NotFound(f"object {name!r} not found")
            vm = s.version_meta
            conn.execute(delete(vm).where(and_(vm.c.version_id == row.version_id,
                                               vm.c.domain.in_(replace_domains))))
            rows = [{"version_id": row.version_id, "domain": d, "key": k, "value": v}
                    for d, kv in meta.items() for k, v in kv.items()]
            if rows:
                conn.execute(insert(vm), rows)
            values: dict[str, Any] = {"delete_at": delete_at}
            if content_type:
                values["content_type"] = content_type
            if replace_dlo:
                values["dlo_manifest"] = dlo_manifest
            conn.execute(update(s.versions).where(s.versions.c.id == row.version_id)
                         .values(**values))
            row = conn.execute(version_columns().select_from(
                s.objects.join(s.versions, s.versions.c.id == s.objects.c.current_id))
                .where(s.objects.c.id == row.object_id)).one()
            record = version_record(conn, row)
            self._changed(conn, [(container_id, row.object_id)])
            return record

    @retried_write
    @recovery_write
    def delete_object(self, container_id: int, name: str, modified_by: str | None = None,
                      expect: Expect | None = None) -> bool:
        """Delete an object (a deletion marker becomes its current version).  Returns whether
        a visible object was deleted.  `expect`: its precondition (PreconditionFailed)."""
        now = time.time()
        with self._write() as conn:
            self._lock_object(conn, container_id=container_id, name=name)
            row = conn.execute(self._lock(self._visible(
                select(s.objects.c.id, s.versions.c.size, s.versions.c.etag), now).where(and_(
                    s.objects.c.container_id == container_id,
                    s.objects.c.name == name)))).first()
            check_expect(expect, None if row is None else row.etag)
            if row is None:
                return False
            self._mark_deleted(conn, container_id, row.id, row.size, now, modified_by)
            self._changed(conn, [(container_id, row.id)])
            return True

    def _mark_deleted(self, conn: Connection, container_id: int, object_id: int, size: int,
                      now: float, modified_by: str | None) -> None:
        marker = conn.execute(insert(s.versions).values(
            object_id=object_id, vid=secrets.token_hex(16), root=None, size=0, etag="",
            content_type="", created=now, modified_by=modified_by, deleted=True)
        ).inserted_primary_key[0]
        conn.execute(update(s.objects).where(s.objects.c.id == object_id)
                     .values(current_id=marker))
        # Its public link dies with it: an object later put under the same name (the same
        # objects row) is not published by the link of the one deleted.
        conn.execute(delete(s.public_links).where(s.public_links.c.object_id == object_id))
        versioning = conn.execute(select(s.containers.c.versioning)
                                  .where(s.containers.c.id == container_id)).scalar()
        dropped = self._history_bytes(conn, object_id, int(marker)) if versioning == "none" else 0
        self._count(conn, container_id, -1, -size, kept=-dropped)
        self._drop_history_unless_kept(conn, container_id, object_id, int(marker), versioning)

    def _drop_history_unless_kept(self, conn: Connection, container_id: int, object_id: int,
                                  current_id: int, versioning: Any = ASK) -> None:
        """Under the container policy `X-Container-Policy-Versioning: none`, a new version
        replaces the old ones instead of keeping them.  `versioning`: the policy, if the
        caller has read it already."""
        if versioning is ASK:
            versioning = conn.execute(select(s.containers.c.versioning)
                                      .where(s.containers.c.id == container_id)).scalar()
        if versioning == "none":
            self._run_in(conn, h.DROP_HISTORY, {"object_id": object_id,
                                                "current_id": current_id})

    # -- versions ------------------------------------------------------------------------------

    def versions(self, container_id: int, name: str) -> list[VersionSummary]:
        """Every retained content version of an object, oldest first (deletion markers are
        not versions)."""
        o, v = s.objects, s.versions
        with self._read() as conn:
            rows = conn.execute(select(v.c.vid, v.c.created, v.c.size)
                                .select_from(o.join(v, v.c.object_id == o.c.id))
                                .where(and_(o.c.container_id == container_id, o.c.name == name,
                                            v.c.deleted.is_(False)))
                                .order_by(v.c.id)).all()
        return [VersionSummary(r.vid, r.created, r.size) for r in rows]

    def object_version(self, container_id: int, name: str, vid: str) -> ObjectVersion | None:
        """A retained version of this object by its id (ids of other objects give None)."""
        return h.object_version(self._fetch(h.OBJECT_VERSION, container_id=container_id,
                                            name=name, vid=vid))

    def object_at(self, container_id: int, name: str, until: float) -> ObjectVersion | None:
        """The object as it was at time `until` (None if it did not exist then)."""
        rows = self._fetch(h.OBJECT_AT, container_id=container_id, name=name, until=until)
        version = h.object_version(rows)
        if version is None or h.extra(rows) or (version.delete_at is not None
                                                and version.delete_at <= until):
            return None
        return version

    @retried_write
    @recovery_write
    def purge_history(self, container_id: int, name: str | None, until: float) -> int:
        """Delete the versions (not the current ones) created before `until`, of one object or
        of the whole container; returns how many.  Their blocks become garbage."""
        o, v = s.objects, s.versions
        with self._write() as conn:
            q = select(v.c.id, v.c.size).select_from(o.join(v, v.c.object_id == o.c.id)).where(
                and_(o.c.container_id == container_id, v.c.created < until,
                     or_(o.c.current_id.is_(None), v.c.id != o.c.current_id)))
            if name is not None:
                q = q.where(o.c.name == name)
            rows = conn.execute(q).all()
            ids = [r.id for r in rows]
            for i in range(0, len(ids), 500):
                conn.execute(delete(s.versions).where(s.versions.c.id.in_(ids[i:i + 500])))
            # What they held leaves the container's project.
            self._charge_container(conn, container_id, 0, -sum(r.size for r in rows), False)
            return len(ids)

    @retried_write
    @recovery_write
    def reap_expired(self, now: float | None = None, limit: int = 1000) -> int:
        """Delete objects whose X-Delete-At has passed; returns how many."""
        now = time.time() if now is None else now
        v, o = s.versions, s.objects
        with self._write() as conn:
            # Every object's row locked first, in id order (see _count): a new version of
            # one of them waits here for the whole reap, never holding a row it needs.
            rows = conn.execute(self._lock(
                select(o.c.id, o.c.container_id, v.c.size)
                .select_from(o.join(v, v.c.id == o.c.current_id))
                .where(and_(v.c.deleted.is_(False), v.c.delete_at.is_not(None),
                            v.c.delete_at <= now)).order_by(o.c.id).limit(limit))).all()
            for r in rows:
                self._mark_deleted(conn, r.container_id, r.id, r.size, now, None)
            self._changed(conn, [(r.container_id, r.id) for r in rows])
        return len(rows)

    @retried_write
    @recovery_write
    def drop_version(self, version_id: int) -> None:
        """Undo a version just committed (a hashmap upload whose blocks vanished under it):
        the previous version becomes current again, counters follow."""
        o, v = s.objects, s.versions
        with self._write() as conn:
            # The object's row first, as every write of an object (see _count).
            conn.execute(self._lock(select(o.c.id).where(
                o.c.id == select(v.c.object_id).where(v.c.id == version_id)
                .scalar_subquery())))
            row = conn.execute(select(v.c.object_id, v.c.size, o.c.container_id, o.c.current_id)
                               .select_from(v.join(o, o.c.id == v.c.object_id))
                               .where(v.c.id == version_id)).first()
            if row is None:
                return
            conn.execute(delete(v).where(v.c.id == version_id))
            if row.current_id != version_id:
                self._charge_container(conn, row.container_id, 0, -row.size, False)
                return
            prev = conn.execute(select(v.c.id, v.c.size, v.c.deleted)
                                .where(v.c.object_id == row.object_id)
                                .order_by(v.c.id.desc()).limit(1)).first()
            conn.execute(update(o).where(o.c.id == row.object_id)
                         .values(current_id=prev.id if prev else None))
            live_before = prev is not None and not prev.deleted
            self._count(conn, row.container_id, 0 if live_before else -1,
                        (prev.size if live_before else 0) - row.size, kept=-row.size)
            self._changed(conn, [(row.container_id, row.object_id)])

    def list_objects(self, container_id: int, prefix: str = "", marker: str = "",
                     end_marker: str = "", limit: int = 10000, reverse: bool = False,
                     delimiter: str = "", now: float | None = None,
                     until: float | None = None) -> list[ListingEntry]:
        """Visible objects by name; with a delimiter, names that continue past it after the
        prefix collapse into one pseudo-directory entry."""
        now = time.time() if now is None else now
        out: list[ListingEntry] = []
        # A pseudo-directory equal to the marker was the last entry of the page before: as
        # Swift, it is not named again (a client paging by marker would loop on it forever).
        asked_marker = marker
        with self._read() as conn:
            while len(out) < limit:
                q = self._visible(select(s.objects.c.name, s.versions.c.size,
                                         s.versions.c.etag, s.versions.c.content_type,
                                         s.versions.c.created, s.versions.c.slo_manifest),
                                  now, until).where(
                    s.objects.c.container_id == container_id)
                q = name_window(q, s.objects.c.name, prefix, marker, end_marker, reverse)
                rows = conn.execute(q.limit(limit - len(out))).all()
                if not rows:
                    break
                for r in rows:
                    if delimiter:
                        cut = r.name.find(delimiter, len(prefix))
                        if cut >= 0:
                            sub = r.name[:cut + len(delimiter)]
                            if sub != asked_marker and (not out or out[-1].name != sub):
                                out.append(ListingEntry(sub, subdir=True))
                            # Skip every other name under this pseudo-directory.
                            marker = sub if reverse else sub + MAX_CHAR
                            break
                    out.append(ListingEntry(r.name, r.size, r.etag, r.content_type, r.created,
                                            slo_manifest=r.slo_manifest))
                    marker = r.name
                    if len(out) >= limit:
                        break
                else:
                    if len(rows) < limit:
                        break
        return out[:limit]



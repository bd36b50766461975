"""The statements of the catalog's hot paths (every small request's lookups and the commit of
a version), built once with bind parameters (see prepared.py), and the records made from
their rows.  Their column order is the contract with the converters below them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, exists, false, func, null, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import ClauseElement

from pithos.catalog import schema as s
from pithos.catalog.records import (
    AccountAndContainer,
    AccountInfo,
    ContainerInfo,
    ContainerPolicy,
    ObjectVersion,
    TokenOwner,
    UserInfo,
)

a, c, o, v, vm = s.accounts, s.containers, s.objects, s.versions, s.version_meta
p, sh = s.public_links, s.sharing

# -- accounts and containers -------------------------------------------------------------------

_ACCOUNT_COLUMNS = (a.c.id, a.c.name, a.c.created, a.c.quota_bytes, a.c.acl)
_CONTAINER_COLUMNS = (c.c.id, c.c.account_id, c.c.name, c.c.created, c.c.read_acl,
                      c.c.write_acl, c.c.versioning, c.c.quota_bytes, c.c.chunking)

ACCOUNT = select(*_ACCOUNT_COLUMNS).where(a.c.name == bindparam("name"))

CONTAINER = select(*_CONTAINER_COLUMNS).where(and_(c.c.account_id == bindparam("account_id"),
                                                   c.c.name == bindparam("name")))

# One row if the account exists; the container's columns are NULL if it does not.  Whether
# any sharing entry lives in the container comes along, so that the many containers without
# any skip the sharing lookups.
ACCOUNT_AND_CONTAINER = (
    select(*_ACCOUNT_COLUMNS, *_CONTAINER_COLUMNS,
           exists().where(sh.c.container_id == c.c.id).label("has_sharing"))
    .select_from(a.outerjoin(c, and_(c.c.account_id == a.c.id,
                                     c.c.name == bindparam("container"))))
    .where(a.c.name == bindparam("account")))

CONTAINER_ACCOUNT = select(c.c.account_id).where(c.c.id == bindparam("container_id"))

# The quotas of a container and its account, and the container's versioning policy.
CONTAINER_POLICY = (select(c.c.quota_bytes, c.c.account_id,
                           a.c.quota_bytes.label("account_quota"), c.c.versioning,
                           func.coalesce(c.c.project_id, a.c.name))
                    .select_from(c.join(a)).where(c.c.id == bindparam("container_id")))


def account_info(row: Sequence[Any]) -> AccountInfo:
    """An account without its counters and metadata (zero and empty)."""
    return AccountInfo(row[0], row[1], row[2], 0, 0, 0, {}, row[3], row[4])


def container_info(row: Sequence[Any], has_sharing: bool | None = None) -> ContainerInfo:
    """A container without its counters and metadata (zero and empty)."""
    return ContainerInfo(row[0], row[1], row[2], row[3], 0, 0, {}, row[4], row[5], row[6],
                         row[7], has_sharing, row[8])


def account_and_container(row: Sequence[Any] | None) -> AccountAndContainer:
    if row is None:
        return AccountAndContainer(None, None)
    n = len(_ACCOUNT_COLUMNS)
    found = row[n] is not None
    return AccountAndContainer(account_info(row),
                               container_info(row[n:], bool(row[-1])) if found else None)


def container_policy(row: Sequence[Any]) -> ContainerPolicy:
    """A row of CONTAINER_POLICY."""
    return ContainerPolicy(*row)


# -- objects -----------------------------------------------------------------------------------

_VERSION_COLUMNS = (o.c.id, o.c.container_id, o.c.name, o.c.uuid, v.c.id, v.c.vid, v.c.root,
                    v.c.size, v.c.etag, v.c.content_type, v.c.created, v.c.modified_by,
                    v.c.delete_at, v.c.dlo_manifest, v.c.slo_manifest, v.c.inline_data)
_META_COLUMNS = (vm.c.domain, vm.c.key, vm.c.value)
_N = len(_VERSION_COLUMNS)


def _with_meta(*extra: Any) -> Any:
    """A version's columns, one row per metadata entry (one with NULLs if it has none),
    then `extra` columns."""
    return select(*_VERSION_COLUMNS, *_META_COLUMNS, *extra)


def _meta_join(base: Any) -> Any:
    return base.outerjoin(vm, vm.c.version_id == v.c.id)


_VISIBLE = and_(v.c.deleted.is_(False),
                or_(v.c.delete_at.is_(None), v.c.delete_at > bindparam("now")))

# The current version of an object if visible at `now`, with its metadata and the object's
# public token (the owner's GET shows it).
OBJECT = (_with_meta(p.c.token)
          .select_from(_meta_join(o.join(v, v.c.id == o.c.current_id))
                       .outerjoin(p, p.c.object_id == o.c.id))
          .where(and_(o.c.container_id == bindparam("container_id"),
                      o.c.name == bindparam("name"), _VISIBLE))
          .order_by(vm.c.domain, vm.c.key))

OBJECT_VERSION = (_with_meta()
                  .select_from(_meta_join(o.join(v, v.c.object_id == o.c.id)))
                  .where(and_(o.c.container_id == bindparam("container_id"),
                              o.c.name == bindparam("name"), v.c.vid == bindparam("vid"),
                              v.c.deleted.is_(False)))
                  .order_by(vm.c.domain, vm.c.key))

# The newest version created by `until` (deleted or not: the caller decides).
_then = v.alias("then")
OBJECT_AT = (_with_meta(v.c.deleted)
             .select_from(_meta_join(o.join(v, v.c.object_id == o.c.id)))
             .where(and_(o.c.container_id == bindparam("container_id"),
                         o.c.name == bindparam("name"),
                         v.c.id == select(func.max(_then.c.id))
                         .where(and_(_then.c.object_id == o.c.id,
                                     _then.c.created <= bindparam("until")))
                         .scalar_subquery()))
             .order_by(vm.c.domain, vm.c.key))

# The current version of a published object, with the account of its container.
PUBLIC_OBJECT = (_with_meta(c.c.account_id)
                 .select_from(_meta_join(o.join(v, v.c.id == o.c.current_id))
                              .join(p, p.c.object_id == o.c.id)
                              .join(c, c.c.id == o.c.container_id))
                 .where(and_(p.c.token == bindparam("token"), _VISIBLE))
                 .order_by(vm.c.domain, vm.c.key))

PUBLIC_TOKEN = select(p.c.token).where(p.c.object_id == bindparam("object_id"))


def object_version(rows: Sequence[Sequence[Any]]) -> ObjectVersion | None:
    """The version in rows of `_with_meta` (None for no rows)."""
    if not rows:
        return None
    meta: dict[str, dict[str, str]] = {}
    for r in rows:
        if r[_N] is not None:
            meta.setdefault(r[_N], {})[r[_N + 1]] = r[_N + 2]
    (object_id, container_id, name, uuid, version_id, vid, root, size, etag, content_type,
     created, modified_by, delete_at, dlo_manifest, slo_manifest, inline) = rows[0][:_N]
    return ObjectVersion(object_id, container_id, name, uuid, version_id, vid,
                         None if root is None else bytes(root), size, etag, content_type,
                         created, modified_by, delete_at, dlo_manifest, slo_manifest, meta,
                         None if inline is None else bytes(inline))


def extra(rows: Sequence[Sequence[Any]], i: int = 0) -> Any:
    """The `i`th extra column of rows of `_with_meta`."""
    return rows[0][_N + len(_META_COLUMNS) + i]


# -- users and sharing -------------------------------------------------------------------------

TOKEN_USER = (select(s.users.c.id, s.users.c.name, s.users.c.admin, a.c.name,
                     s.tokens.c.expires, s.tokens.c.project_id)
              .select_from(s.tokens.join(s.users).join(a))
              .where(and_(s.tokens.c.token_hash == bindparam("token_hash"),
                          s.tokens.c.expires > bindparam("now"))))


def token_user(row: Sequence[Any]) -> TokenOwner:
    return TokenOwner(UserInfo(row[0], row[3], row[1], bool(row[2]), row[5]), row[4])


_SHARING: dict[int, ClauseElement] = {}


def sharing_paths(n: int) -> tuple[ClauseElement, int]:
    """The sharing entries of a container at any of `n` paths (bound as path0, path1, ...),
    and how many paths it takes: `n` rounded up to a power of two, so that a handful of
    statements serve every depth (the caller repeats a path to fill the rest)."""
    size = 1
    while size < n:
        size *= 2
    if size not in _SHARING:
        _SHARING[size] = select(sh.c.path, sh.c.read, sh.c.write).where(and_(
            sh.c.container_id == bindparam("container_id"),
            sh.c.path.in_([bindparam(f"path{i}") for i in range(size)])))
    return _SHARING[size], size


# -- committing a version ----------------------------------------------------------------------

# The object row, locked on PostgreSQL.  Its current version is read by a statement of its
# own once the lock is held: a locking SELECT that waited for another writer re-reads the
# locked row only, not the rows it joins (READ COMMITTED), so a join would see a stale version.
OBJECT_FOR_WRITE = (select(o.c.id, o.c.current_id, o.c.uuid)
                    .where(and_(o.c.container_id == bindparam("container_id"),
                                o.c.name == bindparam("name")))
                    .with_for_update())

VERSION_STATE = (select(v.c.size, v.c.deleted, v.c.delete_at, v.c.etag)
                 .where(v.c.id == bindparam("version_id")))


def _insert_or_nothing(insert: Any, table: Any, keys: list[Any], **values: Any) -> Any:
    return insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)


# Nothing (no row returned) if the name was taken concurrently (PostgreSQL; SQLite writers
# hold the database lock).
NEW_OBJECT = {
    name: _insert_or_nothing(ins, o, [o.c.container_id, o.c.name],
                             container_id=bindparam("container_id"), name=bindparam("name"),
                             uuid=bindparam("uuid"), current_id=null()).returning(o.c.id)
    for name, ins in (("sqlite", sqlite_insert), ("postgresql", pg_insert))}

GRANT = {name: ins(s.account_blocks).values(account_id=bindparam("account_id"),
                                           hash=bindparam("hash")).on_conflict_do_nothing()
         for name, ins in (("sqlite", sqlite_insert), ("postgresql", pg_insert))}

USER_GRANT = {name: ins(s.user_blocks).values(user_id=bindparam("user_id"),
                                              hash=bindparam("hash")).on_conflict_do_nothing()
              for name, ins in (("sqlite", sqlite_insert), ("postgresql", pg_insert))}

NEW_VERSION = (v.insert().values(
    object_id=bindparam("object_id"), vid=bindparam("vid"), root=bindparam("root"),
    size=bindparam("size"), etag=bindparam("etag"), content_type=bindparam("content_type"),
    created=bindparam("created"), modified_by=bindparam("modified_by"), deleted=false(),
    delete_at=bindparam("delete_at"), dlo_manifest=bindparam("dlo_manifest"),
    slo_manifest=bindparam("slo_manifest"), inline_data=bindparam("inline_data"))
    .returning(v.c.id))

NEW_META = vm.insert().values(version_id=bindparam("version_id"), domain=bindparam("domain"),
                              key=bindparam("key"), value=bindparam("value"))

SET_CURRENT = (o.update().where(o.c.id == bindparam("object_id"))
               .values(current_id=bindparam("current_id")))

NEW_UUID = o.update().where(o.c.id == bindparam("object_id")).values(uuid=bindparam("uuid"))

_st = s.container_stats
COUNT = (_st.update().where(and_(_st.c.container_id == bindparam("container_id"),
                                 _st.c.shard == bindparam("shard")))
         .values(objects=_st.c.objects + bindparam("add_objects"),
                 bytes=_st.c.bytes + bindparam("add_bytes")))

DROP_HISTORY = v.delete().where(and_(v.c.object_id == bindparam("object_id"),
                                     v.c.id != bindparam("current_id")))

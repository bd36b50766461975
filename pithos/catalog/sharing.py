"""Groups, sharing, public links, quotas and block grants in the catalog."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from pithos.catalog import hot_statements as h
from pithos.catalog import schema as s
from pithos.catalog.grant_cache import GrantCache, Tag
from pithos.catalog.prepared import Prepared, _wrapped
from pithos.catalog.records import (
    AccountSharing,
    ContainerPolicy,
    ObjectVersion,
    PublicObject,
    SharingEntry,
    Usage,
)
from pithos.core.errors import NotFound, QuotaExceeded
from pithos.core.hashing import HASH_SIZE

# Grants are read GRANTED_BATCH hashes a statement, by a statement built and compiled once
# (pithos.catalog.prepared) with that many bind parameters, a short batch padded with its
# last hash (an IN of a value twice finds it once).  An IN built from the list each time
# (SQLAlchemy's expanding IN) cost ~1 ms a statement: a fifth of a worker's time on the sync
# bench's first sync, whose ?missing and hashmap PUTs read the grants of every chunk.
GRANTED_BATCH = 500
_GRANTED_NAMES = tuple(f"h{i}" for i in range(GRANTED_BATCH))


def _granted_statement(owner: Any) -> Any:
    hash_col = owner.table.c.hash
    return select(hash_col).where(and_(owner == bindparam("owner_id"), hash_col.in_(
        [bindparam(name) for name in _GRANTED_NAMES])))


def _run_rows(dbapi_conn: Any, p: Prepared, rows: Sequence[Sequence[Any]],
              dialect: Any) -> None:
    """pithos.catalog.prepared.run of a positional statement once for each row, the rows
    given as the driver takes them (in `p.names`' order, no bind processors): a value map
    and its processors per row cost as much as the insert itself (a grant per block, a
    thousand a request)."""
    cur = dbapi_conn.cursor()
    try:
        cur.executemany(p.sql, rows)
    except dialect.loaded_dbapi.Error as exc:
        raise _wrapped(exc, p, rows, dialect) from exc
    finally:
        cur.close()


GRANTED = _granted_statement(s.account_blocks.c.account_id)
USER_GRANTED = _granted_statement(s.user_blocks.c.user_id)

# SQLite: the hashes of a question go as one blob, which the statement cuts back into rows
# itself (one statement, one parameter bound), where the batches above bound and converted
# 500 parameters each: the sync bench's first sync asks about every chunk twice (?missing
# and the hashmap PUT).  Hashes of HASH_SIZE bytes only (any other length: the batches).
_SQLITE_GRANTED = (
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
    f"WHERE i + 1 < length(?2) / {HASH_SIZE}) "
    "SELECT hash FROM {table} WHERE {owner} = ?1 "
    f"AND hash IN (SELECT substr(?2, i * {HASH_SIZE} + 1, {HASH_SIZE}) FROM n)")
_SQLITE_GRANTED_SQL = {
    id(GRANTED): _SQLITE_GRANTED.format(table="account_blocks", owner="account_id"),
    id(USER_GRANTED): _SQLITE_GRANTED.format(table="user_blocks", owner="user_id")}

# The usage of a container without quotas, whose account has none either: not counted.
NO_QUOTA = Usage(0, None, 0, None)


class SharingMixin:
    """Groups, sharing, public links, quotas and the blocks an account may name: a part of
    Catalog (pithos.catalog.catalog)."""

    def set_group(self, account_id: int, name: str, members: Sequence[str]) -> None:
        """Replace the members of one of the account's groups (none: delete it)."""
        g = s.groups
        with self._write() as conn:
            conn.execute(delete(g).where(and_(g.c.account_id == account_id, g.c.name == name)))
            if members:
                conn.execute(insert(g), [{"account_id": account_id, "name": name, "member": m}
                                         for m in dict.fromkeys(members)])

    def groups(self, account_id: int) -> dict[str, list[str]]:
        g = s.groups
        out: dict[str, list[str]] = {}
        with self._read() as conn:
            for name, member in conn.execute(select(g.c.name, g.c.member)
                                             .where(g.c.account_id == account_id)
                                             .order_by(g.c.name, g.c.member)):
                out.setdefault(name, []).append(member)
        return out

    def set_sharing(self, account_id: int, container_id: int, path: str, read: str,
                    write: str) -> None:
        """Set (or, with both lists empty, remove) the sharing of an object or directory."""
        sh = s.sharing
        with self._write() as conn:
            conn.execute(delete(sh).where(and_(sh.c.container_id == container_id,
                                               sh.c.path == path)))
            if read or write:
                conn.execute(insert(sh).values(account_id=account_id, container_id=container_id,
                                               path=path, read=read, write=write))

    def sharing_for(self, container_id: int, name: str) -> SharingEntry | None:
        """The sharing that applies to an object: its own, else the nearest directory's
        above it: a `dir/` path, or a `dir` object of a directory type.  A plain object's
        sharing is its own (sharing `photo` shares nothing under `photo/`)."""
        candidates = [name]
        parts = name.split("/")
        for k in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:k])
            candidates += [prefix + "/", prefix]
        stmt, size = h.sharing_paths(len(candidates))
        paths = {f"path{i}": candidates[min(i, len(candidates) - 1)] for i in range(size)}
        rows = {path: SharingEntry(path, read, write) for path, read, write in self._fetch(
            stmt, container_id=container_id, **paths)}
        for c in candidates:
            if c in rows and (c == name or c.endswith("/") or self._is_directory(container_id, c)):
                return rows[c]
        return None

    def _is_directory(self, container_id: int, name: str) -> bool:
        """Whether the current version of `name` is a directory marker (Pithos'
        application/directory, or application/folder as some clients write it)."""
        version = self.object(container_id, name)  # type: ignore[attr-defined]
        return version is not None and version.content_type.split(";")[0].strip().lower() in (
            "application/directory", "application/folder")

    def container_sharing(self, container_id: int) -> list[SharingEntry]:
        """The container's sharing entries, by path."""
        sh = s.sharing
        with self._read() as conn:
            return [SharingEntry(r.path, r.read, r.write) for r in conn.execute(
                select(sh.c.path, sh.c.read, sh.c.write)
                .where(sh.c.container_id == container_id).order_by(sh.c.path))]

    def all_sharing(self) -> list[AccountSharing]:
        """Every sharing entry, by the account and container that hold it."""
        sh = s.sharing
        with self._read() as conn:
            return [AccountSharing(r.account, r.container, r.read, r.write) for r in conn.execute(
                select(s.accounts.c.name.label("account"), s.containers.c.name.label("container"),
                       sh.c.read, sh.c.write)
                .select_from(sh.join(s.containers).join(s.accounts,
                                                        s.accounts.c.id == sh.c.account_id)))]

    def publish(self, object_id: int) -> str:
        """The object's public token, made (random, unguessable) if it has none."""
        p = s.public_links
        with self._write() as conn:
            found = conn.execute(select(p.c.token).where(p.c.object_id == object_id)).scalar()
            if found:
                return str(found)
            token = secrets.token_urlsafe(24)
            conn.execute(insert(p).values(token=token, object_id=object_id, created=time.time()))
            return token

    def unpublish(self, object_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(s.public_links).where(s.public_links.c.object_id == object_id))

    def public_token(self, object_id: int) -> str | None:
        rows = self._fetch(h.PUBLIC_TOKEN, object_id=object_id)
        return str(rows[0][0]) if rows else None

    def public_object(self, token: str) -> ObjectVersion | None:
        """The current version of the object a public token names."""
        return h.object_version(self._fetch(h.PUBLIC_OBJECT, token=token, now=time.time()))

    def public_object_and_account(self, token: str) -> PublicObject | None:
        """As public_object(), with the id of the account that holds it, in one statement."""
        rows = self._fetch(h.PUBLIC_OBJECT, token=token, now=time.time())
        version = h.object_version(rows)
        return None if version is None else PublicObject(version, int(h.extra(rows)))

    def container_account(self, container_id: int) -> int:
        """The id of the account that holds the container; NotFound if there is none."""
        rows = self._fetch(h.CONTAINER_ACCOUNT, container_id=container_id)
        if not rows:
            raise NotFound(f"no container with id {container_id}")
        return int(rows[0][0])

    def set_account_quota(self, name: str, quota_bytes: int | None) -> None:
        with self._write() as conn:
            account_id = self._ensure_account(conn, name)
            conn.execute(update(s.accounts).where(s.accounts.c.id == account_id)
                         .values(quota_bytes=quota_bytes or None))

    def _check_quota(self, conn: Connection, container_id: int, growth: int,
                     policy: ContainerPolicy | None = None) -> None:
        """Raise QuotaExceeded if `growth` more bytes would exceed the container's or its
        account's quota (inside the committing transaction, which on PostgreSQL first locks
        the quota's row, so concurrent writers cannot both slip under it).  `policy`: the
        row of CONTAINER_POLICY, if read already."""
        if growth <= 0:
            return
        if policy is None:
            policy = h.container_policy(
                self._fetch_in(conn, h.CONTAINER_POLICY, container_id=container_id)[0])
        quota_bytes, account_id = policy.quota_bytes, policy.account_id
        account_quota = policy.account_quota_bytes
        if not quota_bytes and not account_quota:
            return  # the common case: one cheap query
        st = s.container_stats
        if not self.is_sqlite:
            # The usage is a sum over stat shards, read in READ COMMITTED: without a lock
            # two commits on two connections each miss the other's growth and both pass.
            # Commits checking one quota take turns on the row it lives on (the one-call
            # commit does the same: pg_functions.py, migration 15).  NO KEY: the foreign-key
            # checks of inserts naming the row are not held up.
            if quota_bytes:
                conn.execute(select(s.containers.c.id)
                             .where(s.containers.c.id == container_id)
                             .with_for_update(key_share=True))
            if account_quota:
                conn.execute(select(s.accounts.c.id)
                             .where(s.accounts.c.id == account_id)
                             .with_for_update(key_share=True))
        if quota_bytes:
            used = conn.execute(select(func.coalesce(func.sum(st.c.bytes), 0))
                                .where(st.c.container_id == container_id)).scalar_one()
            if used + growth > quota_bytes:
                raise QuotaExceeded(f"container quota of {quota_bytes} bytes exceeded")
        if account_quota:
            used = conn.execute(select(func.coalesce(func.sum(st.c.bytes), 0))
                                .select_from(st.join(s.containers))
                                .where(s.containers.c.account_id == account_id)).scalar_one()
            if used + growth > account_quota:
                raise QuotaExceeded(f"account quota of {account_quota} bytes exceeded")

    def usage(self, container_id: int) -> Usage:
        """The bytes the container and its account hold, and their quotas; NotFound if there
        is no such container."""
        # Kept briefly in a server worker as the account-and-container lookup is
        # (CatalogEngine._cached_info): a quota is looked up by every upload's early refusal,
        # and the commit checks it again in its own transaction whatever this said.
        found = self._cached_info(
            ("policy", container_id),
            lambda: self._fetch(h.CONTAINER_POLICY, container_id=container_id), bool)
        if not found:
            raise NotFound(f"no container with id {container_id}")
        quota_bytes, account_id, account_quota = found[0][:3]
        if not quota_bytes and not account_quota:
            return NO_QUOTA  # the usage does not matter (the common case)
        st = s.container_stats
        with self._read() as conn:
            cbytes = conn.execute(select(func.coalesce(func.sum(st.c.bytes), 0))
                                  .where(st.c.container_id == container_id)).scalar_one()
            abytes = conn.execute(select(func.coalesce(func.sum(st.c.bytes), 0))
                                  .select_from(st.join(s.containers))
                                  .where(s.containers.c.account_id == account_id)
                                  ).scalar_one()
        return Usage(int(cbytes), quota_bytes, int(abytes), account_quota)

    # -- blocks an account may name (dedup without leaking) ------------------------------------

    def _grant_cache(self) -> GrantCache | None:
        """The grants this server worker keeps (pithos/catalog/grant_cache.py); None outside
        a server worker, where lookups are not cached either."""
        if not self._info_ttl:
            return None
        cache: GrantCache | None = self.__dict__.get("_grants")
        if cache is None:
            cache = self.__dict__["_grants"] = GrantCache(self._grant_tag)
        return cache

    def _grant_tag(self) -> Tag:
        return (self._stamp.read() if self._stamp is not None else 0, self._info_gen)

    def grant_blocks(self, account_id: int, hashes: Sequence[bytes]) -> None:
        """Record that the account may name these blocks by hash (it sent their bytes or read
        a map that names them)."""
        cache = self._grant_cache()
        tag = cache.tag() if cache is not None else None
        # (No account, container or sharing row changes: the cached lookups of every process
        # stay, where a grant after each POST ?blocks made every worker load them again.)
        # Not synced: a grant a crash loses only makes the account send those blocks again
        # (a hashmap upload naming them is told they are missing, as for any block it may
        # not name); it becomes durable with the next synced write of the catalog.  Each
        # POST ?blocks waited for a WAL sync of its own on the pool.
        with self._write(keeps_info=True, durable=False) as conn:
            self._grant(conn, account_id, hashes)
        if cache is not None and tag is not None:
            cache.keep("account", account_id, hashes, tag)

    def _grant(self, conn: Connection, account_id: int, hashes: Sequence[bytes]) -> None:
        # Sorted: inserting a row another uncommitted insert made waits for that writer, so
        # two uploads granting shared blocks in opposite orders would wait for each other.
        unique = sorted(set(hashes))
        if not unique:
            return
        stmt = h.GRANT[self._dialect.name]
        p = self._statements[stmt]
        if p.names == ("account_id", "hash"):
            # (SQLite: rows as the driver takes them; bytes bind as a BLOB as they are.)
            _run_rows(conn.connection.dbapi_connection, p,
                      [(account_id, block) for block in unique], self._dialect)
            return
        self._run_in(conn, stmt, [{"account_id": account_id, "hash": block}
                                  for block in unique])

    def grant_user_blocks(self, user_id: int, hashes: Sequence[bytes]) -> None:
        """Record that this user (not its account's admin) may name these blocks by hash."""
        unique = list(dict.fromkeys(hashes))
        if not unique:
            return
        cache = self._grant_cache()
        tag = cache.tag() if cache is not None else None
        with self._write(keeps_info=True, durable=False) as conn:  # (as grant_blocks)
            self._run_in(conn, h.USER_GRANT[self._dialect.name],
                         [{"user_id": user_id, "hash": block} for block in unique])
        if cache is not None and tag is not None:
            cache.keep("user", user_id, unique, tag)

    def granted_user_blocks(self, user_id: int, hashes: Sequence[bytes]) -> set[bytes]:
        """Which of these blocks the user may name (its own grants only)."""
        return self._granted(USER_GRANTED, user_id, hashes)

    def granted_blocks(self, account_id: int, hashes: Sequence[bytes]) -> set[bytes]:
        """Which of these blocks the account may name."""
        return self._granted(GRANTED, account_id, hashes)

    def _granted(self, stmt: Any, owner_id: int, hashes: Sequence[bytes]) -> set[bytes]:
        """The hashes among `hashes` that the owner `owner_id` holds by `stmt` (GRANTED or
        USER_GRANTED): those this worker keeps, and the catalog's answer for the others."""
        unique = list(dict.fromkeys(hashes))
        cache = self._grant_cache()
        if cache is None or not unique:
            return self._granted_rows(stmt, owner_id, unique)
        table = "account" if stmt is GRANTED else "user"
        tag = cache.tag()
        kept = cache.known(table, owner_id, unique, tag)
        found = self._granted_rows(stmt, owner_id, [h for h in unique if h not in kept])
        cache.keep(table, owner_id, found, tag)
        return kept | found

    def _granted_rows(self, stmt: Any, owner_id: int, unique: Sequence[bytes]) -> set[bytes]:
        """`_granted` by the catalog's rows, GRANTED_BATCH hashes a statement."""
        found: set[bytes] = set()
        if not unique:
            return found
        if self._dialect.name == "sqlite" and all(len(h) == HASH_SIZE for h in unique):
            with self._read() as conn:
                cur = conn.connection.dbapi_connection.cursor()
                try:
                    cur.execute(_SQLITE_GRANTED_SQL[id(stmt)], (owner_id, b"".join(unique)))
                    return {bytes(row[0]) for row in cur.fetchall()}
                finally:
                    cur.close()
        with self._read() as conn:
            for i in range(0, len(unique), GRANTED_BATCH):
                part = unique[i:i + GRANTED_BATCH]
                part += [part[-1]] * (GRANTED_BATCH - len(part))
                values: dict[str, Any] = dict(zip(_GRANTED_NAMES, part, strict=True))
                found.update(bytes(row[0]) for row in self._fetch_in(
                    conn, stmt, owner_id=owner_id, **values))
        return found

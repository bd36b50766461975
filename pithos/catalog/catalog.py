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

import os
import random
import secrets
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import ArgumentError, NoResultFound
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from pithos.catalog import hot_statements as h
from pithos.catalog import schema as s
from pithos.catalog.prepared import SnapshotReads, Statements, fetch, run
from pithos.catalog.records import (
    AccountInfo,
    ContainerInfo,
    ListingEntry,
    ObjectVersion,
    UserInfo,
)
from pithos.catalog.space import (
    SpaceReserve,
    disk_full_as_no_space,
    recovery_write,
    release_and_retry,
)
from pithos.catalog.wal_sync import WalSync
from pithos.core.errors import BackendError, Conflict, InvalidArgument, NotFound, QuotaExceeded

STAT_SHARDS = 8
# How long a SQLite connection waits for a lock before giving up with "database is locked".
BUSY_TIMEOUT_MS = 30000
# "Not read yet" for an optional argument whose None is a value.
_ASK = object()
# Upper bound of every string that can follow a prefix in a listing (used to skip a subdir).
_MAX_CHAR = "\U0010ffff"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL: no fsync inside COMMIT (the catalog syncs the WAL itself before a write
        # returns: wal_sync.py), and the WAL synced before and the database file after every
        # checkpoint, whichever connection runs it.  Every connection needs it: one with OFF
        # could checkpoint acknowledged commits into an unsynced database file and let the
        # WAL be overwritten.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        mode = conn.info.get("begin_mode", "DEFERRED")
        if mode == "IMMEDIATE":
            _begin_immediate(conn.connection.dbapi_connection)
        else:
            conn.exec_driver_sql(f"BEGIN {mode}")


def _begin_immediate(dbapi_conn: Any) -> None:
    """BEGIN IMMEDIATE, waiting for the database's write lock with time.sleep instead of in
    SQLite's busy handler.  The handler sleeps inside the C call: under a gevent server that
    stops every request of the worker while another process commits (measured: 4 KiB PUTs of
    16 clients on two workers waited most of their time there).  Monkey-patched, time.sleep
    lets the worker's other requests run meanwhile."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0001
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=0")
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.004)
    finally:
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()


def missing_driver(url: str, exc: ImportError) -> str:
    """One line naming the database driver a catalog URL needs and how to install it."""
    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgresql") and (exc.name or "").startswith("psycopg"):
        return (f"a {scheme}:// catalog needs the psycopg driver, which is not installed: "
                "run scripts/setup, or pip install 'psycopg[binary]>=3.1'")
    return f"the driver for a {scheme}:// catalog is not installed (no module {exc.name!r})"


class Catalog:
    """The catalog at a SQLAlchemy URL (e.g. ``sqlite:///data/catalog.sqlite`` or
    ``postgresql://user@host/db``).  Creates or upgrades the schema on open."""

    def __init__(self, url: str, executor: Executor | None = None,
                 reserve_bytes: int = 0) -> None:
        """`executor` runs the WAL syncs of an SQLite catalog (see WalSync); without one a
        writer syncs on its own thread.  `reserve_bytes`: the room an SQLite catalog keeps
        beside its database for getting out of a full disk (pithos/catalog/space.py)."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
        try:
            self.engine = create_engine(url, **kwargs)
        except ImportError as exc:
            raise BackendError(missing_driver(url, exc)) from None
        except ArgumentError as exc:
            raise InvalidArgument(f"bad catalog URL: {exc}") from None
        self._lease_engine: Engine | None = None
        self._read_engine: Engine | None = None
        self._wal_sync: WalSync | None = None
        reserve = None
        if self.is_sqlite:
            _sqlite_setup(self.engine)
            database = self.engine.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                self._wal_sync = WalSync(os.path.abspath(database), executor)
                if reserve_bytes:
                    reserve = SpaceReserve(os.path.abspath(database) + "-reserve",
                                           reserve_bytes)
            # Lease rows are not synced when written (see _lease_write).
            self._lease_engine = create_engine(url)
            _sqlite_setup(self._lease_engine)
            # The sqlite3 module's connections are in autocommit (see _sqlite_setup).
            self._reads = SnapshotReads(self.engine)
        else:
            # Connections of their own, in autocommit, for reads of one statement; no ping
            # before each use (SnapshotReads retries a read that finds its connection dead).
            self._read_engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=5,
                                              max_overflow=10)
            self._reads = SnapshotReads(self._read_engine)
        self._dialect = self.engine.dialect
        self._statements = Statements(self._dialect)
        # Opening is a way out of a full disk too (a reader may have to create SQLite's
        # shared-memory file).  The reserve is made by writes only, not by a mere open.
        self._reserve: SpaceReserve | None = None
        self.schema_found = release_and_retry(reserve, lambda: s.migrate(self._write))
        self._reserve = reserve

    def close(self) -> None:
        self.engine.dispose()
        for engine in (self._lease_engine, self._read_engine):
            if engine is not None:
                engine.dispose()
        if self._wal_sync is not None:
            self._wal_sync.close()

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction, durable when the block exits without an error (every
        write of the catalog goes through here: callers acknowledge what it returns).  A
        full disk raises NoSpace, and nothing was written."""
        with disk_full_as_no_space(), self.engine.connect() as conn:
            conn.info["begin_mode"] = "IMMEDIATE"
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop("begin_mode", None)
        # After the connection went back to the pool: other writers commit meanwhile and
        # share the sync.
        if self._wal_sync is not None:
            self._wal_sync.sync()
        if self._reserve is not None:
            self._reserve.ensure()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with disk_full_as_no_space(), self.engine.connect() as conn, conn.begin():
            yield conn

    def _fetch(self, stmt: Any, **values: Any) -> list[Any]:
        """The rows of one of hot_statements, read alone outside any transaction."""
        return self._reads.fetch(self._statements[stmt], values)

    def _fetch_in(self, conn: Connection, stmt: Any, **values: Any) -> list[Any]:
        """The rows of one of hot_statements, run in `conn`'s transaction."""
        return fetch(conn.connection.dbapi_connection, self._statements[stmt], values,
                     self._dialect)

    def _run_in(self, conn: Connection, stmt: Any,
                values: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> int:
        """Run one of hot_statements (that returns no rows) in `conn`'s transaction, once
        or, for a list of value maps, once for each."""
        return run(conn.connection.dbapi_connection, self._statements[stmt], values,
                   self._dialect)

    def _lock(self, query: Any) -> Any:
        """Row lock for a read that decides a write (PostgreSQL; SQLite is already locked)."""
        return query if self.is_sqlite else query.with_for_update()

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

    # -- users and tokens ----------------------------------------------------------------------

    def add_user(self, account: str, user: str, key_hash: str, admin: bool) -> UserInfo:
        with self._write() as conn:
            account_id = self._ensure_account(conn, account)
            existing = conn.execute(select(s.users.c.id).where(and_(
                s.users.c.account_id == account_id, s.users.c.name == user))).scalar()
            if existing is not None:
                conn.execute(update(s.users).where(s.users.c.id == existing)
                             .values(key_hash=key_hash, admin=admin, initial_key=False))
                conn.execute(delete(s.tokens).where(s.tokens.c.user_id == existing))
                user_id = int(existing)
            else:
                user_id = int(conn.execute(insert(s.users).values(
                    account_id=account_id, name=user, key_hash=key_hash, admin=admin,
                    created=time.time())).inserted_primary_key[0])
        return UserInfo(user_id, account, user, admin)

    def set_initial_key(self, account: str, user: str, key_hash: str,
                        admin: bool) -> UserInfo | None:
        """A server's start: on a catalog with no user, add this one with an initial key; if
        this user still has an initial key (never used to log in), replace it.  None when
        neither (the key is in use, or other users exist).  Atomic: of several nodes starting
        at once on an empty catalog, one adds its user (SQLite: the write lock; PostgreSQL: a
        table lock held until the commit)."""
        try:
            with self._write() as conn:
                if not self.is_sqlite:
                    conn.execute(text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))
                if conn.execute(select(s.users.c.id).limit(1)).first() is None:
                    account_id = self._ensure_account(conn, account)
                    user_id = int(conn.execute(insert(s.users).values(
                        account_id=account_id, name=user, key_hash=key_hash, admin=admin,
                        initial_key=True, created=time.time())).inserted_primary_key[0])
                    return UserInfo(user_id, account, user, admin)
                row = conn.execute(
                    select(s.users.c.id, s.users.c.admin).select_from(s.users.join(s.accounts))
                    .where(and_(s.accounts.c.name == account, s.users.c.name == user,
                                s.users.c.initial_key))).first()
                if row is None:
                    return None
                conn.execute(update(s.users).where(s.users.c.id == row.id)
                             .values(key_hash=key_hash))
                return UserInfo(int(row.id), account, user, bool(row.admin))
        except SQLIntegrityError:  # another node's user came first
            return None

    @recovery_write
    def delete_user(self, account: str, user: str) -> bool:
        with self._write() as conn:
            found = conn.execute(select(s.users.c.id).select_from(s.users.join(s.accounts))
                                 .where(and_(s.accounts.c.name == account,
                                             s.users.c.name == user))).scalar()
            if found is None:
                return False
            conn.execute(delete(s.tokens).where(s.tokens.c.user_id == found))
            conn.execute(delete(s.users).where(s.users.c.id == found))
            return True

    def users(self) -> list[UserInfo]:
        with self._read() as conn:
            rows = conn.execute(select(s.users.c.id, s.accounts.c.name.label("account"),
                                       s.users.c.name, s.users.c.admin)
                                .select_from(s.users.join(s.accounts))
                                .order_by(s.accounts.c.name, s.users.c.name)).all()
        return [UserInfo(r.id, r.account, r.name, bool(r.admin)) for r in rows]

    def user_credentials(self, account: str, user: str) -> tuple[UserInfo, str] | None:
        with self._read() as conn:
            row = conn.execute(select(s.users.c.id, s.users.c.key_hash, s.users.c.admin)
                               .select_from(s.users.join(s.accounts))
                               .where(and_(s.accounts.c.name == account,
                                           s.users.c.name == user))).first()
        if row is None:
            return None
        return UserInfo(row.id, account, user, bool(row.admin)), row.key_hash

    @recovery_write
    def add_token(self, token_hash: str, user_id: int, expires: float) -> None:
        with self._write() as conn:
            conn.execute(insert(s.tokens).values(token_hash=token_hash, user_id=user_id,
                                                 expires=expires))
            # The key has been used: the server stops showing (and replacing) it.
            conn.execute(update(s.users).where(and_(s.users.c.id == user_id,
                                                    s.users.c.initial_key))
                         .values(initial_key=False))
            # Expired tokens are of no use to anyone; drop a few on every login.
            old = select(s.tokens.c.token_hash).where(s.tokens.c.expires < time.time()).limit(100)
            conn.execute(delete(s.tokens).where(s.tokens.c.token_hash.in_(old)))

    def token_user(self, token_hash: str, now: float) -> tuple[UserInfo, float] | None:
        rows = self._fetch(h.TOKEN_USER, token_hash=token_hash, now=now)
        return h.token_user(rows[0]) if rows else None

    # -- containers ----------------------------------------------------------------------------

    def container(self, account_id: int, name: str, detail: bool = True
                  ) -> ContainerInfo | None:
        """The container; without `detail` its counters and metadata are left out."""
        if not detail:
            rows = self._fetch(h.CONTAINER, account_id=account_id, name=name)
            return h.container_info(rows[0]) if rows else None
        with self._read() as conn:
            return self._container(conn, account_id, name, detail)

    def account_and_container(self, account: str, container: str
                              ) -> tuple[AccountInfo | None, ContainerInfo | None]:
        """The account and its container by name, as account(detail=False) and
        container(detail=False) (None for either that does not exist), in one statement;
        the container also tells whether it holds any sharing entry (`has_sharing`)."""
        rows = self._fetch(h.ACCOUNT_AND_CONTAINER, account=account, container=container)
        return h.account_and_container(rows[0] if rows else None)

    def _container(self, conn: Connection, account_id: int, name: str,
                   detail: bool = True) -> ContainerInfo | None:
        row = conn.execute(select(s.containers).where(and_(
            s.containers.c.account_id == account_id, s.containers.c.name == name))).first()
        if row is None:
            return None
        if not detail:
            return ContainerInfo(row.id, row.account_id, row.name, row.created, 0, 0, {},
                                 row.read_acl, row.write_acl, row.versioning, row.quota_bytes)
        objs, size = conn.execute(
            select(func.coalesce(func.sum(s.container_stats.c.objects), 0),
                   func.coalesce(func.sum(s.container_stats.c.bytes), 0))
            .where(s.container_stats.c.container_id == row.id)).one()
        meta = dict(conn.execute(select(s.container_meta.c.key, s.container_meta.c.value).where(
            s.container_meta.c.container_id == row.id)).all())
        return ContainerInfo(row.id, row.account_id, row.name, row.created, int(objs),
                             int(size), meta, row.read_acl, row.write_acl, row.versioning,
                             row.quota_bytes)

    def create_container(self, account_id: int, name: str,
                         meta: Mapping[str, str | None] | None = None,
                         **policy: Any) -> bool:
        """Create a container, or update an existing one's metadata and policy.  Returns
        whether it was created."""
        with self._write() as conn:
            found = conn.execute(select(s.containers.c.id).where(and_(
                s.containers.c.account_id == account_id, s.containers.c.name == name))).scalar()
            created = found is None
            if created:
                found = conn.execute(insert(s.containers).values(
                    account_id=account_id, name=name, created=time.time(),
                    **policy)).inserted_primary_key[0]
                conn.execute(insert(s.container_stats), [
                    {"container_id": found, "shard": i, "objects": 0, "bytes": 0}
                    for i in range(STAT_SHARDS)])
            elif policy:
                conn.execute(update(s.containers).where(s.containers.c.id == found)
                             .values(**policy))
            if meta:
                self._update_meta(conn, s.container_meta, s.container_meta.c.container_id,
                                  int(found), meta)
        return created

    def update_container(self, container_id: int, meta: Mapping[str, str | None] | None = None,
                         **policy: Any) -> None:
        with self._write() as conn:
            if policy:
                conn.execute(update(s.containers).where(s.containers.c.id == container_id)
                             .values(**policy))
            if meta:
                self._update_meta(conn, s.container_meta, s.container_meta.c.container_id,
                                  container_id, meta)

    @recovery_write
    def delete_container(self, container_id: int) -> None:
        """Delete an empty container; Conflict if it holds a visible object."""
        now = time.time()
        with self._write() as conn:
            live = conn.execute(self._visible(select(s.objects.c.id), now).where(
                s.objects.c.container_id == container_id).limit(1)).first()
            if live is not None:
                raise Conflict("container not empty")
            conn.execute(delete(s.containers).where(s.containers.c.id == container_id))

    def list_containers(self, account_id: int, prefix: str = "", marker: str = "",
                        end_marker: str = "", limit: int = 10000, reverse: bool = False,
                        until: float | None = None) -> list[tuple[str, int, int, float]]:
        """(name, objects, bytes, created) of containers, by name; with `until`, the
        containers that existed then (and still do) with their usage at that time."""
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
        q = _name_window(q, c.c.name, prefix, marker, end_marker, reverse).limit(limit)
        with self._read() as conn:
            return [(r.name, int(r.objects or 0), int(r.bytes or 0), r.created)
                    for r in conn.execute(q)]

    def _containers_at(self, account_id: int, prefix: str, marker: str, end_marker: str,
                       limit: int, reverse: bool, until: float
                       ) -> list[tuple[str, int, int, float]]:
        c, v = s.containers, s.versions
        q = select(c.c.id, c.c.name, c.c.created).where(and_(c.c.account_id == account_id,
                                                             c.c.created <= until))
        q = _name_window(q, c.c.name, prefix, marker, end_marker, reverse).limit(limit)
        out = []
        with self._read() as conn:
            for row in conn.execute(q).all():
                n, size = conn.execute(self._visible(
                    select(func.count(), func.coalesce(func.sum(v.c.size), 0)), until, until)
                    .where(s.objects.c.container_id == row.id)).one()
                out.append((row.name, int(n), int(size), row.created))
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
        found = self.object_and_public_token(container_id, name, now)
        return None if found is None else found[0]

    def object_and_public_token(self, container_id: int, name: str, now: float | None = None
                                ) -> tuple[ObjectVersion, str | None] | None:
        """As object(), with the object's public token (None if unpublished), in one
        statement."""
        rows = self._fetch(h.OBJECT, container_id=container_id, name=name,
                           now=time.time() if now is None else now)
        version = h.object_version(rows)
        return None if version is None else (version, h.extra(rows))

    def put_version(self, container_id: int, name: str, *, root: bytes, size: int, etag: str,
                    content_type: str, meta: Mapping[str, Mapping[str, str]],
                    modified_by: str | None = None, delete_at: float | None = None,
                    dlo_manifest: str | None = None, slo_manifest: str | None = None,
                    created: float | None = None,
                    grant: tuple[int, Sequence[bytes]] | None = None,
                    sources: Sequence[int] = ()) -> ObjectVersion:
        """Make a new version the current one, atomically with the usage counters (and with
        `grant`: (account id, block hashes) it may name from now on).  The map it names must
        already be durable (write ordering).  `sources`: ids of the versions whose maps it
        shares without having put or touched their blocks (a copy, an SLO's segments, the
        version an in-place update starts from); Conflict if one of them is gone by now,
        since a collector may then have taken blocks the new map names."""
        now = time.time()
        with self._write() as conn:
            if sources:
                wanted = set(sources)
                found = conn.execute(select(func.count()).select_from(s.versions).where(
                    s.versions.c.id.in_(wanted))).scalar()
                if found != len(wanted):
                    raise Conflict("a source of this object was removed meanwhile; retry")
            if grant is not None:
                self._grant(conn, *grant)
            obj_id, uuid, old_size = self._object_for_write(conn, container_id, name, now)
            vid = secrets.token_hex(16)
            version_id = int(self._fetch_in(
                conn, h.NEW_VERSION, object_id=obj_id, vid=vid, root=root, size=size,
                etag=etag, content_type=content_type, created=created or now,
                modified_by=modified_by, delete_at=delete_at, dlo_manifest=dlo_manifest,
                slo_manifest=slo_manifest)[0][0])
            rows = [{"version_id": version_id, "domain": domain, "key": k, "value": v}
                    for domain, kv in meta.items() for k, v in kv.items()]
            if rows:
                self._run_in(conn, h.NEW_META, rows)
            self._run_in(conn, h.SET_CURRENT, {"object_id": obj_id, "current_id": version_id})
            policy = self._fetch_in(conn, h.CONTAINER_POLICY, container_id=container_id)[0]
            self._check_quota(conn, container_id, size - (old_size or 0), policy)
            self._count(conn, container_id, 0 if old_size is not None else 1,
                        size - (old_size or 0))
            self._drop_history_unless_kept(conn, container_id, obj_id, version_id,
                                           policy[3])
        return ObjectVersion(obj_id, container_id, name, uuid, version_id, vid, root, size,
                             etag, content_type, created or now, modified_by, delete_at,
                             dlo_manifest, slo_manifest,
                             {d: dict(kv) for d, kv in meta.items() if kv})

    def _object_for_write(self, conn: Connection, container_id: int, name: str,
                          now: float) -> tuple[int, str, int | None]:
        """(object id, its UUID, size of its visible current version or None), creating the
        object row (locked on PostgreSQL); a recreated object (after a delete or expiry)
        gets a new UUID."""
        found = self._fetch_in(conn, h.OBJECT_FOR_WRITE, container_id=container_id, name=name)
        if not found:
            uuid = str(uuidlib.uuid4())
            made = self._fetch_in(conn, h.NEW_OBJECT[self._dialect.name],
                                  container_id=container_id, name=name, uuid=uuid)
            if made:
                return int(made[0][0]), uuid, None
            # Created concurrently (PostgreSQL): the insert waited for that writer's commit.
            found = self._fetch_in(conn, h.OBJECT_FOR_WRITE, container_id=container_id,
                                   name=name)
        obj_id, current_id, uuid = found[0]
        current = (self._fetch_in(conn, h.VERSION_STATE, version_id=current_id)
                   if current_id is not None else None)
        if not current:
            return int(obj_id), uuid, None
        size, deleted, delete_at = current[0]
        if deleted or (delete_at is not None and delete_at <= now):
            if not deleted:  # expired but not reaped: its usage is still counted
                self._count(conn, container_id, -1, -size)
            uuid = str(uuidlib.uuid4())
            self._run_in(conn, h.NEW_UUID, {"object_id": obj_id, "uuid": uuid})
            return int(obj_id), uuid, None
        return int(obj_id), uuid, int(size)

    def _count(self, conn: Connection, container_id: int, objects: int, size: int) -> None:
        if objects == 0 and size == 0:
            return
        self._run_in(conn, h.COUNT, {"container_id": container_id,
                                     "shard": random.randrange(STAT_SHARDS),
                                     "add_objects": objects, "add_bytes": size})

    def update_object_meta(self, container_id: int, name: str,
                           meta: Mapping[str, Mapping[str, str]], *,
                           delete_at: float | None, content_type: str | None = None,
                           replace_domains: tuple[str, ...] = ("user", "sys")) -> ObjectVersion:
        """Replace the metadata of the current version in place (Swift POST): the content
        version is not copied."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(self._lock(self._visible(_version_columns(), now).where(and_(
                s.objects.c.container_id == container_id, s.objects.c.name == name)))).first()
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
            conn.execute(update(s.versions).where(s.versions.c.id == row.version_id)
                         .values(**values))
            row = conn.execute(_version_columns().select_from(
                s.objects.join(s.versions, s.versions.c.id == s.objects.c.current_id))
                .where(s.objects.c.id == row.object_id)).one()
            return _version(conn, row)

    @recovery_write
    def delete_object(self, container_id: int, name: str, modified_by: str | None = None
                      ) -> bool:
        """Delete an object (a deletion marker becomes its current version).  Returns whether
        a visible object was deleted."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(self._lock(self._visible(
                select(s.objects.c.id, s.versions.c.size), now).where(and_(
                    s.objects.c.container_id == container_id,
                    s.objects.c.name == name)))).first()
            if row is None:
                return False
            self._mark_deleted(conn, container_id, row.id, row.size, now, modified_by)
            return True

    def _mark_deleted(self, conn: Connection, container_id: int, object_id: int, size: int,
                      now: float, modified_by: str | None) -> None:
        marker = conn.execute(insert(s.versions).values(
            object_id=object_id, vid=secrets.token_hex(16), root=None, size=0, etag="",
            content_type="", created=now, modified_by=modified_by, deleted=True)
        ).inserted_primary_key[0]
        conn.execute(update(s.objects).where(s.objects.c.id == object_id)
                     .values(current_id=marker))
        self._count(conn, container_id, -1, -size)
        self._drop_history_unless_kept(conn, container_id, object_id, int(marker))

    def _drop_history_unless_kept(self, conn: Connection, container_id: int, object_id: int,
                                  current_id: int, versioning: Any = _ASK) -> None:
        """Under the container policy `X-Container-Policy-Versioning: none`, a new version
        replaces the old ones instead of keeping them.  `versioning`: the policy, if the
        caller has read it already."""
        if versioning is _ASK:
            versioning = conn.execute(select(s.containers.c.versioning)
                                      .where(s.containers.c.id == container_id)).scalar()
        if versioning == "none":
            self._run_in(conn, h.DROP_HISTORY, {"object_id": object_id,
                                                "current_id": current_id})

    # -- versions ------------------------------------------------------------------------------

    def versions(self, container_id: int, name: str) -> list[tuple[str, float, int]]:
        """(version id, timestamp, size) of every retained content version of an object,
        oldest first (deletion markers are not versions)."""
        o, v = s.objects, s.versions
        with self._read() as conn:
            rows = conn.execute(select(v.c.vid, v.c.created, v.c.size)
                                .select_from(o.join(v, v.c.object_id == o.c.id))
                                .where(and_(o.c.container_id == container_id, o.c.name == name,
                                            v.c.deleted.is_(False)))
                                .order_by(v.c.id)).all()
        return [(r.vid, r.created, r.size) for r in rows]

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

    @recovery_write
    def purge_history(self, container_id: int, name: str | None, until: float) -> int:
        """Delete the versions (not the current ones) created before `until`, of one object or
        of the whole container; returns how many.  Their blocks become garbage."""
        o, v = s.objects, s.versions
        with self._write() as conn:
            q = select(v.c.id).select_from(o.join(v, v.c.object_id == o.c.id)).where(and_(
                o.c.container_id == container_id, v.c.created < until,
                or_(o.c.current_id.is_(None), v.c.id != o.c.current_id)))
            if name is not None:
                q = q.where(o.c.name == name)
            ids = list(conn.execute(q).scalars())
            for i in range(0, len(ids), 500):
                conn.execute(delete(s.versions).where(s.versions.c.id.in_(ids[i:i + 500])))
            return len(ids)

    @recovery_write
    def reap_expired(self, now: float | None = None, limit: int = 1000) -> int:
        """Delete objects whose X-Delete-At has passed; returns how many."""
        now = time.time() if now is None else now
        v, o = s.versions, s.objects
        with self._write() as conn:
            rows = conn.execute(
                select(o.c.id, o.c.container_id, v.c.size)
                .select_from(o.join(v, v.c.id == o.c.current_id))
                .where(and_(v.c.deleted.is_(False), v.c.delete_at.is_not(None),
                            v.c.delete_at <= now)).limit(limit)).all()
            for r in rows:
                self._mark_deleted(conn, r.container_id, r.id, r.size, now, None)
        return len(rows)

    # -- groups, sharing, public links, quotas --------------------------------------------------

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

    def sharing_for(self, container_id: int, name: str) -> tuple[str, str, str] | None:
        """(path, read, write) of the sharing that applies to an object: its own, else the
        nearest pseudo-directory's above it."""
        candidates = [name]
        parts = name.split("/")
        for k in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:k])
            candidates += [prefix + "/", prefix]
        stmt, size = h.sharing_paths(len(candidates))
        paths = {f"path{i}": candidates[min(i, len(candidates) - 1)] for i in range(size)}
        rows = {path: (path, read, write) for path, read, write in self._fetch(
            stmt, container_id=container_id, **paths)}
        for c in candidates:
            if c in rows:
                return rows[c]
        return None

    def container_sharing(self, container_id: int) -> list[tuple[str, str, str]]:
        sh = s.sharing
        with self._read() as conn:
            return [(r.path, r.read, r.write) for r in conn.execute(
                select(sh.c.path, sh.c.read, sh.c.write)
                .where(sh.c.container_id == container_id).order_by(sh.c.path))]

    def all_sharing(self) -> list[tuple[str, str, str, str]]:
        """(owner account, container, read, write) of every sharing entry."""
        sh = s.sharing
        with self._read() as conn:
            return [(r.account, r.container, r.read, r.write) for r in conn.execute(
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
        found = self.public_object_and_account(token)
        return None if found is None else found[0]

    def public_object_and_account(self, token: str) -> tuple[ObjectVersion, int] | None:
        """As public_object(), with the id of the account that holds it, in one statement."""
        rows = self._fetch(h.PUBLIC_OBJECT, token=token, now=time.time())
        version = h.object_version(rows)
        return None if version is None else (version, int(h.extra(rows)))

    def container_account(self, container_id: int) -> int:
        rows = self._fetch(h.CONTAINER_ACCOUNT, container_id=container_id)
        if not rows:
            raise NoResultFound("No row was found when one was required")
        return int(rows[0][0])

    def set_account_quota(self, name: str, quota_bytes: int | None) -> None:
        with self._write() as conn:
            account_id = self._ensure_account(conn, name)
            conn.execute(update(s.accounts).where(s.accounts.c.id == account_id)
                         .values(quota_bytes=quota_bytes or None))

    def _check_quota(self, conn: Connection, container_id: int, growth: int,
                     policy: Sequence[Any] | None = None) -> None:
        """Raise QuotaExceeded if `growth` more bytes would exceed the container's or its
        account's quota (inside the committing transaction, so concurrent writers cannot
        both slip under it).  `policy`: the row of CONTAINER_POLICY, if read already."""
        if growth <= 0:
            return
        if policy is None:
            policy = self._fetch_in(conn, h.CONTAINER_POLICY, container_id=container_id)[0]
        quota_bytes, account_id, account_quota = policy[:3]
        if not quota_bytes and not account_quota:
            return  # the common case: one cheap query
        st = s.container_stats
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

    def usage(self, container_id: int) -> tuple[int, int | None, int, int | None]:
        """(container bytes, container quota, account bytes, account quota)."""
        found = self._fetch(h.CONTAINER_POLICY, container_id=container_id)
        if not found:
            raise NoResultFound("No row was found when one was required")
        quota_bytes, account_id, account_quota, _ = found[0]
        if not quota_bytes and not account_quota:
            return 0, None, 0, None  # no quota: the usage does not matter (the common case)
        st = s.container_stats
        with self._read() as conn:
            cbytes = conn.execute(select(func.coalesce(func.sum(st.c.bytes), 0))
                                  .where(st.c.container_id == container_id)).scalar_one()
            abytes = conn.execute(select(func.coalesce(func.sum(st.c.bytes), 0))
                                  .select_from(st.join(s.containers))
                                  .where(s.containers.c.account_id == account_id)
                                  ).scalar_one()
        return int(cbytes), quota_bytes, int(abytes), account_quota

    # -- blocks an account may name (dedup without leaking) ------------------------------------

    def grant_blocks(self, account_id: int, hashes: Sequence[bytes]) -> None:
        """Record that the account may name these blocks by hash (it sent their bytes or read
        a map that names them)."""
        with self._write() as conn:
            self._grant(conn, account_id, hashes)

    def _grant(self, conn: Connection, account_id: int, hashes: Sequence[bytes]) -> None:
        unique = list(dict.fromkeys(hashes))
        if not unique:
            return
        self._run_in(conn, h.GRANT[self._dialect.name],
                     [{"account_id": account_id, "hash": block} for block in unique])

    def granted_blocks(self, account_id: int, hashes: Sequence[bytes]) -> set[bytes]:
        """Which of these blocks the account may name."""
        unique = list(dict.fromkeys(hashes))
        found: set[bytes] = set()
        with self._read() as conn:
            for i in range(0, len(unique), 500):
                found.update(bytes(h) for h in conn.execute(
                    select(s.account_blocks.c.hash).where(and_(
                        s.account_blocks.c.account_id == account_id,
                        s.account_blocks.c.hash.in_(unique[i:i + 500])))).scalars())
        return found

    @recovery_write
    def drop_version(self, version_id: int) -> None:
        """Undo a version just committed (a hashmap upload whose blocks vanished under it):
        the previous version becomes current again, counters follow."""
        o, v = s.objects, s.versions
        with self._write() as conn:
            row = conn.execute(select(v.c.object_id, v.c.size, o.c.container_id, o.c.current_id)
                               .select_from(v.join(o, o.c.id == v.c.object_id))
                               .where(v.c.id == version_id)).first()
            if row is None:
                return
            conn.execute(delete(v).where(v.c.id == version_id))
            if row.current_id != version_id:
                return
            prev = conn.execute(select(v.c.id, v.c.size, v.c.deleted)
                                .where(v.c.object_id == row.object_id)
                                .order_by(v.c.id.desc()).limit(1)).first()
            conn.execute(update(o).where(o.c.id == row.object_id)
                         .values(current_id=prev.id if prev else None))
            live_before = prev is not None and not prev.deleted
            self._count(conn, row.container_id, 0 if live_before else -1,
                        (prev.size if live_before else 0) - row.size)

    # -- garbage collection support ------------------------------------------------------------

    def version_roots(self, batch: int = 10000) -> Iterator[bytes]:
        """The map root of every retained version (current or not), each at least once."""
        last = 0
        while True:
            with self._read() as conn:
                rows = conn.execute(select(s.versions.c.id, s.versions.c.root)
                                    .where(and_(s.versions.c.id > last,
                                                s.versions.c.root.is_not(None)))
                                    .order_by(s.versions.c.id).limit(batch)).all()
            for r in rows:
                yield bytes(r.root)
            if len(rows) < batch:
                return
            last = rows[-1].id

    @contextmanager
    def _lease_write(self) -> Iterator[Connection]:
        """A write that need not survive a crash (a lease dies with its holder anyway), so it
        skips the commit's fsync: leases are taken on every upload."""
        engine = self._lease_engine or self.engine
        with disk_full_as_no_space(), engine.connect() as conn:
            conn.info["begin_mode"] = "IMMEDIATE"
            try:
                with conn.begin():
                    if not self.is_sqlite:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    yield conn
            finally:
                conn.info.pop("begin_mode", None)

    def max_version_id(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.max(s.versions.c.id))).scalar() or 0)

    def roots_after(self, version_id: int) -> tuple[list[bytes], int]:
        """Roots of versions committed after `version_id`, and the newest id seen: the
        collector asks again just before each sweep, to spare maps committed while it ran."""
        with self._read() as conn:
            rows = conn.execute(select(s.versions.c.id, s.versions.c.root)
                                .where(s.versions.c.id > version_id)
                                .order_by(s.versions.c.id)).all()
        newest = rows[-1].id if rows else version_id
        return [bytes(r.root) for r in rows if r.root is not None], int(newest)

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

    def upload_lease_rows(self) -> list[tuple[int, float]]:
        """Every writer lease row: (lease id, start of its oldest writer)."""
        with self._read() as conn:
            rows = conn.execute(select(s.upload_leases.c.id, s.upload_leases.c.started)).all()
        return [(int(r.id), float(r.started)) for r in rows]

    def delete_upload_lease(self, lease_id: int) -> None:
        """Drop a lease row (its process is dead: the collector revokes it)."""
        with self._write() as conn:
            conn.execute(delete(s.upload_leases).where(s.upload_leases.c.id == lease_id))

    def list_objects(self, container_id: int, prefix: str = "", marker: str = "",
                     end_marker: str = "", limit: int = 10000, reverse: bool = False,
                     delimiter: str = "", now: float | None = None,
                     until: float | None = None) -> list[ListingEntry]:
        """Visible objects by name; with a delimiter, names that continue past it after the
        prefix collapse into one pseudo-directory entry."""
        now = time.time() if now is None else now
        out: list[ListingEntry] = []
        with self._read() as conn:
            while len(out) < limit:
                q = self._visible(select(s.objects.c.name, s.versions.c.size,
                                         s.versions.c.etag, s.versions.c.content_type,
                                         s.versions.c.created), now, until).where(
                    s.objects.c.container_id == container_id)
                q = _name_window(q, s.objects.c.name, prefix, marker, end_marker, reverse)
                rows = conn.execute(q.limit(limit - len(out))).all()
                if not rows:
                    break
                for r in rows:
                    if delimiter:
                        cut = r.name.find(delimiter, len(prefix))
                        if cut >= 0:
                            sub = r.name[:cut + len(delimiter)]
                            if not out or out[-1].name != sub:
                                out.append(ListingEntry(sub, subdir=True))
                            # Skip every other name under this pseudo-directory.
                            marker = sub if reverse else sub + _MAX_CHAR
                            break
                    out.append(ListingEntry(r.name, r.size, r.etag, r.content_type, r.created))
                    marker = r.name
                    if len(out) >= limit:
                        break
                else:
                    if len(rows) < limit:
                        break
        return out[:limit]


def _name_window(q: Any, col: Any, prefix: str, marker: str, end_marker: str,
                 reverse: bool) -> Any:
    if prefix:
        q = q.where(and_(col >= prefix, col < prefix + _MAX_CHAR))
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


def _version_columns() -> Any:
    o, v = s.objects, s.versions
    return select(o.c.id.label("object_id"), o.c.container_id, o.c.name, o.c.uuid,
                  v.c.id.label("version_id"), v.c.vid, v.c.root, v.c.size, v.c.etag,
                  v.c.content_type, v.c.created, v.c.modified_by, v.c.delete_at,
                  v.c.dlo_manifest, v.c.slo_manifest)


def _version(conn: Connection, row: Any) -> ObjectVersion:
    meta: dict[str, dict[str, str]] = {}
    for d, k, val in conn.execute(select(s.version_meta.c.domain, s.version_meta.c.key,
                                         s.version_meta.c.value)
                                  .where(s.version_meta.c.version_id == row.version_id)):
        meta.setdefault(d, {})[k] = val
    return ObjectVersion(row.object_id, row.container_id, row.name, row.uuid, row.version_id,
                         row.vid, row.root, row.size, row.etag, row.content_type, row.created,
                         row.modified_by, row.delete_at, row.dlo_manifest, row.slo_manifest,
                         meta)

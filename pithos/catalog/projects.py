"""Projects, their members and quotas, and commissions (Astakos' design) in the catalog.

A **holding** is a project's row for one resource: its limit, the usage that accepted
commissions charged, and what issued ones may still charge (`pending`).  Every charge is one
conditional UPDATE of that row, `usage + pending + q <= limit`, so the check and the charge
are one atomic step on SQLite (one writer at a time) and PostgreSQL alike (the UPDATE locks
the row and re-evaluates its condition on the newest version after any wait): concurrent
charges can never exceed a limit.

- **One step** (`_charge_in`, `charge`): check and charge inside the transaction of the write
  that uses the resource (an object's version, an image's row); the write's rollback is the
  release.
- **Two steps** (`issue_commission`, then `accept_commission` or `reject_commission`): for
  a resource that lives outside the catalog (compute's servers).  Issuing reserves the
  positive quantities in `pending` (releases, negative, wait for the accept); accepting moves
  them to `usage`; rejecting gives them back.  A commission not resolved before its expiry
  (its issuer crashed) is rejected by `reap_commissions`, which every server start runs; an
  issuer that can tell whether its operation happened resolves its own first
  (compute.service.ComputeService.resolve_commissions).

Resources: `bytes` and `objects` (storage, charged through the container's project in the
same statements as the container's counters), `images`, and compute's `servers`, `vcpus`,
`ram_mib`, `disk_gib`.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from pithos.catalog import schema as s
from pithos.catalog.pg_functions import HOLDING_STRIPES
from pithos.catalog.records import Commission, Holding, Project, UserInfo
from pithos.core.errors import Conflict, InvalidArgument, NotFound, QuotaExceeded

RESOURCES = ("bytes", "objects", "images", "servers", "vcpus", "ram_mib", "disk_gib")

_hd = s.project_holdings
_st = s.holding_stripes
_q: Any = bindparam("q")
# Charge q of one resource unless that passes the limit (a release, q <= 0, always passes).
CHARGE = (update(_hd).where(and_(
    _hd.c.project_id == bindparam("project_id"), _hd.c.resource == bindparam("resource"),
    or_(_q <= literal_column("0"), _hd.c.quota_limit.is_(None),
        _hd.c.usage + _hd.c.pending + _q <= _hd.c.quota_limit)))
    .values(usage=_hd.c.usage + _q))
# Charge q whatever the limit (a change that must not fail: an undo, a restore).
CHARGE_ANYWAY = (update(_hd).where(and_(_hd.c.project_id == bindparam("project_id"),
                                        _hd.c.resource == bindparam("resource")))
                 .values(usage=_hd.c.usage + _q))
# A container's change of usage, charged to its project (its own, else its account's home
# project) in one statement over both storage rows, which exist from the container's creation
# (or migration 7) on: 2 rows matched, or (checked) one passed its limit.
_project_of_container = (select(func.coalesce(s.containers.c.project_id, s.accounts.c.name))
                         .select_from(s.containers.join(s.accounts))
                         .where(s.containers.c.id == bindparam("container_id"))
                         .scalar_subquery())
_storage_q = case((_hd.c.resource == literal_column("'bytes'"),
                   bindparam("add_bytes", type_=BigInteger)),
                  else_=bindparam("add_objects", type_=BigInteger))
_storage_rows = and_(_hd.c.project_id == _project_of_container,
                     or_(_hd.c.resource == literal_column("'bytes'"),
                         _hd.c.resource == literal_column("'objects'")))
_within = or_(_storage_q <= literal_column("0"), _hd.c.quota_limit.is_(None),
              _hd.c.usage + _hd.c.pending + _storage_q <= _hd.c.quota_limit)
# The project is known already (a new version read the container's policy).
_project_rows = and_(_hd.c.project_id == bindparam("project_id"),
                     or_(_hd.c.resource == literal_column("'bytes'"),
                         _hd.c.resource == literal_column("'objects'")))


def _charge_storage(rows: Any, checked: bool) -> Any:
    """The storage charge of `rows` on SQLite (one writer at a time: no row locks to order;
    PostgreSQL charges through pithos_charge_storage, `_charge_storage_pg`)."""
    return (update(_hd).where(and_(rows, _within) if checked else rows)
            .values(usage=_hd.c.usage + _storage_q))


CHARGE_CONTAINER = _charge_storage(_storage_rows, False)
CHARGE_CONTAINER_CHECKED = _charge_storage(_storage_rows, True)
CHARGE_PROJECT_STORAGE_CHECKED = _charge_storage(_project_rows, True)
# A container's own project, and its account's name (whose home project is the default).
CONTAINER_PROJECT = (select(s.containers.c.project_id, s.accounts.c.name)
                     .select_from(s.containers.join(s.accounts))
                     .where(s.containers.c.id == bindparam("container_id")))
NEW_HOLDING = {name: ins(_hd).values(project_id=bindparam("project_id"),
                                     resource=bindparam("resource"))
               .on_conflict_do_nothing()
               for name, ins in (("sqlite", sqlite_insert), ("postgresql", pg_insert))}


_CHARGE_STORAGE_CALL = text("SELECT pithos_charge_storage(:p, :b, :o, :check, :s, 0)")
_CHARGE_CONTAINER_CALL = text(
    "SELECT pithos_charge_storage(p.project, :b, :o, :check, :s, 0) FROM "
    "(SELECT coalesce(c.project_id, a.name) AS project FROM containers c "
    "JOIN accounts a ON a.id = c.account_id WHERE c.id = :c) AS p")


def _check_provisions(provisions: Mapping[str, int]) -> dict[str, int]:
    """The provisions, checked, without zeros, by resource name: every writer locks holdings
    in that order, so two charges of the same rows cannot deadlock (PostgreSQL)."""
    out = {}
    for resource, quantity in sorted(provisions.items()):
        if resource not in RESOURCES:
            raise InvalidArgument(f"unknown resource {resource!r} (known: "
                                  f"{', '.join(RESOURCES)})")
        if not isinstance(quantity, int) or isinstance(quantity, bool):
            raise InvalidArgument(f"the quantity of {resource} must be an integer")
        if quantity:
            out[resource] = quantity
    return out


class ProjectsMixin:
    """Projects, members, holdings and commissions: a part of Catalog
    (pithos.catalog.catalog)."""

    # -- projects and members ------------------------------------------------------------------

    def create_project(self, name: str, description: str = "") -> Project:
        """A new project with no members and no limits; Conflict if a project or an account
        (whose home project it would shadow) has that name."""
        if not name or len(name) > 256 or "/" in name or any(ord(ch) < 32 for ch in name):
            raise InvalidArgument(f"bad project name {name!r}")
        project = Project(uuid.uuid4().hex, name, description, False)
        with self._write() as conn:  # type: ignore[attr-defined]
            if conn.execute(select(s.accounts.c.id).where(s.accounts.c.name == name)).first():
                raise Conflict(f"an account is named {name!r}")
            if conn.execute(select(s.projects.c.id).where(s.projects.c.name == name)).first():
                raise Conflict(f"a project is named {name!r}")
            conn.execute(insert(s.projects).values(id=project.id, name=name,
                                                   description=description,
                                                   created=time.time()))
        return project

    def project(self, ref: str) -> Project | None:
        """A project by id or name (a home project: by its account's name); None if none."""
        p = s.projects
        with self._read() as conn:  # type: ignore[attr-defined]
            row = conn.execute(select(p.c.id, p.c.name, p.c.description)
                               .where(or_(p.c.id == ref, p.c.name == ref))).first()
            if row is not None:
                return Project(row.id, row.name, row.description, False)
            if conn.execute(select(s.accounts.c.id).where(s.accounts.c.name == ref)).first():
                return Project(ref, ref, "home project of account " + ref, True)
        return None

    def projects(self) -> list[Project]:
        """Every project (the home projects of every account first, by name)."""
        p = s.projects
        with self._read() as conn:  # type: ignore[attr-defined]
            homes = conn.execute(select(s.accounts.c.name).order_by(s.accounts.c.name)).all()
            rows = conn.execute(select(p.c.id, p.c.name, p.c.description)
                                .order_by(p.c.name)).all()
        return ([Project(r.name, r.name, "home project of account " + r.name, True)
                 for r in homes]
                + [Project(r.id, r.name, r.description, False) for r in rows])

    def user_projects(self, user: UserInfo) -> list[Project]:
        """The projects a user acts in: its account's home project and those it is a member
        of."""
        p, m = s.projects, s.project_members
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(select(p.c.id, p.c.name, p.c.description)
                                .select_from(p.join(m)).where(m.c.user_id == user.id)
                                .order_by(p.c.name)).all()
        return ([Project(user.account, user.account, "home project of account "
                         + user.account, True)]
                + [Project(r.id, r.name, r.description, False) for r in rows])

    def is_member(self, user: UserInfo, project_id: str) -> bool:
        if project_id == user.account:
            return True
        m = s.project_members
        with self._read() as conn:  # type: ignore[attr-defined]
            return conn.execute(select(m.c.user_id).where(and_(
                m.c.project_id == project_id, m.c.user_id == user.id))).first() is not None

    def set_member(self, project_id: str, user_id: int, member: bool) -> bool:
        """Add (or remove) a user as a member of a project (not a home project: its members
        are its account's users); returns whether anything changed.  NotFound for an
        unknown project or user."""
        m = s.project_members
        with self._write() as conn:  # type: ignore[attr-defined]
            if conn.execute(select(s.projects.c.id).where(s.projects.c.id == project_id)
                            ).first() is None:
                raise NotFound(f"no project {project_id!r} (a home project's members are "
                               "its account's users)")
            if conn.execute(select(s.users.c.id).where(s.users.c.id == user_id)
                            ).first() is None:
                raise NotFound(f"no user with id {user_id}")
            where = and_(m.c.project_id == project_id, m.c.user_id == user_id)
            there = conn.execute(select(m.c.user_id).where(where)).first() is not None
            if member and not there:
                conn.execute(insert(m).values(project_id=project_id, user_id=user_id))
            elif there and not member:
                conn.execute(delete(m).where(where))
                # Its tokens scoped to the project go with it (else they went on acting and
                # charging there for their whole lifetime).
                conn.execute(delete(s.tokens).where(and_(s.tokens.c.user_id == user_id,
                                                         s.tokens.c.project_id == project_id)))
            return member != there

    def project_members(self, project_id: str) -> list[UserInfo]:
        """The members of a project (of a home project: its account's users)."""
        u, a, m = s.users, s.accounts, s.project_members
        q = select(u.c.id, a.c.name.label("account"), u.c.name, u.c.admin).select_from(
            u.join(a))
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(q.join(m, m.c.user_id == u.c.id)
                                .where(m.c.project_id == project_id)
                                .order_by(a.c.name, u.c.name)).all()
            rows += conn.execute(q.where(a.c.name == project_id)
                                 .order_by(u.c.name)).all()
        return [UserInfo(r.id, r.account, r.name, bool(r.admin)) for r in rows]

    def user_by_id(self, user_id: int) -> UserInfo | None:
        u, a = s.users, s.accounts
        with self._read() as conn:  # type: ignore[attr-defined]
            r = conn.execute(select(u.c.id, a.c.name.label("account"), u.c.name, u.c.admin)
                             .select_from(u.join(a)).where(u.c.id == user_id)).first()
        return None if r is None else UserInfo(r.id, r.account, r.name, bool(r.admin))

    # -- passwords (beside the keys of pithos/catalog/users.py) -------------------------------

    def set_password(self, user_id: int, password_hash: str | None) -> bool:
        """Set (None: clear) a user's password hash; whether the user exists."""
        with self._write() as conn:  # type: ignore[attr-defined]
            return bool(conn.execute(update(s.users).where(s.users.c.id == user_id)
                                     .values(password_hash=password_hash)).rowcount)

    def password_hash(self, user_id: int) -> str | None:
        with self._read() as conn:  # type: ignore[attr-defined]
            found = conn.execute(select(s.users.c.password_hash)
                                 .where(s.users.c.id == user_id)).scalar()
        return None if found is None else str(found)

    # -- holdings ------------------------------------------------------------------------------

    def set_quota(self, project_id: str, limits: Mapping[str, int | None]) -> None:
        """Set limits (None: no limit) of a project's resources.  A limit under the usage
        refuses new charges and takes nothing away."""
        for resource, limit in limits.items():
            _check_provisions({resource: 0})
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                      or not 0 <= limit < 1 << 63):
                raise InvalidArgument(f"the limit of {resource} must be a whole number from 0 "
                                      f"to {(1 << 63) - 1}")
        with self._write() as conn:  # type: ignore[attr-defined]
            for resource, limit in sorted(limits.items()):
                self._ensure_holding(conn, project_id, resource)
                self._fold_stripes(conn, project_id, resource)
                conn.execute(update(_hd).where(and_(_hd.c.project_id == project_id,
                                                    _hd.c.resource == resource))
                             .values(quota_limit=limit))

    def _fold_stripes(self, conn: Connection, project_id: str, resource: str) -> None:
        """Move a holding's striped usage into its row (PostgreSQL), as a limit is set: the
        row locked FOR UPDATE first waits for every striped charge in flight (each holds a
        KEY SHARE lock of it to its commit), and the next ones find the limit and take the
        checked path.  So a limited holding's stripes stay zero (pithos/catalog/
        pg_functions.py)."""
        if self.is_sqlite:  # type: ignore[attr-defined]
            return  # (no stripes: one writer at a time)
        conn.execute(select(_hd.c.usage).where(and_(
            _hd.c.project_id == project_id, _hd.c.resource == resource)).with_for_update())
        # A statement of its own after the lock: it sees every charge committed meanwhile.
        folded = conn.execute(delete(_st).where(and_(
            _st.c.project_id == project_id, _st.c.resource == resource))
            .returning(_st.c.usage)).scalars().all()
        if any(folded):
            conn.execute(update(_hd).where(and_(_hd.c.project_id == project_id,
                                                _hd.c.resource == resource))
                         .values(usage=_hd.c.usage + sum(folded)))

    def holdings(self, project_id: str) -> dict[str, Holding]:
        """Every resource's holding (a resource never charged nor limited: no limit, zero)."""
        # The usage of a holding without a limit is its row's plus its stripes'.
        striped = (select(func.coalesce(func.sum(_st.c.usage), 0))
                   .where(and_(_st.c.project_id == _hd.c.project_id,
                               _st.c.resource == _hd.c.resource)).scalar_subquery())
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(select(_hd.c.resource, _hd.c.quota_limit,
                                       (_hd.c.usage + striped).label("usage"), _hd.c.pending)
                                .where(_hd.c.project_id == project_id)).all()
        out = {r: Holding(r, None, 0, 0) for r in RESOURCES}
        out.update({r.resource: Holding(r.resource, None if r.quota_limit is None
                                        else int(r.quota_limit), int(r.usage), int(r.pending))
                    for r in rows if r.resource in out})
        return out

    def _ensure_holding(self, conn: Connection, project_id: str, resource: str) -> None:
        self._run_in(conn, NEW_HOLDING[self._dialect.name],  # type: ignore[attr-defined]
                     {"project_id": project_id, "resource": resource})

    def _charge_in(self, conn: Connection, project_id: str, provisions: Mapping[str, int],
                   check: bool = True) -> None:
        """Charge (or, negative, release) inside `conn`'s transaction: QuotaExceeded, naming
        the resource, if a charge would pass a limit (`check`: else charged anyway; a release
        is never refused).  The caller's rollback undoes it."""
        stmt = CHARGE if check else CHARGE_ANYWAY
        for resource, q in sorted(provisions.items()):
            if not q:
                continue
            values = {"project_id": project_id, "resource": resource, "q": q}
            if self._run_in(conn, stmt, values) == 1:  # type: ignore[attr-defined]
                continue
            # No row yet (never charged nor limited: no limit), or over the limit.
            self._ensure_holding(conn, project_id, resource)
            if self._run_in(conn, stmt, values) != 1:  # type: ignore[attr-defined]
                raise QuotaExceeded(f"project quota exceeded for {resource}: {q} more "
                                    "would pass its limit")

    def charge(self, project_id: str, provisions: Mapping[str, int]) -> None:
        """Issue and accept a commission in one step (QuotaExceeded: nothing charged)."""
        provisions = _check_provisions(provisions)
        with self._write() as conn:  # type: ignore[attr-defined]
            self._charge_in(conn, project_id, provisions)

    def _charge_container(self, conn: Connection, container_id: int, objects: int,
                          size: int, check: bool, project_id: str | None = None) -> None:
        """Charge a container's usage change to its project (`project_id`, if the caller
        read it; the container's counters change in the same transaction: Catalog._count).
        One statement on the hot path."""
        if not self.is_sqlite:  # type: ignore[attr-defined]
            self._charge_storage_pg(conn, container_id, objects, size, check, project_id)
            return
        values: dict[str, Any] = {"container_id": container_id, "add_bytes": size,
                                  "add_objects": objects}
        if project_id and check:
            stmt, values["project_id"] = CHARGE_PROJECT_STORAGE_CHECKED, project_id
        else:
            stmt = CHARGE_CONTAINER_CHECKED if check else CHARGE_CONTAINER
        if self._run_in(conn, stmt, values) == 2:  # type: ignore[attr-defined]
            return
        # Fewer than both rows: a row is missing (a container older than its project's
        # rows), or, checked, a limit would be passed (then the caller's rollback undoes
        # what the statement did charge).
        row = self._fetch_in(conn, CONTAINER_PROJECT,  # type: ignore[attr-defined]
                             container_id=container_id)
        if not row:
            return  # the container is gone: so are its counters
        project_id = row[0][0] or row[0][1]
        want = {"bytes": size, "objects": objects}
        rows = conn.execute(select(_hd.c.resource, _hd.c.quota_limit, _hd.c.usage,
                                   _hd.c.pending).where(and_(
            _hd.c.project_id == project_id, _hd.c.resource.in_(list(want))))).all()
        there = {r.resource for r in rows}
        if there == set(want):
            over = [r.resource for r in rows if r.quota_limit is not None
                    and r.usage + r.pending + want[r.resource] > r.quota_limit]
            raise QuotaExceeded(f"project quota exceeded for {' and '.join(over) or 'storage'}"
                                ": the new version would pass its limit")
        # The missing rows had no limit and were not charged: charge them alone.
        self._charge_in(conn, project_id, {r: q for r, q in (("bytes", size),
                                                              ("objects", objects))
                                           if r not in there}, check)

    def _charge_storage_pg(self, conn: Connection, container_id: int, objects: int,
                           size: int, check: bool, project_id: str | None) -> None:
        """_charge_container on PostgreSQL: the one-call commit's charge
        (pithos_charge_storage, pithos/catalog/pg_functions.py), so that a delete, a move or
        a purge charges a project without a limit into a stripe too, instead of locking its
        holdings FOR UPDATE (which waits for every charge in flight, and holds up every
        later one).  One stripe per pooled connection, as its stat shard: a transaction that
        charges twice locks one."""
        if not objects and not size:
            return
        stripe = conn.info.get("pithos_stripe")
        if stripe is None:
            stripe = conn.info["pithos_stripe"] = random.randrange(HOLDING_STRIPES)
        values = {"p": project_id, "c": container_id, "b": size, "o": objects,
                  "check": check, "s": stripe}
        try:
            # (No row, no call, when the container is gone: so are its counters.)
            conn.execute(_CHARGE_STORAGE_CALL if project_id else _CHARGE_CONTAINER_CALL,
                         values)
        except DBAPIError as exc:
            diag = getattr(exc.orig, "diag", None)
            if getattr(exc.orig, "sqlstate", None) == "PT004" and diag is not None:
                raise QuotaExceeded(str(diag.message_primary)) from exc
            raise

    def _ensure_storage_holdings(self, conn: Connection, container_id: int) -> None:
        """The storage rows of a new container's project, so its charges take one
        statement."""
        row = self._fetch_in(conn, CONTAINER_PROJECT,  # type: ignore[attr-defined]
                             container_id=container_id)
        for resource in ("bytes", "objects"):
            self._ensure_holding(conn, row[0][0] or row[0][1], resource)

    # -- commissions ---------------------------------------------------------------------------

    def issue_commission(self, project_id: str, provisions: Mapping[str, int], name: str,
                         lease_s: float = 60.0) -> int:
        """Reserve the positive provisions (QuotaExceeded, naming the resource, and nothing
        reserved, if one would pass its limit); returns the commission's serial, which
        `accept_commission` or `reject_commission` must resolve within `lease_s`, else the
        reaper rejects it."""
        provisions = _check_provisions(provisions)
        now = time.time()
        with self._write() as conn:  # type: ignore[attr-defined]
            for resource, q in provisions.items():
                if q <= 0:
                    continue  # a release waits for the accept
                stmt = (update(_hd).where(and_(
                    _hd.c.project_id == project_id, _hd.c.resource == resource,
                    or_(_hd.c.quota_limit.is_(None),
                        _hd.c.usage + _hd.c.pending + q <= _hd.c.quota_limit)))
                    .values(pending=_hd.c.pending + q))
                if conn.execute(stmt).rowcount != 1:
                    self._ensure_holding(conn, project_id, resource)
                    if conn.execute(stmt).rowcount != 1:
                        raise QuotaExceeded(f"project quota exceeded for {resource}: {q} "
                                            "more would pass its limit")
            serial = int(conn.execute(insert(s.commissions).values(
                project_id=project_id, name=name, created=now, expires=now + lease_s)
            ).inserted_primary_key[0])
            if provisions:
                conn.execute(insert(s.commission_provisions), [
                    {"commission_id": serial, "resource": r, "quantity": q}
                    for r, q in provisions.items()])
        return serial

    def _resolve(self, serial: int, accept: bool) -> bool:
        cp = s.commission_provisions
        with self._write() as conn:  # type: ignore[attr-defined]
            row = conn.execute(self._lock(  # type: ignore[attr-defined]
                select(s.commissions.c.project_id).where(s.commissions.c.id == serial))
            ).first()
            if row is None:
                return False  # resolved already (by its issuer or the reaper), or unknown
            provisions = conn.execute(select(cp.c.resource, cp.c.quantity)
                                      .where(cp.c.commission_id == serial)
                                      .order_by(cp.c.resource)).all()
            conn.execute(delete(cp).where(cp.c.commission_id == serial))
            if conn.execute(delete(s.commissions).where(s.commissions.c.id == serial)
                            ).rowcount != 1:
                return False
            for resource, q in provisions:
                where = and_(_hd.c.project_id == row.project_id, _hd.c.resource == resource)
                if q > 0:
                    values: dict[str, Any] = {"pending": _hd.c.pending - q}
                    if accept:
                        values["usage"] = _hd.c.usage + q
                    conn.execute(update(_hd).where(where).values(**values))
                elif accept:
                    self._ensure_holding(conn, row.project_id, resource)
                    conn.execute(update(_hd).where(where).values(usage=_hd.c.usage + q))
            return True

    def accept_commission(self, serial: int) -> bool:
        """Make an issued commission's provisions usage; False if it was resolved already
        (accepting twice is safe) or never issued."""
        return self._resolve(serial, True)

    def reject_commission(self, serial: int) -> bool:
        """Give an issued commission's reservations back; False if it was resolved
        already."""
        return self._resolve(serial, False)

    def commissions(self, name_prefix: str = "") -> list[Commission]:
        """The pending commissions (whose name starts with `name_prefix`), oldest first."""
        c, cp = s.commissions, s.commission_provisions
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(select(c).where(c.c.name.startswith(name_prefix,
                                                                    autoescape=True))
                                .order_by(c.c.id)).all()
            provisions: dict[int, dict[str, int]] = {}
            if rows:
                for r in conn.execute(select(cp).where(cp.c.commission_id.in_(
                        [row.id for row in rows]))):
                    provisions.setdefault(r.commission_id, {})[r.resource] = int(r.quantity)
        return [Commission(r.id, r.project_id, r.name, r.created, r.expires,
                           provisions.get(r.id, {})) for r in rows]

    def reap_commissions(self, now: float | None = None) -> int:
        """Reject every pending commission past its expiry (its issuer died before resolving
        it); returns how many."""
        now = time.time() if now is None else now
        with self._read() as conn:  # type: ignore[attr-defined]
            serials = list(conn.execute(select(s.commissions.c.id)
                                        .where(s.commissions.c.expires <= now)).scalars())
        return sum(self.reject_commission(int(serial)) for serial in serials)

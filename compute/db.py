"""Compute's own state: flavors, servers, agents and key pairs, in tables of its own.

Compute never reads the object catalog (import-linter forbids it), so it keeps its rows in
`compute_*` tables: in an SQLite file of its own beside the catalog's (`compute.sqlite` in the
data directory: the catalog's SQLite file is busy with object writes, and a separate file
keeps compute's short transactions out of its write lock), or in the catalog's PostgreSQL
database when the catalog is one (the tables' prefix keeps them apart). `database_url` makes
that choice; the entry points call it.

Every method is one short transaction and returns named records; SQLAlchemy's errors stay
here (a constraint violation is `Conflict`, anything else `BackendError`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pithos.core.errors import BackendError, Conflict, InvalidArgument, NotFound

metadata = sa.MetaData()

flavors = sa.Table(
    "compute_flavors", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("ram_mib", sa.Integer, nullable=False),
    sa.Column("disk_gib", sa.Integer, nullable=False),
    sa.Column("is_public", sa.Boolean, nullable=False, default=True),
)

servers = sa.Table(
    "compute_servers", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("account", sa.String(255), nullable=False, index=True),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("flavor_id", sa.String(64), nullable=False),
    # The flavor as it was at create time (a flavor deleted later must not change a server).
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("ram_mib", sa.Integer, nullable=False),
    sa.Column("disk_gib", sa.Integer, nullable=False),
    sa.Column("host", sa.String(255), nullable=True, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("task_state", sa.String(32), nullable=True),
    sa.Column("fault", sa.Text, nullable=True),
    sa.Column("metadata", sa.Text, nullable=False, default="{}"),
    sa.Column("key_name", sa.String(255), nullable=True),
    sa.Column("ssh_port", sa.Integer, nullable=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("launched", sa.Float, nullable=True),
    # The project its servers, vCPUs, RAM and disk are charged to (pithos.projects); added
    # to older databases on open.
    sa.Column("project", sa.String(256), nullable=True),
)

agents = sa.Table(
    "compute_agents", metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("url", sa.String(1024), nullable=False),
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("ram_mib", sa.Integer, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
)

keypairs = sa.Table(
    "compute_keypairs", metadata,
    sa.Column("account", sa.String(255), primary_key=True),
    sa.Column("user", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

# Seeded on first open (Nova's historical defaults, smaller disks: images here are small).
DEFAULT_FLAVORS = (
    ("1", "m1.tiny", 1, 256, 1),
    ("2", "m1.small", 1, 512, 2),
    ("3", "m1.medium", 2, 1024, 4),
    ("4", "m1.large", 4, 4096, 10),
)


def database_url(catalog_url: str, data_dir: str) -> str:
    """Where compute keeps its tables: beside an SQLite catalog in a file of its own, else in
    the catalog's database (PostgreSQL)."""
    if catalog_url.startswith("sqlite"):
        return "sqlite:///" + os.path.abspath(os.path.join(data_dir, "compute.sqlite"))
    return catalog_url


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    is_public: bool = True


@dataclass(frozen=True)
class Server:
    id: str
    account: str
    user: str
    name: str
    image_id: str
    flavor_id: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    host: str | None
    status: str
    task_state: str | None
    fault: str | None
    metadata: dict[str, str]
    key_name: str | None
    ssh_port: int | None
    created: float
    updated: float
    launched: float | None
    project: str | None = None


@dataclass(frozen=True)
class Agent:
    name: str
    url: str
    vcpus: int
    ram_mib: int
    heartbeat: float
    enabled: bool = True


@dataclass(frozen=True)
class Keypair:
    account: str
    user: str
    name: str
    public_key: str
    fingerprint: str
    created: float


@dataclass
class Usage:
    """What an agent's servers take (every server placed on it that is not deleted)."""

    vcpus: int = 0
    ram_mib: int = 0
    servers: list[str] = field(default_factory=list)


def _server(row: Any) -> Server:
    m = row._mapping
    return Server(**{k: m[k] for k in Server.__dataclass_fields__ if k != "metadata"},
                  metadata=json.loads(m["metadata"] or "{}"))


class ComputeDb:
    """The compute tables over one SQLAlchemy URL (made on first open)."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        try:
            self.engine: Engine = sa.create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            metadata.create_all(self.engine)
            self._add_project_column()
            with self.engine.begin() as conn:
                if conn.execute(sa.select(sa.func.count()).select_from(flavors)).scalar() == 0:
                    for fid, name, vcpus, ram, disk in DEFAULT_FLAVORS:
                        conn.execute(flavors.insert().values(
                            id=fid, name=name, vcpus=vcpus, ram_mib=ram, disk_gib=disk,
                            is_public=True))
        except sa.exc.IntegrityError:
            pass  # another process seeded the flavors at the same moment
        except sa.exc.SQLAlchemyError as exc:
            raise BackendError(f"compute database {url.split(':', 1)[0]}: {exc}") from None

    def _add_project_column(self) -> None:
        """compute_servers.project on a database made before projects (create_all adds no
        column to a table that exists); another process may add it at the same moment."""
        def have() -> bool:
            return "project" in {c["name"] for c in sa.inspect(self.engine).get_columns(
                "compute_servers")}

        if have():
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE compute_servers ADD COLUMN project "
                                     "VARCHAR(256)"))
        except sa.exc.SQLAlchemyError:
            if not have():
                raise

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"conflicting compute record: {exc.orig}") from None
        except sa.exc.OperationalError as exc:
            raise BackendError(f"compute database: {exc.orig}", transient=True) from None
        except sa.exc.SQLAlchemyError as exc:
            raise BackendError(f"compute database: {exc}") from None

    # -- flavors -----------------------------------------------------------------------------

    def flavors(self) -> list[Flavor]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(flavors).order_by(flavors.c.ram_mib, flavors.c.id))
            return [Flavor(**r._mapping) for r in rows]

    def flavor(self, ref: str) -> Flavor:
        """By id, else by name; NotFound."""
        with self._tx() as conn:
            row = conn.execute(sa.select(flavors).where(flavors.c.id == ref)).first()
            if row is None:
                row = conn.execute(sa.select(flavors).where(flavors.c.name == ref)).first()
        if row is None:
            raise NotFound(f"Flavor {ref} could not be found.")
        return Flavor(**row._mapping)

    def create_flavor(self, name: str, vcpus: int, ram_mib: int, disk_gib: int,
                      flavor_id: str | None = None) -> Flavor:
        if not name or len(name) > 255:
            raise InvalidArgument("a flavor needs a name of 1 to 255 characters")
        if vcpus < 1 or ram_mib < 16 or disk_gib < 0:
            raise InvalidArgument("a flavor needs at least 1 vCPU, 16 MiB of RAM and a disk "
                                  "of 0 GiB or more")
        flavor = Flavor(flavor_id or str(uuid.uuid4()), name, vcpus, ram_mib, disk_gib)
        with self._tx() as conn:
            conn.execute(flavors.insert().values(**flavor.__dict__))
        return flavor

    def delete_flavor(self, ref: str) -> None:
        flavor = self.flavor(ref)
        with self._tx() as conn:
            conn.execute(flavors.delete().where(flavors.c.id == flavor.id))

    # -- agents ------------------------------------------------------------------------------

    def put_agent(self, name: str, url: str, vcpus: int, ram_mib: int) -> Agent:
        """Register an agent or refresh its heartbeat (a repeat is safe)."""
        now = time.time()
        with self._tx() as conn:
            done = conn.execute(agents.update().where(agents.c.name == name).values(
                url=url, vcpus=vcpus, ram_mib=ram_mib, heartbeat=now)).rowcount
            if not done:
                conn.execute(agents.insert().values(name=name, url=url, vcpus=vcpus,
                                                    ram_mib=ram_mib, heartbeat=now,
                                                    enabled=True))
        return Agent(name, url, vcpus, ram_mib, now)

    def agents(self) -> list[Agent]:
        with self._tx() as conn:
            return [Agent(**r._mapping) for r in conn.execute(
                sa.select(agents).order_by(agents.c.name))]

    def agent(self, name: str) -> Agent:
        with self._tx() as conn:
            row = conn.execute(sa.select(agents).where(agents.c.name == name)).first()
        if row is None:
            raise NotFound(f"no compute agent {name!r}")
        return Agent(**row._mapping)

    def set_agent_enabled(self, name: str, enabled: bool) -> None:
        with self._tx() as conn:
            if not conn.execute(agents.update().where(agents.c.name == name)
                                .values(enabled=enabled)).rowcount:
                raise NotFound(f"no compute agent {name!r}")

    def delete_agent(self, name: str) -> None:
        with self._tx() as conn:
            if not conn.execute(agents.delete().where(agents.c.name == name)).rowcount:
                raise NotFound(f"no compute agent {name!r}")

    def usage(self) -> dict[str, Usage]:
        """What the servers placed on each agent take, by agent name."""
        out: dict[str, Usage] = {}
        with self._tx() as conn:
            for row in conn.execute(sa.select(servers.c.id, servers.c.host, servers.c.vcpus,
                                              servers.c.ram_mib)
                                    .where(servers.c.host.is_not(None))):
                u = out.setdefault(row.host, Usage())
                u.vcpus += row.vcpus
                u.ram_mib += row.ram_mib
                u.servers.append(row.id)
        return out

    # -- servers -----------------------------------------------------------------------------

    def insert_server(self, server: Server) -> Server:
        values = {k: getattr(server, k) for k in Server.__dataclass_fields__}
        values["metadata"] = json.dumps(server.metadata)
        with self._tx() as conn:
            conn.execute(servers.insert().values(**values))
        return server

    def place_server(self, server: Server, choose: Any, admit: Any = None) -> Server:
        """Insert `server` on the host `choose(agents, usage)` names, in one transaction, so
        two creates cannot both take an agent's last room, nor both an account's last
        (`admit(the account's servers)`, before the insert). `choose` and `admit` raise to
        refuse."""
        values = {k: getattr(server, k) for k in Server.__dataclass_fields__}
        values["metadata"] = json.dumps(server.metadata)
        with self._tx() as conn:
            if self.url.startswith("sqlite"):
                # Take SQLite's write lock before reading the usage (BEGIN IMMEDIATE's effect).
                conn.execute(servers.update().where(sa.false()).values(updated=0))
            else:
                # One placement at a time (a server's other writes wait for it, briefly).
                conn.execute(sa.text("LOCK TABLE servers IN SHARE ROW EXCLUSIVE MODE"))
            if admit is not None:
                admit([_server(r) for r in conn.execute(
                    sa.select(servers).where(servers.c.account == server.account))])
            rows = conn.execute(sa.select(agents)).all()
            usage: dict[str, Usage] = {}
            for row in conn.execute(sa.select(servers.c.host, servers.c.vcpus,
                                              servers.c.ram_mib)
                                    .where(servers.c.host.is_not(None))):
                u = usage.setdefault(row.host, Usage())
                u.vcpus += row.vcpus
                u.ram_mib += row.ram_mib
            host = choose([Agent(**r._mapping) for r in rows], usage)
            values["host"] = host
            conn.execute(servers.insert().values(**values))
        return self.server(server.id)

    def server(self, server_id: str) -> Server:
        with self._tx() as conn:
            row = conn.execute(sa.select(servers).where(servers.c.id == server_id)).first()
        if row is None:
            raise NotFound(f"Instance {server_id} could not be found.")
        return _server(row)

    def servers(self, account: str | None = None, host: str | None = None) -> list[Server]:
        q = sa.select(servers).order_by(servers.c.created.desc(), servers.c.id)
        if account is not None:
            q = q.where(servers.c.account == account)
        if host is not None:
            q = q.where(servers.c.host == host)
        with self._tx() as conn:
            return [_server(r) for r in conn.execute(q)]

    def update_server(self, server_id: str, expect_task: Any = ..., **values: Any) -> bool:
        """Set fields of a server; with `expect_task`, only if its task state is that (a
        compare-and-swap against a concurrent action). True if a row changed."""
        values["updated"] = time.time()
        if "metadata" in values:
            values["metadata"] = json.dumps(values["metadata"])
        q = servers.update().where(servers.c.id == server_id)
        if expect_task is not ...:
            q = q.where(servers.c.task_state.is_(None) if expect_task is None
                        else servers.c.task_state == expect_task)
        with self._tx() as conn:
            return bool(conn.execute(q.values(**values)).rowcount)

    def delete_server(self, server_id: str) -> bool:
        """Remove a server's row; whether there was one."""
        with self._tx() as conn:
            return bool(conn.execute(servers.delete().where(servers.c.id == server_id))
                        .rowcount)

    # -- key pairs ---------------------------------------------------------------------------

    def keypairs(self, account: str, user: str) -> list[Keypair]:
        with self._tx() as conn:
            return [Keypair(**r._mapping) for r in conn.execute(
                sa.select(keypairs).where(keypairs.c.account == account,
                                          keypairs.c.user == user)
                .order_by(keypairs.c.name))]

    def keypair(self, account: str, user: str, name: str) -> Keypair:
        with self._tx() as conn:
            row = conn.execute(sa.select(keypairs).where(
                keypairs.c.account == account, keypairs.c.user == user,
                keypairs.c.name == name)).first()
        if row is None:
            raise NotFound(f"Keypair {name} not found for user {user}")
        return Keypair(**row._mapping)

    def create_keypair(self, kp: Keypair) -> Keypair:
        try:
            with self._tx() as conn:
                conn.execute(keypairs.insert().values(**kp.__dict__))
        except Conflict:
            raise Conflict(f"Key pair '{kp.name}' already exists.") from None
        return kp

    def delete_keypair(self, account: str, user: str, name: str) -> None:
        with self._tx() as conn:
            if not conn.execute(keypairs.delete().where(
                    keypairs.c.account == account, keypairs.c.user == user,
                    keypairs.c.name == name)).rowcount:
                raise NotFound(f"Keypair {name} not found for user {user}")


def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()

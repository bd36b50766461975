"""The catalog's tables, and the versioned migrations that create and upgrade them.

A database records its schema version in `schema_version`; `migrate()` applies, in order and each
in its own transaction, every migration above it. A later release appends a migration to
MIGRATIONS and never edits an old one, so any earlier data directory upgrades in place.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    inspect,
    select,
    text,
)

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
)

accounts = Table(
    "accounts", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("created", Float, nullable=False),
    Column("quota_bytes", BigInteger, nullable=True),
    Column("acl", Text, nullable=True),  # X-Account-Access-Control, JSON
)

account_meta = Table(
    "account_meta", metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"),
           primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(256), nullable=False),
)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"),
           nullable=False),
    Column("name", String(256), nullable=False),
    Column("key_hash", String(256), nullable=False),  # scrypt, salted; see identity.py
    Column("admin", Boolean, nullable=False),
    Column("created", Float, nullable=False),
    # A key made by the server's first start and not yet used to log in: `pithos serve` shows
    # a new one at each start until it is (so a failed first start never loses the only
    # credentials).  Added by migration 3.
    Column("initial_key", Boolean, nullable=False, server_default=false()),
    # The user's password (salted scrypt, as the key), NULL until one is set: a password
    # login then takes the key (migration 7).
    Column("password_hash", String(256), nullable=True),
    UniqueConstraint("account_id", "name"),
)

tokens = Table(
    "tokens", metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the token; never the token
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("expires", Float, nullable=False),
    # The project the token acts in (migration 7); NULL: its user's home project.
    Column("project_id", String(256), nullable=True),
    Index("tokens_expires", "expires"),
)

containers = Table(
    "containers", metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"),
           nullable=False),
    Column("name", String(256), nullable=False),
    Column("created", Float, nullable=False),
    Column("read_acl", Text, nullable=True),
    Column("write_acl", Text, nullable=True),
    Column("versioning", String(16), nullable=True),
    Column("quota_bytes", BigInteger, nullable=True),
    # The last change number given to an object of this container (the change feed's
    # sequence; migration 6).  On SQLite a write takes the next one as its last statement:
    # numbers are committed in order, so a reader at cursor N never misses a change
    # numbered below N committed later.  On PostgreSQL the feed's reader gives them, to the
    # changes committed by then (migration 11; pithos/catalog/changes.py).
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    # X-Container-Policy-Chunking: NULL (fixed blocks) or "cdc" (migration 6).
    Column("chunking", String(16), nullable=True),
    # The project its usage is charged to (migration 7); NULL: the account's home project.
    Column("project_id", String(256), nullable=True),
    UniqueConstraint("account_id", "name"),
)

container_meta = Table(
    "container_meta", metadata,
    Column("container_id", Integer, ForeignKey("containers.id", ondelete="CASCADE"),
           primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(256), nullable=False),
)

# Usage counters are spread over shards so that concurrent writes to one container do not all
# update the same row; readers add the shards up.
container_stats = Table(
    "container_stats", metadata,
    Column("container_id", Integer, ForeignKey("containers.id", ondelete="CASCADE"),
           primary_key=True),
    Column("shard", Integer, primary_key=True),
    Column("objects", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

objects = Table(
    "objects", metadata,
    Column("id", Integer, primary_key=True),
    Column("container_id", Integer, ForeignKey("containers.id", ondelete="CASCADE"),
           nullable=False),
    Column("name", String(1024), nullable=False),
    Column("uuid", String(36), nullable=False),
    # The visible version; NULL or a deleted version means the object does not exist.
    Column("current_id", Integer, nullable=True),
    # The container's change number of this object's last change (migration 6): the change
    # feed reads objects by it, one row per object with its state now.
    Column("change_seq", BigInteger, nullable=True),
    # PostgreSQL: the order of the object's last change among those not numbered yet (from
    # the sequence pithos_change_stamps; migration 11), while change_seq is NULL until the
    # feed's reader numbers it (pithos/catalog/changes.py).
    Column("change_stamp", BigInteger, nullable=True),
    UniqueConstraint("container_id", "name"),
    Index("objects_uuid", "uuid"),
    Index("objects_changes", "container_id", "change_seq"),
)

versions = Table(
    "versions", metadata,
    Column("id", Integer, primary_key=True),
    Column("object_id", Integer, ForeignKey("objects.id", ondelete="CASCADE"), nullable=False),
    Column("vid", String(32), nullable=False, unique=True),  # opaque id shown to clients
    Column("root", LargeBinary(32), nullable=True),  # map root; NULL for a deletion marker
    Column("size", BigInteger, nullable=False),
    Column("etag", String(64), nullable=False),  # MD5 hex of the content (Swift's ETag)
    Column("content_type", String(256), nullable=False),
    Column("created", Float, nullable=False),
    Column("modified_by", String(256), nullable=True),
    Column("deleted", Boolean, nullable=False),
    Column("delete_at", Float, nullable=True),
    Column("dlo_manifest", String(1280), nullable=True),  # X-Object-Manifest "container/prefix"
    Column("slo_manifest", Text, nullable=True),  # SLO segment list, JSON, as the client sent it
    # A small object's content kept in its row instead of blocks (migration 9); NULL when
    # stored as blocks.  `root` is then the root its blocks would have (never stored).
    Column("inline_data", LargeBinary, nullable=True),
    Index("versions_object", "object_id", "id"),
    Index("versions_delete_at", "delete_at"),
)

version_meta = Table(
    "version_meta", metadata,
    Column("version_id", Integer, ForeignKey("versions.id", ondelete="CASCADE"),
           primary_key=True),
    Column("domain", String(32), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(4096), nullable=False),
    # The marks of ETags declared and not yet confirmed (pithos/catalog/declared_etags.py),
    # in version order, so that the confirmer's scan reads the marks alone and not every
    # version's metadata after its cursor (MIGRATION_ETAG_MARKS).  Partial: only marks are
    # in it, and its predicate is a constant the scan's query names as such.
    Index("version_meta_etag_marks", "version_id",
          sqlite_where=text("domain = 'etag'"), postgresql_where=text("domain = 'etag'")),
)


# -- schema version 2: the Pithos extensions and the garbage collector ----------------------------

# Uploads in flight: the garbage collector spares every block put after the oldest start.
upload_leases = Table(
    "upload_leases", metadata,
    Column("id", Integer, primary_key=True),
    Column("started", Float, nullable=False),
    Column("expires", Float, nullable=False),
)

# Blocks an account may name by hash (it uploaded them, or read a map that names them): the
# dedup-without-leaking rule of hashmap uploads.
account_blocks = Table(
    "account_blocks", metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"),
           primary_key=True),
    Column("hash", LargeBinary(32), primary_key=True),
    # SQLite: the rows are their key's B-tree (WITHOUT ROWID), not a rowid table beside an
    # index of the same key: a grant is written once, in half the room (migration 17).
    sqlite_with_rowid=False,
)

# Blocks a user who is not its account's admin may name by hash (it sent them, or read a map
# naming them): such a user must not learn, or name, what the rest of its account holds.
# Added by migration 4.
user_blocks = Table(
    "user_blocks", metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("hash", LargeBinary(32), primary_key=True),
    sqlite_with_rowid=False,  # (as account_blocks)
)

groups = Table(
    "groups", metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"),
           primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("member", String(256), primary_key=True),
)

# X-Object-Sharing of an object or of a pseudo-directory (path ending in "/"), which its
# descendants inherit.
sharing = Table(
    "sharing", metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"),
           nullable=False),
    Column("container_id", Integer, ForeignKey("containers.id", ondelete="CASCADE"),
           nullable=False),
    Column("path", String(1024), nullable=False),
    Column("read", Text, nullable=False),
    Column("write", Text, nullable=False),
    UniqueConstraint("container_id", "path"),
)

public_links = Table(
    "public_links", metadata,
    Column("token", String(64), primary_key=True),
    Column("object_id", Integer, ForeignKey("objects.id", ondelete="CASCADE"), nullable=False,
           unique=True),
    Column("created", Float, nullable=False),
)

# -- schema version 5: images (Plankton, the Glance v2 subset; pithos/catalog/images.py) ---------

# An image: metadata over a map.  `root`/`size` name the map of the object version it was made
# from (or uploaded to); the row keeps that map alive on its own (gc takes it as a root), so
# the object may change or go without the image losing its data.  `made_object`: the image
# created that object (an upload, a snapshot), so deleting the image deletes it too.
images = Table(
    "images", metadata,
    Column("id", String(36), primary_key=True),  # uuid4
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"),
           nullable=False),
    Column("name", String(255), nullable=False),
    Column("container", String(256), nullable=True),
    Column("object", String(1024), nullable=True),
    Column("root", LargeBinary(32), nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("checksum", String(32), nullable=True),  # MD5 hex of the content
    Column("disk_format", String(16), nullable=True),
    Column("container_format", String(16), nullable=True),
    Column("min_disk", Integer, nullable=False),
    Column("min_ram", Integer, nullable=False),
    Column("visibility", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("protected", Boolean, nullable=False),
    Column("made_object", Boolean, nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    # The project the image is charged to (migration 7); NULL: the owner's home project.
    Column("project_id", String(256), nullable=True),
    Index("images_account", "account_id", "id"),
    Index("images_visibility", "visibility", "id"),
)

image_properties = Table(
    "image_properties", metadata,
    Column("image_id", String(36), ForeignKey("images.id", ondelete="CASCADE"),
           primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
)

# The accounts a `shared` image is shared with, and whether each accepted it.
image_members = Table(
    "image_members", metadata,
    Column("image_id", String(36), ForeignKey("images.id", ondelete="CASCADE"),
           primary_key=True),
    Column("member", String(256), primary_key=True),  # an account name
    Column("status", String(16), nullable=False),  # pending, accepted, rejected
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Index("image_members_member", "member"),
)

# -- schema version 7: projects, their quotas and commissions (pithos/catalog/quotas.py) --------

# A project: a pool of quota that users act within.  Every account has a home project that is
# not a row here: its id and name are the account's name, its members the account's users.
projects = Table(
    "projects", metadata,
    Column("id", String(64), primary_key=True),  # uuid4 hex
    Column("name", String(256), nullable=False, unique=True),
    Column("description", Text, nullable=False),
    Column("created", Float, nullable=False),
)

project_members = Table(
    "project_members", metadata,
    Column("project_id", String(64), ForeignKey("projects.id", ondelete="CASCADE"),
           primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Index("project_members_user", "user_id"),
)

# A project's holding of one resource: its limit (NULL: none), what accepted commissions
# charged (`usage`) and what issued ones may still charge (`pending`, positive quantities
# only).  A charge is one conditional UPDATE of this row: usage + pending + q <= limit.
# `project_id` names a project row or a home project (an account's name): no foreign key.
project_holdings = Table(
    "project_holdings", metadata,
    Column("project_id", String(256), primary_key=True),
    Column("resource", String(32), primary_key=True),
    Column("quota_limit", BigInteger, nullable=True),
    Column("usage", BigInteger, nullable=False, server_default="0"),
    Column("pending", BigInteger, nullable=False, server_default="0"),
)

# Striped usage of a holding without a limit (PostgreSQL, migration 10): concurrent charges
# add to one stripe each instead of all locking the holding's row; the usage is the
# holding's plus its stripes'.  Folded into the holding before a limit is set, so a limited
# holding's stripes are zero (pithos/catalog/pg_functions.py).
holding_stripes = Table(
    "holding_stripes", metadata,
    Column("project_id", String(256), primary_key=True),
    Column("resource", String(32), primary_key=True),
    Column("stripe", Integer, primary_key=True),
    Column("usage", BigInteger, nullable=False, server_default="0"),
)

# An issued commission not yet accepted or rejected, and its provisions.  One past `expires`
# is rejected by the reaper (Catalog.reap_commissions, at each server start and by `pithos
# project reap`).
commissions = Table(
    "commissions", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", String(256), nullable=False),
    Column("name", String(256), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Index("commissions_expires", "expires"),
)

commission_provisions = Table(
    "commission_provisions", metadata,
    Column("commission_id", Integer, ForeignKey("commissions.id", ondelete="CASCADE"),
           primary_key=True),
    Column("resource", String(32), primary_key=True),
    Column("quantity", BigInteger, nullable=False),
)


V1_TABLES = [accounts, account_meta, users, tokens, containers, container_meta,
             container_stats, objects, versions, version_meta]
V2_TABLES = [upload_leases, account_blocks, groups, sharing, public_links]


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=V1_TABLES)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=V2_TABLES)


def _v3(conn: Connection) -> None:
    # A database made by migration 1 of this release already has the column (create_all).
    if "initial_key" not in {c["name"] for c in inspect(conn).get_columns("users")}:
        conn.execute(text("ALTER TABLE users ADD COLUMN initial_key BOOLEAN NOT NULL "
                          "DEFAULT FALSE"))


def _v4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[user_blocks])


def _v5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[images, image_properties, image_members])


def _v6(conn: Connection) -> None:
    # The change feed (pithos/catalog/changes.py) and the chunking policy.  A database made
    # by migration 1 of this release already has them (create_all).
    have = {c["name"] for c in inspect(conn).get_columns("containers")}
    if "change_seq" not in have:
        conn.execute(text("ALTER TABLE containers ADD COLUMN change_seq BIGINT NOT NULL "
                          "DEFAULT 0"))
    if "chunking" not in have:
        conn.execute(text("ALTER TABLE containers ADD COLUMN chunking VARCHAR(16)"))
    if "change_seq" not in {c["name"] for c in inspect(conn).get_columns("objects")}:
        conn.execute(text("ALTER TABLE objects ADD COLUMN change_seq BIGINT"))
        # Objects already there are changes of the feed's first page, numbered in the
        # order they were made.
        conn.execute(text("UPDATE objects SET change_seq = id"))
        conn.execute(text("UPDATE containers SET change_seq = COALESCE((SELECT MAX(id) FROM "
                          "objects WHERE objects.container_id = containers.id), 0)"))
    for index in objects.indexes:
        if index.name == "objects_changes":
            index.create(conn, checkfirst=True)


def _v7(conn: Connection) -> None:
    # Projects and commissions; users' passwords, the project a token acts in and the project
    # a container's and an image's usage is charged to (NULL: the owner account's home
    # project).  Today's usage becomes the home projects' holdings.
    metadata.create_all(conn, tables=[projects, project_members, project_holdings,
                                      commissions, commission_provisions])
    for table, column, kind in (("users", "password_hash", "VARCHAR(256)"),
                                ("tokens", "project_id", "VARCHAR(256)"),
                                ("containers", "project_id", "VARCHAR(256)"),
                                ("images", "project_id", "VARCHAR(256)")):
        if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    conn.execute(text(
        "INSERT INTO project_holdings (project_id, resource, usage, pending) "
        "SELECT a.name, 'bytes', COALESCE(SUM(st.bytes), 0), 0 FROM accounts a "
        "JOIN containers c ON c.account_id = a.id JOIN container_stats st "
        "ON st.container_id = c.id GROUP BY a.name"))
    conn.execute(text(
        "INSERT INTO project_holdings (project_id, resource, usage, pending) "
        "SELECT a.name, 'objects', COALESCE(SUM(st.objects), 0), 0 FROM accounts a "
        "JOIN containers c ON c.account_id = a.id JOIN container_stats st "
        "ON st.container_id = c.id GROUP BY a.name"))
    conn.execute(text(
        "INSERT INTO project_holdings (project_id, resource, usage, pending) "
        "SELECT a.name, 'images', COUNT(*), 0 FROM accounts a JOIN images i "
        "ON i.account_id = a.id GROUP BY a.name"))



def _v8(conn: Connection) -> None:
    # A project's `bytes` holds every version kept (the history too), not only the current
    # versions migration 7 took from the counters: recomputed from the versions, per
    # project (a container's own, else its account's home project).
    conn.execute(text(
        "UPDATE project_holdings SET usage = (SELECT COALESCE(SUM(v.size), 0) FROM versions v "
        "JOIN objects o ON o.id = v.object_id JOIN containers c ON c.id = o.container_id "
        "JOIN accounts a ON a.id = c.account_id "
        "WHERE COALESCE(c.project_id, a.name) = project_holdings.project_id) "
        "WHERE resource = 'bytes'"))


def _v9(conn: Connection) -> None:
    # Small objects inline in their version row.  A database made by migration 1 of this
    # release already has the column (create_all).
    if "inline_data" not in {c["name"] for c in inspect(conn).get_columns("versions")}:
        kind = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
        conn.execute(text(f"ALTER TABLE versions ADD COLUMN inline_data {kind}"))


def _v10(conn: Connection) -> None:
    # A new version committed in one call on PostgreSQL, and striped usage of holdings
    # without a limit (pithos/catalog/pg_functions.py: the functions' text is this
    # migration's).  SQLite gets the (unused) table only.
    from pithos.catalog.pg_functions import FUNCTIONS_V10

    metadata.create_all(conn, tables=[holding_stripes])
    if conn.dialect.name == "postgresql":
        # On the driver's cursor with no parameters: the bodies' '%' are PL/pgSQL's.
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for function in FUNCTIONS_V10:
                cur.execute(function)
        finally:
            cur.close()


def _v11(conn: Connection) -> None:
    # PostgreSQL: a write leaves its object's change unnumbered, stamped from a sequence, and
    # the feed's reader numbers it (pithos/catalog/changes.py), so writers of one container no
    # longer hold its row to their commits; the one-call commit does so too.  A database made
    # by migration 1 of this release already has the column (create_all).
    from pithos.catalog.pg_functions import FUNCTIONS_V11

    if "change_stamp" not in {c["name"] for c in inspect(conn).get_columns("objects")}:
        conn.execute(text("ALTER TABLE objects ADD COLUMN change_stamp BIGINT"))
    if conn.dialect.name == "postgresql":
        conn.execute(text("CREATE SEQUENCE IF NOT EXISTS pithos_change_stamps"))
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for function in FUNCTIONS_V11:
                cur.execute(function)
        finally:
            cur.close()


def _v12(conn: Connection) -> None:
    # PostgreSQL: a striped charge locks its two stripe rows in one order whatever its
    # amounts (pithos/catalog/pg_functions.py), now that deletes and reaps charge so too.
    from pithos.catalog.pg_functions import FUNCTIONS_V12

    if conn.dialect.name == "postgresql":
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for function in FUNCTIONS_V12:
                cur.execute(function)
        finally:
            cur.close()


def _v13(conn: Connection) -> None:
    # PostgreSQL: the versions of a worker's concurrent PUTs committed in one transaction
    # (pithos_put_versions: pithos/catalog/pg_batch.py), a new version's object row written
    # once, and pithos_charge_storage's text with its two resources as one relation (the same
    # charge).
    from pithos.catalog.pg_functions import FUNCTIONS_V13

    if conn.dialect.name == "postgresql":
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for function in FUNCTIONS_V13:
                cur.execute(function)
        finally:
            cur.close()


def _v14(conn: Connection) -> None:
    # The index of declared ETags' marks (version_meta_etag_marks, above).  A database made
    # by migration 1 of this release already has it (create_all).
    for index in version_meta.indexes:
        if index.name == "version_meta_etag_marks":
            index.create(conn, checkfirst=True)


def _v15(conn: Connection) -> None:
    # PostgreSQL: a commit that checks a container's or an account's byte quota locks that
    # row first, so that concurrent commits cannot each pass it (pithos/catalog/pg_functions.py).
    from pithos.catalog.pg_functions import FUNCTIONS_V15

    if conn.dialect.name == "postgresql":
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for function in FUNCTIONS_V15:
                cur.execute(function)
        finally:
            cur.close()


def _v16(conn: Connection) -> None:
    # PostgreSQL: a batch of new versions charges each unlimited project's holdings once,
    # after its items, instead of once per item (pithos/catalog/pg_functions.py).
    from pithos.catalog.pg_functions import FUNCTIONS_V16

    if conn.dialect.name == "postgresql":
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for function in FUNCTIONS_V16:
                cur.execute(function)
        finally:
            cur.close()


def _v17(conn: Connection) -> None:
    # SQLite: the grants' tables rebuilt WITHOUT ROWID (see account_blocks), their rows copied
    # in key order (each page of the new B-tree written once).  One made by create_all of
    # this release is so already; PostgreSQL's tables do not change.
    if conn.dialect.name != "sqlite":
        return
    for table in (account_blocks, user_blocks):
        made = conn.execute(text("SELECT sql FROM sqlite_master WHERE type = 'table' "
                                 "AND name = :name"), {"name": table.name}).scalar()
        if made is None or "WITHOUT ROWID" in str(made).upper():
            continue
        old = f"{table.name}_v16"
        conn.execute(text(f"ALTER TABLE {table.name} RENAME TO {old}"))
        table.create(conn)
        names = ", ".join(c.name for c in table.columns)
        key = ", ".join(c.name for c in table.primary_key.columns)
        conn.execute(text(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {old} "
                          f"ORDER BY {key}"))
        conn.execute(text(f"DROP TABLE {old}"))


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
    (5, _v5),
    (6, _v6),
    (7, _v7),
    (8, _v8),
    (9, _v9),
    (10, _v10),
    (11, _v11),
    (12, _v12),
    (13, _v13),
    (14, _v14),
    (15, _v15),
    (16, _v16),
    (17, _v17),
]
# The migration that made version_meta_etag_marks (tests check the scan uses it).
MIGRATION_ETAG_MARKS = 14
LATEST = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    schema_version.create(conn, checkfirst=True)
    found = conn.execute(select(schema_version.c.version)).scalar()
    return int(found or 0)


# Key of the PostgreSQL advisory lock that serializes migrations ("pith").
MIGRATION_LOCK_KEY = 0x70697468


def _exclusive(conn: Connection) -> None:
    """Make this transaction the only one migrating.  SQLite's write transactions already
    are (BEGIN IMMEDIATE); on PostgreSQL, nodes opening one database at once would otherwise
    both find it old and both create the same tables (one fails on a unique violation)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def migrate(begin: Callable[[], object]) -> int:
    """Bring the schema to LATEST; returns the version found before.  `begin` opens a write
    transaction (a context manager giving a Connection).  Safe to run from many processes
    at once: each step runs alone and skips what another process already applied."""
    with begin() as conn:  # type: ignore[attr-defined]
        _exclusive(conn)
        before = current_version(conn)
    for number, step in MIGRATIONS:
        with begin() as conn:  # type: ignore[attr-defined]
            _exclusive(conn)
            if current_version(conn) >= number:
                continue  # another process got there first
            step(conn)
            conn.execute(schema_version.delete())
            conn.execute(schema_version.insert().values(version=number))
    return before

"""The catalog's boundary (issue 22): every public method returns named records, never a
positional tuple or a database row, and raises only PithosError subclasses, never SQLAlchemy's
or a driver's errors.  On every database: SQLite here, PostgreSQL when
PITHOS_TEST_POSTGRES_URL names one."""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import sqlite3
import time

import psycopg
import pytest
from conftest import catalog_databases, postgres_database
from sqlalchemy import exc as sa
from sqlalchemy import text
from sqlalchemy.engine import make_url

from pithos.catalog import Catalog
from pithos.catalog import records as r
from pithos.catalog.db_errors import database_errors, is_transient, translate
from pithos.catalog.leases import WriterLeases, oldest_live_writer
from pithos.core.errors import (
    BackendError,
    Conflict,
    InvalidArgument,
    NoSpace,
    NotFound,
    PithosError,
)

ROOT = b"r" * 32


def put(cat, cid, name, size=10, **kw):
    return cat.put_version(cid, name, root=ROOT, size=size, etag="e" * 32,
                           content_type=kw.pop("content_type", "text/plain"),
                           meta=kw.pop("meta", {}), **kw)


def public_methods() -> set[str]:
    return {name for name, _ in inspect.getmembers(Catalog, inspect.isfunction)
            if not name.startswith("_")}


# Every public method of the catalog, called on a database that is gone.  A method added to
# the Catalog without a case here fails test_the_calls_cover_every_public_method.
CALLS = {
    "ensure_account": lambda c: c.ensure_account("a"),
    "account": lambda c: c.account("a"),
    "update_account": lambda c: c.update_account(1, {"k": "v"}),
    "list_accounts": lambda c: c.list_accounts(),
    "container": lambda c: c.container(1, "c"),
    "account_and_container": lambda c: c.account_and_container("a", "c"),
    "create_container": lambda c: c.create_container(1, "c"),
    "update_container": lambda c: c.update_container(1, quota_bytes=5),
    "delete_container": lambda c: c.delete_container(1),
    "list_containers": lambda c: c.list_containers(1),
    "object": lambda c: c.object(1, "o"),
    "object_and_public_token": lambda c: c.object_and_public_token(1, "o"),
    "put_version": lambda c: put(c, 1, "o"),
    "update_object_meta": lambda c: c.update_object_meta(1, "o", {}, delete_at=None),
    "delete_object": lambda c: c.delete_object(1, "o"),
    "versions": lambda c: c.versions(1, "o"),
    "object_version": lambda c: c.object_version(1, "o", "v"),
    "object_at": lambda c: c.object_at(1, "o", time.time()),
    "purge_history": lambda c: c.purge_history(1, None, time.time()),
    "reap_expired": lambda c: c.reap_expired(),
    "drop_version": lambda c: c.drop_version(1),
    "declared_etags": lambda c: c.declared_etags(),
    "settle_etag": lambda c: c.settle_etag(1, "e" * 32),
    "put_delete_marker": lambda c: c.put_delete_marker(1, "o", "application/x-deleted"),
    "remove_version": lambda c: c.remove_version(1, "o", "v"),
    "make_current": lambda c: c.make_current(1, "o", "v"),
    "version_rows": lambda c: c.version_rows(1),
    "kept_bytes": lambda c: c.kept_bytes(1),
    "current_vids": lambda c: c.current_vids(1, ["o"]),
    "list_objects": lambda c: c.list_objects(1),
    "add_user": lambda c: c.add_user("a", "u", "hash", admin=False),
    "set_initial_key": lambda c: c.set_initial_key("a", "u", "hash", admin=True),
    "delete_user": lambda c: c.delete_user("a", "u"),
    "users": lambda c: c.users(),
    "user_credentials": lambda c: c.user_credentials("a", "u"),
    "add_token": lambda c: c.add_token("t" * 64, 1, 2e9),
    "token_user": lambda c: c.token_user("t" * 64, time.time()),
    "delete_token": lambda c: c.delete_token("t" * 64),
    "set_group": lambda c: c.set_group(1, "g", ["x"]),
    "groups": lambda c: c.groups(1),
    "set_sharing": lambda c: c.set_sharing(1, 1, "p", "x", ""),
    "sharing_for": lambda c: c.sharing_for(1, "a/b"),
    "container_sharing": lambda c: c.container_sharing(1),
    "all_sharing": lambda c: c.all_sharing(),
    "publish": lambda c: c.publish(1),
    "unpublish": lambda c: c.unpublish(1),
    "public_token": lambda c: c.public_token(1),
    "public_object": lambda c: c.public_object("t"),
    "public_object_and_account": lambda c: c.public_object_and_account("t"),
    "container_account": lambda c: c.container_account(1),
    "set_account_quota": lambda c: c.set_account_quota("a", 5),
    "usage": lambda c: c.usage(1),
    "grant_blocks": lambda c: c.grant_blocks(1, [ROOT]),
    "granted_blocks": lambda c: c.granted_blocks(1, [ROOT]),
    "grant_user_blocks": lambda c: c.grant_user_blocks(1, [ROOT]),
    "granted_user_blocks": lambda c: c.granted_user_blocks(1, [ROOT]),
    "version_roots": lambda c: list(c.version_roots()),
    "max_version_id": lambda c: c.max_version_id(),
    "roots_after": lambda c: c.roots_after(0),
    "versions_naming": lambda c: c.versions_naming([ROOT]),
    "inline_contents": lambda c: list(c.inline_contents()),
    "publish_upload_lease": lambda c: c.publish_upload_lease(1, time.time()),
    "upload_lease_rows": lambda c: c.upload_lease_rows(),
    "delete_upload_lease": lambda c: c.delete_upload_lease(1),
    "create_image": lambda c: c.create_image(
        1, "i", name="n", disk_format="raw", container_format="bare", min_disk=0, min_ram=0,
        visibility="private", protected=False, properties={}),
    "image": lambda c: c.image("i"),
    "list_images": lambda c: c.list_images("a"),
    "update_image": lambda c: c.update_image("i", {"name": "m"}),
    "delete_image": lambda c: c.delete_image("i"),
    "image_roots": lambda c: list(c.image_roots()),
    "put_image_member": lambda c: c.put_image_member("i", "b", "pending", create=True),
    "delete_image_member": lambda c: c.delete_image_member("i", "b"),
    "image_members": lambda c: c.image_members("i"),
    "image_member": lambda c: c.image_member("i", "b"),
    "changes": lambda c: c.changes(1, 0, 10),
    "create_project": lambda c: c.create_project("p"),
    "project": lambda c: c.project("p"),
    "projects": lambda c: c.projects(),
    "user_projects": lambda c: c.user_projects(r.UserInfo(1, "a", "u", False)),
    "is_member": lambda c: c.is_member(r.UserInfo(1, "a", "u", False), "p"),
    "set_member": lambda c: c.set_member("p", 1, True),
    "project_members": lambda c: c.project_members("p"),
    "user_by_id": lambda c: c.user_by_id(1),
    "set_password": lambda c: c.set_password(1, "scrypt$00$00"),
    "password_hash": lambda c: c.password_hash(1),
    "set_quota": lambda c: c.set_quota("p", {"bytes": 1}),
    "holdings": lambda c: c.holdings("p"),
    "charge": lambda c: c.charge("p", {"bytes": 1}),
    "issue_commission": lambda c: c.issue_commission("p", {"vcpus": 1}, "n"),
    "accept_commission": lambda c: c.accept_commission(1),
    "reject_commission": lambda c: c.reject_commission(1),
    "commissions": lambda c: c.commissions(),
    "reap_commissions": lambda c: c.reap_commissions(),
    # The writer leases reach the database beside the catalog's methods (PostgreSQL's
    # advisory locks): the same rule holds for them.
    "WriterLeases.begin": lambda c: WriterLeases(c, idle_clear_s=0).begin(),
    "oldest_live_writer": lambda c: oldest_live_writer(c),
}
NOT_DATABASE_CALLS = {"close"}


def test_the_calls_cover_every_public_method():
    assert public_methods() - NOT_DATABASE_CALLS <= set(CALLS)


@pytest.fixture(params=catalog_databases())
def gone(request, tmp_path):
    """(A catalog, a function that makes its database go away for good): an SQLite file
    whose directory is removed, a PostgreSQL database dropped under open connections."""
    if request.param == "sqlite":
        directory = tmp_path / "data"
        directory.mkdir()
        catalog = Catalog(f"sqlite:///{directory}/catalog.sqlite")

        def destroy() -> None:
            catalog.close()
            shutil.rmtree(directory)
        yield catalog, destroy
        catalog.close()
        return
    url, drop = postgres_database("gone")
    catalog = Catalog(url)
    yield catalog, drop
    catalog.close()
    drop()


def test_a_database_that_is_gone_raises_backend_error_from_every_method(gone):
    catalog, destroy = gone
    catalog.ensure_account("a")
    list(catalog.version_roots())  # the pools hold live connections when the database goes
    catalog.account_and_container("a", "c")
    destroy()
    escaped = {}
    for name, call in CALLS.items():
        try:
            call(catalog)
        except PithosError as exc:
            if type(exc) is not BackendError:
                escaped[name] = repr(exc)
                continue
            assert "\n" not in str(exc), name  # one line
            assert str(exc).startswith(("the catalog failed: ",
                                        "the catalog is unavailable for now: ")), (name, exc)
        except Exception as exc:  # the point: nothing else escapes
            escaped[name] = repr(exc)
        else:
            escaped[name] = "no error"
    assert escaped == {}


def test_a_unique_violation_is_a_conflict(catalog):
    u = catalog.add_user("acct", "bob", "hash", admin=False)
    catalog.add_token("t" * 64, u.id, 2e9)
    with pytest.raises(Conflict, match="changed concurrently") as found:
        catalog.add_token("t" * 64, u.id, 2e9)
    assert isinstance(found.value.__cause__, sa.IntegrityError)  # kept for the logs
    assert catalog.token_user("t" * 64, time.time()).user.id == u.id  # nothing changed


def test_a_content_type_past_its_column_is_invalid_and_writes_nothing(catalog, container):
    """PostgreSQL refuses a value past VARCHAR(256) (a 5xx after the content was stored):
    the catalog says it is the request's error first, on every database and write."""
    _, c = container
    longest = "x/" + "y" * 254
    put(catalog, c.id, "kept", content_type=longest)
    with pytest.raises(InvalidArgument, match="Content-Type longer than 256"):
        put(catalog, c.id, "long", content_type=longest + "y")
    with pytest.raises(InvalidArgument, match="Content-Type longer than 256"):
        catalog.update_object_meta(c.id, "kept", {}, delete_at=None,
                                   content_type=longest + "y")
    assert catalog.object(c.id, "long") is None
    assert catalog.object(c.id, "kept").content_type == longest


def test_a_row_removed_under_a_write_is_a_conflict(catalog, container):
    _, c = container
    catalog.delete_container(c.id)
    with pytest.raises(Conflict):
        put(catalog, c.id, "o")
    with pytest.raises(NotFound):
        catalog.usage(c.id)
    with pytest.raises(NotFound):
        catalog.container_account(c.id)


def test_a_missing_table_is_a_permanent_backend_error(catalog, container):
    acct, c = container
    with catalog.engine.begin() as conn:
        conn.execute(text("DROP TABLE sharing"))
    for call in (lambda: catalog.sharing_for(c.id, "a/b"),  # a prepared statement
                 lambda: catalog.container_sharing(c.id),  # a read transaction
                 lambda: catalog.set_sharing(acct, c.id, "p", "x", ""),  # a write
                 lambda: catalog.account_and_container("acct", "c")):  # a join with it
        with pytest.raises(BackendError, match=r"^the catalog failed: ") as found:
            call()
        assert found.value.transient is False


@pytest.mark.skipif("postgresql" not in catalog_databases(), reason="needs PostgreSQL")
def test_an_unreachable_server_is_a_transient_backend_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed: nothing listens there)
    nowhere = make_url(os.environ["PITHOS_TEST_POSTGRES_URL"]).set(host="127.0.0.1", port=port)
    with pytest.raises(BackendError, match="unavailable for now") as found:
        Catalog(nowhere.render_as_string(hide_password=False))
    assert found.value.transient is True


def test_an_sqlite_file_that_is_no_database_is_a_backend_error(tmp_path):
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(BackendError, match=r"^the catalog failed: file is not a database"):
        Catalog(f"sqlite:///{path}")


# -- the classification, unit by unit ----------------------------------------------------------


def _sqlite_error(code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(f"code {code}")
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(("orig", "transient"), [
    (_sqlite_error(sqlite3.SQLITE_BUSY), True),
    (_sqlite_error(sqlite3.SQLITE_LOCKED), True),
    (_sqlite_error(sqlite3.SQLITE_CANTOPEN), False),
    (_sqlite_error(sqlite3.SQLITE_CORRUPT), False),
    (psycopg.errors.SerializationFailure("could not serialize"), True),
    (psycopg.errors.DeadlockDetected("deadlock"), True),
    (psycopg.errors.AdminShutdown("terminating connection"), True),
    (psycopg.errors.TooManyConnections("too many clients"), True),
    (psycopg.errors.InvalidCatalogName("database does not exist"), False),
    (psycopg.errors.UndefinedTable("relation does not exist"), False),
    (psycopg.OperationalError("connection refused\nIs the server running?"), True),
])
def test_transient_or_not(orig, transient):
    wrapped = sa.OperationalError("SELECT 1", {}, orig)
    assert is_transient(wrapped) is transient
    err = translate(wrapped)
    assert type(err) is BackendError and err.transient is transient
    assert "\n" not in str(err) and "SELECT" not in str(err)


def test_the_translation_spares_what_is_not_a_database_error():
    with pytest.raises(KeyError), database_errors():
        raise KeyError("x")
    with pytest.raises(NotFound), database_errors():
        raise NotFound("x")
    with pytest.raises(NoSpace), database_errors():  # the disk-full translation stays
        raise sa.OperationalError("INSERT", {}, _sqlite_error(sqlite3.SQLITE_FULL))
    with pytest.raises(BackendError) as found, database_errors(psycopg.Error):
        raise psycopg.errors.UndefinedTable("relation does not exist")  # a raw driver error
    assert found.value.transient is False
    with pytest.raises(BackendError) as found, database_errors(psycopg.Error):
        raise psycopg.OperationalError("connection failed: ...")  # as a pool's connect raises
    assert found.value.transient is True
    with pytest.raises(Conflict), database_errors(psycopg.Error):
        raise psycopg.errors.UniqueViolation("duplicate key")
    with pytest.raises(BackendError, match="unavailable") as found, database_errors():
        raise sa.TimeoutError("QueuePool limit reached")
    assert found.value.transient is True


# -- named records -------------------------------------------------------------------------------


def test_every_lookup_returns_named_records(catalog, container):
    acct, c = container
    u = catalog.add_user("acct", "bob", "hash", admin=False)
    catalog.add_token("t" * 64, u.id, 2e9)
    v = put(catalog, c.id, "dir/o", meta={"user": {"k": "v"}})
    token = catalog.publish(v.object_id)
    catalog.set_sharing(acct, c.id, "dir/", "bob", "")
    catalog.publish_upload_lease(7, 123.0)

    both = catalog.account_and_container("acct", "c")
    assert type(both) is r.AccountAndContainer and both.container.id == c.id
    assert {type(x) for x in catalog.list_containers(acct)} == {r.ContainerSummary}
    assert {type(x) for x in catalog.list_containers(acct, until=time.time())} == {
        r.ContainerSummary}
    current = catalog.object_and_public_token(c.id, "dir/o")
    assert type(current) is r.CurrentVersion and current.public_token == token
    public = catalog.public_object_and_account(token)
    assert type(public) is r.PublicObject and public.account_id == acct
    assert [type(x) for x in catalog.versions(c.id, "dir/o")] == [r.VersionSummary]
    assert catalog.versions(c.id, "dir/o")[0].vid == v.vid
    usage = catalog.usage(c.id)
    assert type(usage) is r.Usage and usage.container_quota_bytes is None
    sharing = catalog.sharing_for(c.id, "dir/o")
    assert type(sharing) is r.SharingEntry and sharing.path == "dir/"
    assert [type(x) for x in catalog.container_sharing(c.id)] == [r.SharingEntry]
    assert catalog.all_sharing() == [r.AccountSharing("acct", "c", "bob", "")]
    credentials = catalog.user_credentials("acct", "bob")
    assert type(credentials) is r.UserCredentials and credentials.key_hash == "hash"
    owner = catalog.token_user("t" * 64, time.time())
    assert type(owner) is r.TokenOwner and owner.expires == 2e9
    after = catalog.roots_after(0)
    assert type(after) is r.RootsAfter and after.roots == [ROOT]
    assert after.newest_version_id == catalog.max_version_id()
    assert catalog.upload_lease_rows() == [r.LeaseRow(7, 123.0)]
    assert [type(x) for x in catalog.versions_naming([ROOT])] == [r.VersionNaming]
    assert list(catalog.inline_contents()) == []  # (ROOT's version is stored as blocks)

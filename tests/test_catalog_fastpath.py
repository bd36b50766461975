"""The catalog's hot paths (prepared statements, reads outside transactions, the combined
lookups of a GET) on every database: SQLite here, PostgreSQL when PITHOS_TEST_POSTGRES_URL
names one.  Each combined lookup must answer exactly as the separate ones it replaces."""

import dataclasses
import os
import time

import pytest
from conftest import catalog_databases
from sqlalchemy import bindparam, create_engine, event, select, text
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from pithos.catalog import schema as s
from pithos.catalog.prepared import Prepared
from pithos.catalog.records import (
    AccountAndContainer,
    PublicObject,
    SharingEntry,
    TokenOwner,
    Usage,
)
from pithos.core.errors import Conflict, NotFound, QuotaExceeded

ROOT = b"r" * 32


def put(cat, cid, name, size=10, **kw):
    return cat.put_version(cid, name, root=ROOT, size=size, etag="e" * 32,
                           content_type="text/plain", meta=kw.pop("meta", {}), **kw)


def test_account_and_container_match_the_separate_lookups(catalog):
    assert catalog.account_and_container("nobody", "c") == AccountAndContainer(None, None)
    acct = catalog.ensure_account("acct")
    catalog.update_account(acct, acl='{"read-only": ["x"]}', set_acl=True)
    info, c = catalog.account_and_container("acct", "c")
    assert info == catalog.account("acct", detail=False) and c is None
    catalog.create_container(acct, "c", read_acl=".r:*", write_acl="bob", versioning="none",
                             quota_bytes=5)
    catalog.create_container(acct, "other")
    info, c = catalog.account_and_container("acct", "c")
    assert info.acl == '{"read-only": ["x"]}'
    assert dataclasses.replace(c, has_sharing=None) == catalog.container(acct, "c",
                                                                         detail=False)
    assert (c.read_acl, c.write_acl, c.versioning, c.quota_bytes) == (".r:*", "bob", "none", 5)
    assert c.has_sharing is False
    catalog.set_sharing(acct, c.id, "dir/", "someone", "")
    assert catalog.account_and_container("acct", "c").container.has_sharing is True
    assert catalog.account_and_container("acct", "other").container.has_sharing is False
    # Another account's container of the same name is not this one.
    other = catalog.ensure_account("acct2")
    catalog.create_container(other, "c")
    assert catalog.account_and_container("acct2", "c").container.account_id == other


def test_object_comes_with_its_metadata_and_public_token(catalog, container):
    _, c = container
    assert catalog.object_and_public_token(c.id, "o") is None
    written = put(catalog, c.id, "o", meta={"user": {"b": "2", "a": "1"},
                                            "sys": {"content-disposition": "inline"}})
    v, token = catalog.object_and_public_token(c.id, "o")
    assert v == written and token is None
    assert list(v.user_meta()) == ["a", "b"]  # in key order, on every database
    assert isinstance(v.root, bytes) and isinstance(v.size, int)
    assert isinstance(v.created, float) and isinstance(v.version_id, int)
    assert catalog.object(c.id, "o") == v
    token = catalog.publish(v.object_id)
    assert catalog.object_and_public_token(c.id, "o") == (v, token)
    assert catalog.public_token(v.object_id) == token
    bare = put(catalog, c.id, "bare")
    assert catalog.object(c.id, "bare") == bare and bare.meta == {}
    catalog.unpublish(v.object_id)
    assert catalog.object_and_public_token(c.id, "o") == (v, None)
    assert catalog.public_token(v.object_id) is None


def test_deleted_and_expired_objects_are_not_found(catalog, container):
    _, c = container
    put(catalog, c.id, "gone")
    catalog.delete_object(c.id, "gone")
    assert catalog.object(c.id, "gone") is None
    soon = put(catalog, c.id, "soon", delete_at=time.time() + 60)
    assert catalog.object(c.id, "soon") == soon
    assert catalog.object(c.id, "soon", now=time.time() + 120) is None


def test_public_object_and_account(catalog, container):
    acct, c = container
    v = put(catalog, c.id, "o", meta={"user": {"k": "v"}})
    token = catalog.publish(v.object_id)
    assert catalog.public_object_and_account(token) == PublicObject(v, acct)
    assert catalog.public_object(token) == v
    assert catalog.container_account(c.id) == acct
    assert catalog.public_object_and_account("nope") is None
    catalog.delete_object(c.id, "o")
    assert catalog.public_object(token) is None
    with pytest.raises(NotFound):
        catalog.container_account(c.id + 1000)


def test_sharing_for_finds_the_nearest_at_every_depth(catalog, container):
    acct, c = container
    catalog.set_sharing(acct, c.id, "a/", "dir-slash", "")
    catalog.set_sharing(acct, c.id, "a/b/c", "plain", "w")
    assert catalog.sharing_for(c.id, "a") is None
    assert catalog.sharing_for(c.id, "a/x") == SharingEntry("a/", "dir-slash", "")
    assert catalog.sharing_for(c.id, "a/b/c") == SharingEntry("a/b/c", "plain", "w")
    # A plain object's sharing is its own: under it, the directory's above applies (issue 26).
    assert catalog.sharing_for(c.id, "a/b/c/d").path == "a/"
    # Many depths, so that many sizes of the statement are used (and padded).
    deep = "a/" + "/".join(f"p{i}" for i in range(12))
    for k in range(2, 14):
        name = "/".join(deep.split("/")[:k])
        assert catalog.sharing_for(c.id, name) == ("a/", "dir-slash", "")
    assert catalog.sharing_for(c.id + 1, "a/x") is None  # per container


def test_versions_by_id_and_by_time(catalog, container):
    _, c = container
    v1 = put(catalog, c.id, "o", size=1, meta={"user": {"k": "1"}})
    time.sleep(0.01)
    t1 = time.time()
    time.sleep(0.01)
    v2 = put(catalog, c.id, "o", size=2)
    assert catalog.object_version(c.id, "o", v1.vid) == v1
    assert catalog.object_version(c.id, "o", v2.vid) == v2
    assert catalog.object_version(c.id, "o", "nope") is None
    assert catalog.object_at(c.id, "o", t1) == v1
    assert catalog.object_at(c.id, "o", time.time()) == v2
    assert catalog.object_at(c.id, "o", v1.created - 1) is None
    catalog.delete_object(c.id, "o")
    assert catalog.object_at(c.id, "o", time.time()) is None  # a deletion marker
    exp = put(catalog, c.id, "exp", delete_at=time.time() + 5)
    assert catalog.object_at(c.id, "exp", time.time()) == exp
    assert catalog.object_at(c.id, "exp", time.time() + 10) is None


def test_token_user_and_usage(catalog, container):
    _, c = container
    u = catalog.add_user("acct", "bob", "hash", admin=True)
    catalog.add_token("t" * 64, u.id, 2e9)
    found = catalog.token_user("t" * 64, time.time())
    assert type(found) is TokenOwner
    user, expires = found.user, found.expires
    assert (user.id, user.account, user.name, user.admin, expires) == (u.id, "acct", "bob",
                                                                       True, 2e9)
    assert type(user.admin) is bool
    assert catalog.token_user("t" * 64, 2e9 + 1) is None
    put(catalog, c.id, "o", size=100)
    assert catalog.usage(c.id) == Usage(0, None, 0, None)  # no quota: not counted
    catalog.update_container(c.id, quota_bytes=1000)
    catalog.set_account_quota("acct", 5000)
    usage = catalog.usage(c.id)
    assert type(usage) is Usage
    assert (usage.container_bytes, usage.container_quota_bytes, usage.account_bytes,
            usage.account_quota_bytes) == (100, 1000, 100, 5000)
    with pytest.raises(NotFound):
        catalog.usage(c.id + 1000)


def test_put_version_counts_and_uuids(catalog, container):
    acct, c = container
    first = put(catalog, c.id, "o", size=10, grant=(acct, [b"1" * 32, b"2" * 32, b"1" * 32]))
    assert catalog.granted_blocks(acct, [b"1" * 32, b"2" * 32, b"3" * 32]) == {b"1" * 32,
                                                                              b"2" * 32}
    again = put(catalog, c.id, "o", size=30, grant=(acct, [b"1" * 32]))
    assert again.uuid == first.uuid and again.object_id == first.object_id
    info = catalog.container(acct, "c")
    assert (info.objects, info.bytes) == (1, 30)
    catalog.delete_object(c.id, "o")
    recreated = put(catalog, c.id, "o", size=5)
    assert recreated.uuid != first.uuid and recreated.object_id == first.object_id
    assert catalog.object(c.id, "o").uuid == recreated.uuid
    expiring = put(catalog, c.id, "o", size=7, delete_at=time.time() + 0.05)
    time.sleep(0.1)
    fresh = put(catalog, c.id, "o", size=3)  # the expired version no longer counts
    assert fresh.uuid != expiring.uuid
    info = catalog.container(acct, "c")
    assert (info.objects, info.bytes) == (1, 3)
    put(catalog, c.id, "p", size=4)
    info = catalog.container(acct, "c")
    assert (info.objects, info.bytes) == (2, 7)


def test_put_version_into_a_missing_container_is_a_conflict(catalog):
    # (A container deleted under the write: its foreign key refuses the object row.)
    with pytest.raises(Conflict):
        put(catalog, 12345, "o")


def test_put_version_quota_and_flat_versioning(catalog, container):
    _, c = container
    catalog.update_container(c.id, quota_bytes=100, versioning="none")
    put(catalog, c.id, "o", size=60)
    v = put(catalog, c.id, "o", size=90)
    assert [found.vid for found in catalog.versions(c.id, "o")] == [v.vid]
    with pytest.raises(QuotaExceeded):
        put(catalog, c.id, "p", size=20)
    assert catalog.object(c.id, "p") is None  # nothing of the refused version stays


@pytest.mark.parametrize("catalog", [u for u in catalog_databases() if u != "sqlite"],
                         indirect=True)
def test_a_dead_read_connection_is_replaced(catalog, container):
    """PostgreSQL: reads run on pooled connections that are not pinged before use; one the
    server dropped is discarded and the read retried."""
    acct, _ = container
    assert catalog.account("acct", detail=False).id == acct  # a pooled read connection
    dropped = []
    event.listen(catalog._read_engine, "invalidate", lambda *args: dropped.append(args))
    admin = create_engine(os.environ["PITHOS_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    db = catalog.engine.url.database
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": db})
    admin.dispose()
    assert catalog.account("acct", detail=False).id == acct
    assert len(dropped) == 1


def test_a_statement_with_late_parameters_is_refused():
    expanding = select(s.accounts.c.id).where(s.accounts.c.name.in_(bindparam("names",
                                                                               expanding=True)))
    with pytest.raises(ValueError):
        Prepared(expanding, SQLiteDialect_pysqlite())

"""The catalog's behaviour, the same suite on every database (SQLite here; PostgreSQL when
PITHOS_TEST_POSTGRES_URL names one, which scripts/test arranges in CI)."""

import threading
import time

import pytest

from pithos.catalog import Catalog
from pithos.catalog import schema as s
from pithos.core.errors import Conflict, NotFound

ROOT = b"r" * 32


def put(cat, cid, name, size=10, **kw):
    return cat.put_version(cid, name, root=ROOT, size=size, etag="e" * 32,
                           content_type="application/octet-stream", meta=kw.pop("meta", {}),
                           **kw)


def test_schema_is_versioned_and_reopening_upgrades_nothing(catalog):
    assert catalog.schema_found == 0
    again = Catalog(catalog.url)
    assert again.schema_found == s.LATEST
    again.close()


def test_accounts_and_metadata(catalog):
    a = catalog.ensure_account("a")
    assert catalog.ensure_account("a") == a
    catalog.update_account(a, {"color": "red", "size": "big"})
    catalog.update_account(a, {"size": None})
    info = catalog.account("a")
    assert info.meta == {"color": "red"} and info.containers == 0
    assert catalog.account("nobody") is None


def test_container_lifecycle_and_counters(catalog, container):
    acct, c = container
    assert catalog.create_container(acct, "c") is False  # exists: an update
    put(catalog, c.id, "o1", size=100)
    put(catalog, c.id, "o2", size=5)
    put(catalog, c.id, "o1", size=7)  # an overwrite changes bytes, not the count
    info = catalog.container(acct, "c")
    assert (info.objects, info.bytes) == (2, 12)
    assert (catalog.account("acct").objects, catalog.account("acct").bytes) == (2, 12)
    with pytest.raises(Conflict):
        catalog.delete_container(c.id)
    assert catalog.delete_object(c.id, "o1") and catalog.delete_object(c.id, "o2")
    assert not catalog.delete_object(c.id, "o2")
    assert (catalog.container(acct, "c").objects, catalog.container(acct, "c").bytes) == (0, 0)
    catalog.delete_container(c.id)
    assert catalog.container(acct, "c") is None


def test_versions_keep_uuid_until_deleted(catalog, container):
    _, c = container
    v1 = put(catalog, c.id, "o", meta={"user": {"k": "v"}})
    v2 = put(catalog, c.id, "o")
    assert v1.uuid == v2.uuid and v1.vid != v2.vid
    assert v2.meta == {}
    catalog.delete_object(c.id, "o")
    assert catalog.object(c.id, "o") is None
    v3 = put(catalog, c.id, "o")
    assert v3.uuid != v1.uuid


def test_metadata_post_replaces_in_place(catalog, container):
    _, c = container
    v = put(catalog, c.id, "o", meta={"user": {"a": "1"}, "sys": {"content-encoding": "gzip"}})
    after = catalog.update_object_meta(c.id, "o", {"user": {"b": "2"}}, delete_at=None,
                                       content_type="text/plain")
    assert after.version_id == v.version_id  # the content version is not copied
    assert after.meta == {"user": {"b": "2"}} and after.content_type == "text/plain"
    with pytest.raises(NotFound):
        catalog.update_object_meta(c.id, "missing", {}, delete_at=None)


def test_expiry_hides_then_reaps(catalog, container):
    acct, c = container
    put(catalog, c.id, "soon", size=3, delete_at=time.time() + 0.5)
    put(catalog, c.id, "later", size=4, delete_at=time.time() + 3600)
    assert catalog.object(c.id, "soon") is not None
    future = time.time() + 1
    assert catalog.object(c.id, "soon", now=future) is None
    assert [e.name for e in catalog.list_objects(c.id, now=future)] == ["later"]
    assert catalog.reap_expired(now=future) == 1
    assert (catalog.container(acct, "c").objects, catalog.container(acct, "c").bytes) == (1, 4)


def test_listing_window_delimiter_and_reverse(catalog, container):
    _, c = container
    names = ["a", "b/1", "b/2", "b/3/x", "c", "d/", "e"]
    for n in names:
        put(catalog, c.id, n)

    def ls(**kw):
        return [(e.name, e.subdir) for e in catalog.list_objects(c.id, **kw)]

    assert [n for n, _ in ls()] == names
    assert ls(delimiter="/") == [("a", False), ("b/", True), ("c", False), ("d/", True),
                                 ("e", False)]
    assert ls(prefix="b/", delimiter="/") == [("b/1", False), ("b/2", False), ("b/3/", True)]
    assert [n for n, _ in ls(marker="b/2", end_marker="e")] == ["b/3/x", "c", "d/"]
    assert [n for n, _ in ls(reverse=True, limit=3)] == ["e", "d/", "c"]
    assert ls(reverse=True, delimiter="/", limit=3) == [("e", False), ("d/", True),
                                                        ("c", False)]
    assert [n for n, _ in ls(limit=2, delimiter="/")] == ["a", "b/"]
    assert ls(prefix="zzz") == []


def test_container_listing(catalog):
    a = catalog.ensure_account("a")
    for n in ("x", "y", "z"):
        catalog.create_container(a, n)
    cid = catalog.container(a, "y").id
    put(catalog, cid, "o", size=9)
    rows = catalog.list_containers(a)
    assert [(n, o, b) for n, o, b, _ in rows] == [("x", 0, 0), ("y", 1, 9), ("z", 0, 0)]
    assert [r.name for r in catalog.list_containers(a, marker="x", limit=1)] == ["y"]
    assert [r.name for r in catalog.list_containers(a, reverse=True)] == ["z", "y", "x"]


def test_users_and_tokens(catalog):
    u = catalog.add_user("acct", "bob", "hash", admin=False)
    assert catalog.user_credentials("acct", "bob").key_hash == "hash"
    catalog.add_token("t" * 64, u.id, time.time() + 60)
    catalog.add_token("x" * 64, u.id, time.time() - 1)
    assert catalog.token_user("t" * 64, time.time()).user.name == "bob"
    assert catalog.token_user("x" * 64, time.time()) is None  # expired
    assert catalog.delete_user("acct", "bob")
    assert catalog.token_user("t" * 64, time.time()) is None  # tokens go with the user
    assert not catalog.delete_user("acct", "bob")


def test_concurrent_writers_of_one_name_end_with_one_winner(catalog, container):
    acct, c = container
    errors = []

    def writer(i):
        try:
            for k in range(10):
                put(catalog, c.id, "same", size=i * 100 + k)
                put(catalog, c.id, f"own-{i}-{k}", size=1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    info = catalog.container(acct, "c")
    current = catalog.object(c.id, "same")
    assert info.objects == 41
    assert info.bytes == 40 + current.size  # counters agree with what is visible


def test_version_history_until_and_purge(catalog, container):
    _, c = container
    v1 = put(catalog, c.id, "o", size=1)
    time.sleep(0.01)
    t1 = time.time()
    time.sleep(0.01)
    v2 = put(catalog, c.id, "o", size=2)
    put(catalog, c.id, "other", size=5)
    assert [v.vid for v in catalog.versions(c.id, "o")] == [v1.vid, v2.vid]
    assert catalog.object_version(c.id, "o", v1.vid).size == 1
    assert catalog.object_version(c.id, "other", v1.vid) is None  # ids are per object
    assert catalog.object_at(c.id, "o", t1).size == 1
    assert [e.name for e in catalog.list_objects(c.id, until=t1)] == ["o"]
    catalog.delete_object(c.id, "o")
    assert catalog.object_at(c.id, "o", time.time()) is None
    assert catalog.object_at(c.id, "o", t1).vid == v1.vid
    assert catalog.purge_history(c.id, "o", time.time() + 1) == 2  # the marker stays current
    assert catalog.versions(c.id, "o") == []


def test_versioning_none_keeps_no_history(catalog):
    acct = catalog.ensure_account("a")
    catalog.create_container(acct, "flat", versioning="none")
    c = catalog.container(acct, "flat")
    put(catalog, c.id, "o", size=1)
    v2 = put(catalog, c.id, "o", size=2)
    assert [v.vid for v in catalog.versions(c.id, "o")] == [v2.vid]
    catalog.delete_object(c.id, "o")
    assert catalog.versions(c.id, "o") == []


def test_container_listing_until(catalog):
    a = catalog.ensure_account("a")
    catalog.create_container(a, "c1")
    c1 = catalog.container(a, "c1")
    put(catalog, c1.id, "x", size=5)
    time.sleep(0.01)
    then = time.time()
    time.sleep(0.01)
    put(catalog, c1.id, "y", size=7)
    catalog.create_container(a, "c2")
    assert [(r.name, r.objects, r.bytes) for r in catalog.list_containers(a, until=then)] == [
        ("c1", 1, 5)]
    assert [(r.name, r.objects, r.bytes) for r in catalog.list_containers(a)] == [
        ("c1", 2, 12), ("c2", 0, 0)]


def test_only_the_first_of_concurrent_first_starts_adds_its_user(catalog):
    """Nodes starting at once on one empty catalog: exactly one adds its admin, the others
    replace its still unused initial key (each node shows the key it set; the last one holds)."""
    from pithos.catalog import Catalog

    others = [Catalog(catalog.url) for _ in range(4)]
    results: list[object] = [None] * len(others)
    start = threading.Barrier(len(others))

    def first_start(i: int) -> None:
        start.wait()
        results[i] = others[i].set_initial_key("admin", "admin", f"key-{i}", admin=True)

    threads = [threading.Thread(target=first_start, args=(i,)) for i in range(len(others))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for other in others:
        other.close()
    assert all(r is not None for r in results)
    assert [u.name for u in catalog.users()] == ["admin"]
    info, stored = catalog.user_credentials("admin", "admin")
    assert stored in {f"key-{i}" for i in range(4)} and info.admin
    # Another user's name with an initial key: neither added nor changed.
    assert catalog.set_initial_key("other", "x", "k", admin=False) is None
    # Once the key is used (a token issued), it is no initial key any more.
    catalog.add_token("t" * 64, info.id, time.time() + 60)
    assert catalog.set_initial_key("admin", "admin", "again", admin=True) is None
    assert catalog.user_credentials("admin", "admin").key_hash == stored
    # A key set by hand is none either.
    catalog.add_user("admin", "admin", "hand", admin=True)
    assert catalog.set_initial_key("admin", "admin", "again", admin=True) is None
    assert [u.name for u in catalog.users()] == ["admin"]


def test_migration_3_adds_the_initial_key_column_to_an_older_catalog(tmp_path):
    """A catalog made before migration 3 (no users.initial_key) upgrades in place: its users
    keep their keys and none is taken for an initial one."""
    import sqlite3

    from pithos.catalog import Catalog

    path = tmp_path / "old.sqlite"
    old = Catalog(f"sqlite:///{path}")
    old.add_user("ops", "alice", "hash", admin=True)
    old.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE users DROP COLUMN initial_key")
    db.execute("UPDATE schema_version SET version = 2")
    db.commit()
    db.close()
    upgraded = Catalog(f"sqlite:///{path}")
    try:
        assert upgraded.schema_found == 2
        assert upgraded.user_credentials("ops", "alice").key_hash == "hash"
        assert upgraded.set_initial_key("ops", "alice", "new", admin=True) is None
    finally:
        upgraded.close()


def test_a_version_sharing_a_map_needs_its_sources_to_still_exist(catalog, container):
    """A copy (or an SLO, or an in-place update) names the blocks of its source's map without
    putting or touching them: its commit holds only while the source version still exists,
    which a collector that ran meanwhile has then marked."""
    from pithos.core.errors import Conflict

    _, c = container
    source = put(catalog, c.id, "source")
    copy = put(catalog, c.id, "copy", sources=[source.version_id])
    assert catalog.object(c.id, "copy").version_id == copy.version_id
    catalog.drop_version(source.version_id)  # purged meanwhile
    with pytest.raises(Conflict):
        put(catalog, c.id, "late-copy", sources=[source.version_id])
    assert catalog.object(c.id, "late-copy") is None
    # Several sources: all must exist.
    other = put(catalog, c.id, "other")
    with pytest.raises(Conflict):
        put(catalog, c.id, "slo", sources=[other.version_id, source.version_id])
    assert put(catalog, c.id, "slo", sources=[other.version_id, other.version_id]).size == 10

"""The object service's rules without HTTP (pithos.objects: authz, sharing, bulk, quotas,
containers), over a real catalog (SQLite, and PostgreSQL when configured) and a memory block
store.  The Swift API tests check the same rules through the wire."""

from __future__ import annotations

import io
import json
import time

import pytest

from pithos.blocker import Blocker, MemoryBlockStore
from pithos.core.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    Unauthenticated,
)
from pithos.mapper import Mapper
from pithos.objects import ContainerInfo, ObjectVersion, UserInfo
from pithos.objects.acl import Action
from pithos.objects.service import ObjectService

OWNER = UserInfo(1, "alice", "admin", True)
MEMBER = UserInfo(2, "alice", "reader", False)  # a user of the account, not its admin
OTHER = UserInfo(3, "bob", "admin", True)
THIRD = UserInfo(4, "carol", "admin", True)


@pytest.fixture
def service(catalog) -> ObjectService:
    return ObjectService(catalog, Mapper(Blocker(MemoryBlockStore()), block_size=4096))


def make_container(service: ObjectService, name: str, user: UserInfo = OWNER,
                   **policy: str) -> ContainerInfo:
    account = service.authz.account(user, user.account, Action.CONTAINER_WRITE)
    service.create_container(account, name, {},
                             service.container_policy(user, account, **policy))
    _, container = service.authz.container(user, user.account, name, Action.LISTING)
    return container


def put(service: ObjectService, container: ContainerInfo, name: str, data: bytes,
        delete_at: float | None = None) -> ObjectVersion:
    stored = service.store(io.BytesIO(data), len(data))
    return service.create(container, name, stored, etag=None,
                          content_type="application/octet-stream", meta={},
                          modified_by=None, delete_at=delete_at)


# -- authorization ---------------------------------------------------------------------------

def test_an_admin_makes_its_account_on_first_use_and_others_are_refused(service):
    assert service.catalog.account("alice") is None
    with pytest.raises(Unauthenticated):
        service.authz.account(None, "alice", Action.ACCOUNT_READ)
    with pytest.raises(Forbidden):
        service.authz.account(OTHER, "alice", Action.ACCOUNT_READ)
    # A user who is not the admin makes nothing.
    with pytest.raises(Forbidden):
        service.authz.account(MEMBER, "alice", Action.ACCOUNT_READ)
    assert service.catalog.account("alice") is None
    info = service.authz.account(OWNER, "alice", Action.ACCOUNT_READ)
    assert info.name == "alice" and service.catalog.account("alice") is not None
    # Without autocreate the absent account is NotFound for its own admin.
    with pytest.raises(NotFound):
        service.authz.account(OTHER, "bob", Action.ACCOUNT_READ, autocreate=False)


def test_a_refusal_comes_before_not_found(service):
    make_container(service, "docs")
    for user in (OTHER, MEMBER):
        for name in ("docs", "absent"):
            with pytest.raises(Forbidden):
                service.authz.container(user, "alice", name, Action.OBJECT_WRITE)
    with pytest.raises(Unauthenticated):
        service.authz.container(None, "alice", "absent", Action.OBJECT_READ)
    with pytest.raises(NotFound):
        service.authz.container(OWNER, "alice", "absent", Action.OBJECT_READ)


def test_container_acls_and_account_acls_grant_access(service):
    make_container(service, "pub", read_acl=".r:*,.rlistings")
    make_container(service, "team", write_acl="bob")
    assert service.authz.container(None, "alice", "pub", Action.LISTING)[1].name == "pub"
    service.authz.container(OTHER, "alice", "team", Action.OBJECT_WRITE)
    with pytest.raises(Forbidden):
        service.authz.container(OTHER, "alice", "team", Action.CONTAINER_WRITE)
    owner = service.authz.account(OWNER, "alice", Action.ACCOUNT_WRITE)
    service.update_account(OWNER, owner, {}, acl=json.dumps({"read-only": ["bob"]}))
    service.authz.account(OTHER, "alice", Action.ACCOUNT_READ)
    with pytest.raises(Forbidden):
        service.authz.account(OTHER, "alice", Action.ACCOUNT_WRITE)


def test_may_read_asks_the_segment_containers_acl(service):
    private = make_container(service, "private")
    public = make_container(service, "public", read_acl=".r:*")
    account = service.catalog.account("alice", detail=False)
    may_read = service.authz.may_read(OTHER, account)
    assert may_read(public) and not may_read(private)
    assert service.authz.may_read(OWNER, account)(private)


# -- accounts and containers -----------------------------------------------------------------

def test_only_an_account_admin_sets_the_account_acl_and_groups(service):
    account = service.authz.account(OWNER, "alice", Action.ACCOUNT_WRITE)
    service.update_account(OWNER, account, {"colour": "blue"},
                           acl=json.dumps({"read-write": ["alice:reader"]}))
    account = service.authz.account(MEMBER, "alice", Action.ACCOUNT_READ)
    assert account.meta == {"colour": "blue"}
    with pytest.raises(Forbidden):
        service.update_account(MEMBER, account, {}, acl=json.dumps({"admin": ["alice"]}))
    with pytest.raises(Forbidden):
        service.update_account(MEMBER, account, {}, groups={"friends": "bob"})
    with pytest.raises(InvalidArgument):
        service.update_account(OWNER, account, {}, acl="not json")
    with pytest.raises(InvalidArgument, match="bad group name"):
        service.update_account(OWNER, account, {}, groups={"x" * 129: "bob"})
    service.update_account(OWNER, account, {}, groups={"friends": "bob, carol,"})
    assert service.sharing.groups(account.id) == {"friends": ["bob", "carol"]}


def test_container_policy_checks_values_and_who_changes_acls(service):
    account = service.authz.account(OWNER, "alice", Action.CONTAINER_WRITE)
    assert service.container_policy(OWNER, account, versioning="NONE", quota="0") == {
        "versioning": "none", "quota_bytes": None}
    for bad in ({"versioning": "some"}, {"quota": "-1"}, {"quota": "lots"},
                {"read_acl": ".bad:x"}, {"read_acl": ".r:"}, {"write_acl": ".r:*"}):
        with pytest.raises(InvalidArgument):
            service.container_policy(OWNER, account, **bad)
    # Removing an ACL is "", and only an account admin changes who gets in.
    assert service.container_policy(OWNER, account, read_acl="") == {"read_acl": None}
    shared = service.catalog.account("alice", detail=False)
    with pytest.raises(Forbidden):
        service.container_policy(MEMBER, shared, read_acl=".r:*")
    assert service.container_policy(MEMBER, shared, versioning="auto") == {
        "versioning": "auto"}


def test_containers_are_created_updated_and_deleted_when_empty(service):
    account = service.authz.account(OWNER, "alice", Action.CONTAINER_WRITE)
    assert service.create_container(account, "c", {"a": "1"}, {}) is True
    assert service.create_container(account, "c", {"b": "2"}, {}) is False
    _, c = service.authz.container(OWNER, "alice", "c", Action.LISTING)
    put(service, c, "o", b"data")
    detail = service.container_detail(c)
    assert (detail.objects, detail.bytes, detail.meta) == (1, 4, {"a": "1", "b": "2"})
    with pytest.raises(Conflict, match="not empty"):
        service.delete_container(c)
    service.delete_object(c, "o", "alice:admin")
    with pytest.raises(NotFound):
        service.delete_object(c, "o", "alice:admin")
    service.delete_container(c)
    with pytest.raises(NotFound):
        service.authz.container(OWNER, "alice", "c", Action.LISTING)
    with pytest.raises(InvalidArgument):
        service.create_container(account, "a/b", {}, {})


def test_versions_and_the_chosen_version(service):
    c = make_container(service, "c")
    first = put(service, c, "o", b"one")
    put(service, c, "o", b"two!")
    assert [v.size for v in service.versions(c, "o")] == [3, 4]
    v, token = service.chosen_version(c, "o", vid=first.vid, until=None)
    assert (v.size, token) == (3, None)
    assert service.chosen_version(c, "o", vid=None, until=None)[0].size == 4
    with pytest.raises(NotFound):
        service.chosen_version(c, "absent", vid=None, until=None)
    with pytest.raises(NotFound):
        service.versions(c, "absent")


def test_expired_objects_are_reaped(service):
    c = make_container(service, "c")
    put(service, c, "old", b"x", delete_at=time.time() + 0.05)
    put(service, c, "stays", b"y")
    deadline = time.monotonic() + 30
    reaped = 0
    while not reaped and time.monotonic() < deadline:
        reaped = service.reap_expired()
    assert reaped == 1
    assert service.find_object(c, "old") is None
    assert service.find_object(c, "stays") is not None


# -- quotas ------------------------------------------------------------------------------------

def test_the_quota_precheck_counts_the_growth_only(service):
    c = make_container(service, "c", quota="10")
    service.check_quota(c, "o", 10)
    put(service, c, "o", b"12345678")
    with pytest.raises(QuotaExceeded):
        service.check_quota(c, "other", 3)
    service.check_quota(c, "o", 10)  # replaces 8 bytes: grows by 2
    with pytest.raises(QuotaExceeded):
        service.check_quota(c, "o", 11)
    service.catalog.set_account_quota("alice", 9)
    with pytest.raises(QuotaExceeded):
        service.check_quota(make_container(service, "d"), "o", 2)
    unlimited = make_container(service, "e", user=OTHER)
    service.check_quota(unlimited, "o", 10**12)


# -- bulk and large-object deletes -----------------------------------------------------------

def test_bulk_delete_lists_what_fails_and_counts_what_was_absent(service):
    c = make_container(service, "c")
    make_container(service, "empty")
    make_container(service, "bobs", user=OTHER)
    put(service, c, "a", b"1")
    put(service, c, "b", b"2")
    paths = ["/c", "/c/a", "c/b", "/c/absent", "/empty", "/absent-container/x",
             "/c/" + "n" * 1025]
    result = service.bulk.delete_paths(OWNER, "alice", paths)
    assert (result.deleted, result.not_found) == (3, 2)
    assert [(p, type(e)) for p, e in result.errors] == [
        ("/c", Conflict), ("/c/" + "n" * 1025, InvalidArgument)]
    # Another account's paths are refused, never found or deleted.
    refused = service.bulk.delete_paths(OWNER, "bob", ["/bobs", "/bobs/x", "/nope"])
    assert (refused.deleted, refused.not_found) == (0, 0)
    assert {type(e) for _, e in refused.errors} == {Forbidden}
    with pytest.raises(Unauthenticated):
        service.bulk.delete_paths(None, "alice", ["/c/a"])


def test_a_static_large_object_is_deleted_with_its_segments(service):
    segs = make_container(service, "segs")
    locked = make_container(service, "locked", read_acl="alice:reader")
    c = make_container(service, "c", write_acl="alice:reader")
    for i in range(3):
        put(service, segs, f"s{i}", bytes([i]) * 100)
    put(service, locked, "s", b"z" * 100)
    manifest = json.dumps([{"path": f"/segs/s{i}"} for i in range(3)]
                          + [{"path": "/locked/s"}]).encode()
    account = service.catalog.account("alice", detail=False)
    v = service.put_slo(account.id, c, "big", manifest, content_type="x", meta={},
                        modified_by=None, delete_at=None)
    service.delete_object(segs, "s2", None)
    # The reader may write c (the manifest) but not the segments' containers.
    result = service.bulk.delete_slo(MEMBER, "alice", c, v)
    assert (result.deleted, result.not_found) == (1, 0)
    assert [(p, type(e)) for p, e in result.errors] == [
        (f"/segs/s{i}", Forbidden) for i in range(3)] + [("/locked/s", Forbidden)]
    assert service.find_object(c, "big") is None
    v = service.put_slo(account.id, c, "big", manifest.replace(b"s2", b"s1"),
                        content_type="x", meta={}, modified_by=None, delete_at=None)
    result = service.bulk.delete_slo(OWNER, "alice", c, v)
    assert (result.deleted, result.not_found, result.errors) == (4, 1, [])
    assert service.find_object(locked, "s") is None


# -- sharing and publishing ------------------------------------------------------------------

def test_objects_shared_with_a_group_are_reachable_and_nothing_more(service):
    c = make_container(service, "docs")
    for name in ("team/plan", "private"):
        put(service, c, name, name.encode())
    team = put(service, c, "team/", b"")
    account = service.authz.account(OWNER, "alice", Action.ACCOUNT_WRITE)
    service.update_account(OWNER, account, {}, groups={"friends": "bob"})
    with pytest.raises(Forbidden):
        service.sharing.check(OTHER, account, "read=bob", None)
    with pytest.raises(InvalidArgument):
        service.sharing.check(OWNER, account, "everyone", None)
    change = service.sharing.check(OWNER, account, "read=alice:friends", None)
    assert service.sharing.check(OWNER, account, None, None) is None
    assert service.sharing.apply(change, account, c, team) is None
    # Read again: the container knew of no sharing entry before (has_sharing).
    _, c = service.authz.container(OWNER, "alice", "docs", Action.LISTING)

    _, _, right = service.authz.object_access(OTHER, "alice", "docs", "team/plan",
                                              Action.OBJECT_READ)
    assert right == "read"
    for name, action in (("team/plan", Action.OBJECT_WRITE), ("private", Action.OBJECT_READ)):
        with pytest.raises(Forbidden):
            service.authz.object_access(OTHER, "alice", "docs", name, action)
    with pytest.raises(Forbidden):
        service.authz.object_access(THIRD, "alice", "docs", "team/plan", Action.OBJECT_READ)
    shared = service.sharing.of_object(c, "team/plan")
    assert shared is not None and (shared.text, shared.path) == ("read=alice:friends", "team/")

    # Bob lists only what is shared with him; carol is refused; the owner's ?shared.
    view = service.sharing.listing_access(OTHER, "alice", "docs", shared=False)
    entries = service.list_objects(c.id, limit=100)
    keep = view.visible
    assert keep is not None and view.sharee == OTHER
    assert [e.name for e in entries if keep(e.name, e.subdir)] == ["team/", "team/plan"]
    # Bob's totals are those of what he sees.
    assert service.sharing.sharee_totals(view) == (
        2, sum(e.size for e in entries if e.name in ("team/", "team/plan")))
    with pytest.raises(Forbidden):
        service.sharing.listing_access(THIRD, "alice", "docs", shared=False)
    mine = service.sharing.listing_access(OWNER, "alice", "docs", shared=False)
    assert mine.visible is None and mine.sharee is None
    owners = service.sharing.listing_access(OWNER, "alice", "docs", shared=True).visible
    assert owners is not None and owners("team/plan", False) and not owners("private", False)

    assert service.sharing.sharing_accounts(OTHER) == ["alice"]
    assert service.sharing.sharing_accounts(THIRD) == []
    assert service.sharing.shared_with(OTHER) == {"alice": ["docs"]}
    assert service.sharing.shared_with(THIRD) == {} == service.sharing.shared_with(OWNER)
    assert service.sharing.shared_containers("alice") == {"docs"}


def test_publishing_gives_a_token_that_unpublishing_takes_back(service):
    c = make_container(service, "c")
    v = put(service, c, "o", b"public data")
    account = service.authz.account(OWNER, "alice", Action.ACCOUNT_READ)
    with pytest.raises(InvalidArgument):
        service.sharing.check(OWNER, account, None, "maybe")
    token = service.sharing.apply(service.sharing.check(OWNER, account, None, "True"),
                                  account, c, v)
    assert token is not None
    found, account_id = service.sharing.public_object(token)
    assert (found.name, account_id) == ("o", account.id)
    assert service.chosen_version(c, "o", vid=None, until=None, with_token=True)[1] == token
    assert service.sharing.apply(service.sharing.check(OWNER, account, None, "false"),
                                 account, c, v) is None
    with pytest.raises(NotFound):
        service.sharing.public_object(token)


def test_a_dynamic_large_object_serves_its_segments_read_with_the_readers_rights(service):
    import hashlib

    segs = make_container(service, "segs")
    c = make_container(service, "c", read_acl="bob")
    for i in range(3):
        put(service, segs, f"part/{i}", bytes([65 + i]) * 5)
    stored = service.store(io.BytesIO(b""), 0)
    dlo = service.create(c, "dlo", stored, etag=None, content_type="x", meta={},
                         modified_by=None, delete_at=None, dlo_manifest="segs/part/")
    account = service.catalog.account("alice", detail=False)
    content = service.content(dlo, account.id, service.authz.may_read(OWNER, account))
    etags = [service.find_object(segs, f"part/{i}").etag for i in range(3)]
    assert (content.size, content.large) == (15, True)
    assert content.etag == hashlib.md5("".join(etags).encode()).hexdigest()
    assert b"".join(service.read(content.parts, 0, content.size)) == b"AAAAABBBBBCCCCC"
    # With `manifest`, the manifest object's own content (empty here), as Swift serves it.
    own = service.content(dlo, account.id, manifest=True)
    assert (own.size, own.etag, own.large) == (0, dlo.etag, False)
    assert b"".join(service.read(own.parts, 0, own.size)) == b""
    with pytest.raises(Forbidden):
        service.content(dlo, account.id, service.authz.may_read(OTHER, account))
    plain = service.content(service.find_object(segs, "part/0"), account.id)
    assert (plain.size, plain.large, len(plain.parts)) == (5, False, 1)


def test_an_image_is_an_objects_map_read_with_the_readers_rights(service):
    c = make_container(service, "images", read_acl="bob")
    v = put(service, c, "disk.raw", b"\0" * 10000)
    stored = service.store(io.BytesIO(b""), 0)
    service.create(c, "dlo", stored, etag=None, content_type="x", meta={},
                   modified_by=None, delete_at=None, dlo_manifest="images/disk")
    images = service.images
    assert images.root("alice", "images", "disk.raw", user=OWNER) == v.root
    assert images.root("alice", "images", "disk.raw", user=OTHER) == v.root
    assert images.root("alice", "images", "disk.raw", operator=True) == v.root
    with pytest.raises(Forbidden):
        images.root("alice", "images", "disk.raw", user=THIRD)
    with pytest.raises(Unauthenticated):
        images.root("alice", "images", "disk.raw")
    for account, container in (("alice", "images"), ("alice", "none"), ("nobody", "x")):
        with pytest.raises(NotFound):
            images.root(account, container, "absent", operator=True)
    with pytest.raises(NotFound):
        images.root("alice", "images", "absent", user=OTHER)
    with pytest.raises(InvalidArgument, match="not an image"):
        images.root("alice", "images", "dlo", operator=True)
    assert service.catalog.account("nobody") is None


# -- names and values a request sets ---------------------------------------------------------

def test_names_expiry_times_and_dlo_manifests_are_checked():
    from pithos.objects import names
    from pithos.objects.names import Limits, check_names

    limits = Limits()
    check_names(limits, "a", "c", "o" * 1024)
    for account, container, obj in (("", None, None), ("a" * 257, None, None),
                                    ("a", "", None), ("a", "é" * 129, None),
                                    ("a", "c", "o" * 1025)):
        with pytest.raises(InvalidArgument):
            check_names(limits, account, container, obj)
    now = 1_000_000.5
    assert names.delete_at(None, None, now) is None
    assert names.delete_at("5", "10", now) == 1_000_010.0  # X-Delete-After wins
    assert names.delete_at("2000000.9", None, now) == 2_000_000.0
    assert names.delete_at(None, "1" + "0" * 12, now) == names.MAX_DELETE_AT
    for at, after in (("soon", None), ("nan", None), ("999999", None), (None, "-1"),
                      (None, "1.5")):
        with pytest.raises(InvalidArgument):
            names.delete_at(at, after, now)
    assert names.dlo_manifest("/segs/part/") == "segs/part/"
    for bad in ("segs", "/segs", ""):
        with pytest.raises(InvalidArgument, match="container/prefix"):
            names.dlo_manifest(bad)

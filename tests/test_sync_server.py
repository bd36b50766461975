"""The server side of the sync client (issue 24) without HTTP, over a real catalog (SQLite,
and PostgreSQL when configured): the change feed, conditional writes checked in the write's
transaction, server-side moves and copies that move no data, and the CDC chunking policy."""

from __future__ import annotations

import hashlib
import io
import itertools
import random

import pytest

from pithos.blocker import Blocker, MemoryBlockStore
from pithos.core import cdc
from pithos.core.errors import Conflict, Gone, InvalidArgument, NotFound, PreconditionFailed
from pithos.mapper import Mapper
from pithos.mapper.inline import inline_entries
from pithos.objects import ContainerInfo, Expect, ObjectVersion, UserInfo
from pithos.objects.acl import Action
from pithos.objects.service import ObjectService

OWNER = UserInfo(1, "alice", "admin", True)


@pytest.fixture
def store() -> MemoryBlockStore:
    return MemoryBlockStore()


@pytest.fixture
def service(catalog, store) -> ObjectService:
    return ObjectService(catalog, Mapper(Blocker(store), block_size=4 * 1024 * 1024))


def make_container(service: ObjectService, name: str, **policy: str) -> ContainerInfo:
    account = service.authz.account(OWNER, OWNER.account, Action.CONTAINER_WRITE)
    service.create_container(account, name, {},
                             service.container_policy(OWNER, account, **policy))
    _, container = service.authz.container(OWNER, OWNER.account, name, Action.LISTING)
    return container


def put(service: ObjectService, container: ContainerInfo, name: str, data: bytes,
        expect: Expect | None = None) -> ObjectVersion:
    stored = service.store(io.BytesIO(data), len(data), chunking=container.chunking)
    return service.create(container, name, stored, etag=None,
                          content_type="application/octet-stream", meta={},
                          modified_by=None, delete_at=None, expect=expect)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def feed_all(service, container, cursor="0", limit=1000):
    """Every page from `cursor`: (changes in order, the last cursor, pages read)."""
    changes, pages = [], 0
    while True:
        page = service.changes(container, cursor, limit)
        pages += 1
        changes += page.changes
        cursor = page.cursor
        if not page.more:
            return changes, cursor, pages


def _stored(store: MemoryBlockStore) -> list[tuple[bytes, int]]:
    return list(store.iterate())


# -- the change feed ---------------------------------------------------------------------------

def test_feed_shows_puts_updates_and_deletes_in_change_order(service):
    c = make_container(service, "sync")
    put(service, c, "a", b"one")
    put(service, c, "b", b"two")
    first, cursor, _ = feed_all(service, c)
    assert [(x.name, x.deleted, x.size, x.etag) for x in first] == [
        ("a", False, 3, md5(b"one")), ("b", False, 3, md5(b"two"))]
    assert first[0].vid and first[0].content_type == "application/octet-stream"
    # Nothing new: an empty page that keeps the cursor.
    page = service.changes(c, cursor, 10)
    assert page.changes == [] and page.cursor == cursor and not page.more
    put(service, c, "a", b"three")
    service.delete_object(c, "b", None)
    later, cursor2, _ = feed_all(service, c, cursor)
    assert [(x.name, x.deleted, x.size, x.etag) for x in later] == [
        ("a", False, 5, md5(b"three")), ("b", True, 0, "")]
    # From the beginning: each name once, with its state now, in order of last change.
    whole, _, _ = feed_all(service, c)
    assert [(x.name, x.deleted) for x in whole] == [("a", False), ("b", True)]
    # Metadata changes are changes too.
    service.update_meta(c, "a", {"user": {"k": "v"}}, delete_at=None, content_type="text/x")
    (meta,), _, _ = feed_all(service, c, cursor2)
    assert meta.name == "a" and meta.content_type == "text/x"


def test_feed_pages_give_nothing_twice_and_miss_nothing(service):
    c = make_container(service, "sync")
    names = [f"f{i:03d}" for i in range(57)]
    for n in names:
        put(service, c, n, n.encode())
    seen, _, pages = feed_all(service, c, limit=10)
    assert pages == 6 and [x.name for x in seen] == names
    assert len({x.seq for x in seen}) == len(seen)
    # Changes between pages: a page boundary never repeats a change nor skips one.
    page = service.changes(c, "0", 10)
    for n in names[:5]:  # already seen in the first page: they come again, changed
        service.delete_object(c, n, None)
    rest, _, _ = feed_all(service, c, page.cursor, limit=10)
    assert [x.name for x in rest] == names[10:] + names[:5]
    assert all(x.deleted for x in rest[-5:])
    assert not {(x.name, x.seq) for x in page.changes} & {(x.name, x.seq) for x in rest}


def test_feed_cursor_of_a_recreated_container_is_gone_and_bad_cursors_refused(service):
    c = make_container(service, "sync")
    put(service, c, "a", b"x")
    cursor = service.changes(c, "0", 10).cursor
    service.delete_object(c, "a", None)
    service.delete_container(c)
    again = make_container(service, "sync")
    with pytest.raises(Gone):
        service.changes(again, cursor, 10)
    for bad in ("", "abc", "1.x", "-1", cursor + ".3", cursor.replace(".", ".-")):
        with pytest.raises(InvalidArgument):
            service.changes(again, bad, 10)
    with pytest.raises(InvalidArgument):
        service.changes(again, "0", 0)


def test_feed_reads_only_the_changes_after_the_cursor(service):
    # O(changes): a cursor near the end answers from the index, not the whole container.
    c = make_container(service, "sync")
    for i in range(300):
        put(service, c, f"o{i}", b"x")
    cursor = service.changes(c, "0", 300).cursor
    put(service, c, "late", b"y")
    page = service.changes(c, cursor, 1000)
    assert [x.name for x in page.changes] == ["late"]


# -- conditional writes ------------------------------------------------------------------------

def test_if_none_match_star_creates_only(service):
    c = make_container(service, "sync")
    put(service, c, "a", b"1", expect=Expect(absent=True))
    with pytest.raises(PreconditionFailed):
        put(service, c, "a", b"2", expect=Expect(absent=True))
    assert service.get_object(c, "a").etag == md5(b"1")
    service.delete_object(c, "a", None)
    put(service, c, "a", b"3", expect=Expect(absent=True))  # deleted counts as absent


def test_if_match_on_put_delete_and_post(service):
    c = make_container(service, "sync")
    v1 = put(service, c, "a", b"1")
    with pytest.raises(PreconditionFailed):
        put(service, c, "a", b"2", expect=Expect(match=frozenset({md5(b"other")})))
    with pytest.raises(PreconditionFailed):
        put(service, c, "new", b"2", expect=Expect(match=frozenset({"*"})))
    assert service.find_object(c, "new") is None
    v2 = put(service, c, "a", b"2", expect=Expect(match=frozenset({v1.etag})))
    with pytest.raises(PreconditionFailed):
        service.update_meta(c, "a", {"user": {"k": "v"}}, delete_at=None, content_type=None,
                            expect=Expect(match=frozenset({v1.etag})))
    service.update_meta(c, "a", {"user": {"k": "v"}}, delete_at=None, content_type=None,
                        expect=Expect(match=frozenset({v2.etag})))
    with pytest.raises(PreconditionFailed):
        service.delete_object(c, "a", None, expect=Expect(match=frozenset({v1.etag})))
    assert service.find_object(c, "a") is not None
    service.delete_object(c, "a", None, expect=Expect(match=frozenset({v2.etag})))
    assert service.find_object(c, "a") is None
    with pytest.raises(PreconditionFailed):  # If-Match on an absent object
        service.delete_object(c, "a", None, expect=Expect(match=frozenset({"*"})))


# -- moves and copies --------------------------------------------------------------------------

def test_move_is_one_transaction_and_moves_no_data(service, store):
    c = make_container(service, "sync")
    other = make_container(service, "other")
    data = random.Random(1).randbytes(100_000)
    src = put(service, c, "dir/a", data)
    blocks_before = _stored(store)
    cursor = service.changes(c, "0", 10).cursor
    moved = service.copy(src, other, "b", meta={}, content_type=src.content_type,
                         modified_by=None, delete_at=None, move=True,
                         source_expect=Expect(match=frozenset({src.etag})),
                         expect=Expect(absent=True))
    assert moved.root == src.root and moved.etag == src.etag
    assert _stored(store) == blocks_before
    assert service.find_object(c, "dir/a") is None
    assert service.get_object(other, "b").etag == md5(data)
    # Both containers' feeds tell it: the source deleted, the target new.
    (gone,), _, _ = feed_all(service, c, cursor)
    assert (gone.name, gone.deleted) == ("dir/a", True)
    assert [(x.name, x.deleted) for x in feed_all(service, other)[0]] == [("b", False)]


def test_move_refused_whole_when_a_precondition_fails(service):
    c = make_container(service, "sync")
    src = put(service, c, "a", b"source")
    put(service, c, "taken", b"target")
    with pytest.raises(PreconditionFailed):  # the target exists
        service.copy(src, c, "taken", meta={}, content_type="x", modified_by=None,
                     delete_at=None, move=True, expect=Expect(absent=True))
    with pytest.raises(PreconditionFailed):  # the source is not what the client saw
        service.copy(src, c, "b", meta={}, content_type="x", modified_by=None,
                     delete_at=None, move=True,
                     source_expect=Expect(match=frozenset({md5(b"other")})))
    # The source changed after it was read: the move would lose that change.
    put(service, c, "a", b"changed")
    with pytest.raises(Conflict):
        service.copy(src, c, "b", meta={}, content_type="x", modified_by=None,
                     delete_at=None, move=True)
    with pytest.raises(Conflict):  # onto itself
        service.copy(service.get_object(c, "a"), c, "a", meta={}, content_type="x",
                     modified_by=None, delete_at=None, move=True)
    assert service.get_object(c, "a").etag == md5(b"changed")
    assert service.get_object(c, "taken").etag == md5(b"target")
    assert service.find_object(c, "b") is None
    service.delete_object(c, "a", None)
    with pytest.raises(NotFound):
        service.copy(src, c, "b", meta={}, content_type="x", modified_by=None,
                     delete_at=None, move=True)


# -- the CDC chunking policy -------------------------------------------------------------------

def test_chunking_policy_values(service):
    assert make_container(service, "plain").chunking is None
    assert make_container(service, "cdc", chunking="CDC").chunking == "cdc"
    assert make_container(service, "fixed", chunking="fixed").chunking is None
    account = service.authz.account(OWNER, OWNER.account, Action.CONTAINER_WRITE)
    with pytest.raises(InvalidArgument):
        service.container_policy(OWNER, account, chunking="rabin")


def _stored_bytes(store: MemoryBlockStore) -> int:
    return sum(size for _, size in store.iterate())


def test_cdc_container_dedups_shared_content_at_unaligned_offsets(service, store):
    c = make_container(service, "cdc", chunking="cdc")
    rng = random.Random(5)
    shared = rng.randbytes(3_000_000)
    first = rng.randbytes(12_345) + shared
    second = rng.randbytes(777) + shared + rng.randbytes(50_000)
    put(service, c, "first", first)
    before = _stored_bytes(store)
    v = put(service, c, "second", second)
    grown = _stored_bytes(store) - before
    # About the differing bytes (777 + 50,000) plus a chunk at each edge and map pages.
    assert grown < 777 + 50_000 + 4 * cdc.MAX_SIZE
    assert v.etag == md5(second)
    entries = list(service.mapper.entries(v.root))
    assert len(entries) > 100 and all(n <= cdc.MAX_SIZE for _, n in entries)
    # A fixed-block container stores the shifted content anew.
    f = make_container(service, "fixed")
    put(service, f, "first", first)
    before = _stored_bytes(store)
    put(service, f, "second", second)
    assert _stored_bytes(store) - before > len(shared)


@pytest.mark.parametrize("size", [0, 1, cdc.MIN_SIZE - 1, cdc.MIN_SIZE, cdc.MIN_SIZE + 1,
                                  cdc.MAX_SIZE - 1, cdc.MAX_SIZE, cdc.MAX_SIZE + 1,
                                  3 * cdc.MAX_SIZE + 17, 1024 * 1024 + 5])
def test_cdc_round_trip_around_the_chunk_limits(service, size):
    c = make_container(service, "cdc", chunking="cdc")
    data = random.Random(size).randbytes(size)
    v = put(service, c, "o", data)
    assert v.size == size and v.etag == md5(data)
    parts = service.content(v, c.account_id).parts  # (a small one is kept inline)
    got = b"".join(service.read(parts, 0, v.size)) if size else b""
    assert got == data
    entries = (inline_entries(v.inline) if v.inline is not None
               else service.mapper.entries(v.root))
    assert [n for _, n in entries] == \
        [b - a for a, b in itertools.pairwise([0, *cdc.cut_points(data)])]
    if size > 10:
        mid = b"".join(service.read(parts, size // 3, size // 3))
        assert mid == data[size // 3:2 * (size // 3)]

"""Small objects kept inline in their version row (docs/design.md, "Small objects inline"):
they read, range, copy, hashmap and hash exactly as a block-stored twin of the same content,
store nothing in the block store, survive the collector, are checked by fsck, and become real
maps when a consumer needs one (an image, a concatenation, an update in place).

Over a real catalog (SQLite, and PostgreSQL when configured) and a block store in memory and,
when the test cluster is there, on RADOS."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from pithos.blocker import Blocker, MemoryBlockStore
from pithos.core.errors import IntegrityError
from pithos.core.hashing import merkle_root
from pithos.mapper import Mapper, gc
from pithos.mapper.inline import inline_root
from pithos.objects import ContainerInfo, ObjectVersion, UserInfo
from pithos.objects.acl import Action
from pithos.objects.hashmaps import Hashmaps, update_content
from pithos.objects.large_objects import Part
from pithos.objects.service import ObjectService
from tests.conftest import CEPH_CONF, CEPH_POOL, PithosServer

OWNER = UserInfo(1, "alice", "admin", True)
BLOCK = 4096
THRESHOLD = 1024  # small, so that hypothesis covers both sides and several blocks cheaply


@pytest.fixture(params=["memory", "rados"])
def blocker(request):
    if request.param == "memory":
        b = Blocker(MemoryBlockStore())
        yield b
        b.close()
        return
    if not os.path.exists(CEPH_CONF) or not os.environ.get("PITHOS_CEPH_CONF"):
        pytest.skip("no Ceph cluster (PITHOS_CEPH_CONF)")
    from pithos.blocker.urls import open_block_store

    ns = f"inline_{secrets.token_hex(4)}"
    store = open_block_store(f"rados://{CEPH_POOL}?conf={CEPH_CONF}&namespace={ns}")
    b = Blocker(store)  # (a namespace of its own: a few KB left there)
    yield b
    b.close()


@pytest.fixture
def service(catalog, blocker) -> ObjectService:
    return ObjectService(catalog, Mapper(blocker, block_size=BLOCK),
                         inline_max_bytes=THRESHOLD)


def container(service: ObjectService, name: str = "c") -> ContainerInfo:
    account = service.authz.account(OWNER, OWNER.account, Action.CONTAINER_WRITE)
    service.create_container(account, name, {}, {})
    _, found = service.authz.container(OWNER, OWNER.account, name, Action.LISTING)
    return found


def put(service: ObjectService, c: ContainerInfo, name: str, data: bytes,
        inline: bool = True) -> ObjectVersion:
    with service.upload_lease():
        stored = service.store(io.BytesIO(data), len(data), inline=inline)
        return service.create(c, name, stored, etag=None,
                              content_type="application/octet-stream", meta={},
                              modified_by=None, delete_at=None)


def read(service: ObjectService, v: ObjectVersion, offset: int = 0,
         length: int | None = None) -> bytes:
    content = service.content(v, v.container_id)
    n = content.size - offset if length is None else length
    return b"".join(service.read(content.parts, offset, n))


def stored_blocks(service: ObjectService) -> set[bytes]:
    return {h for h, _ in service.mapper.blocker.iterate()}


def test_a_small_put_stores_nothing_and_reads_back_as_its_twin(service):
    c = container(service)
    data = os.urandom(700)
    small = put(service, c, "small", data)
    assert small.inline == data and stored_blocks(service) == set()
    found = service.get_object(c, "small")
    assert found.inline == data and found.root == small.root
    assert read(service, found) == data and read(service, found, 100, 50) == data[100:150]
    twin = put(service, c, "twin", data, inline=False)
    assert twin.inline is None and stored_blocks(service)  # the twin's block and page
    assert (found.root, found.etag, found.size) == (twin.root, twin.etag, twin.size)
    assert service.object_hash(found.root, found.inline) == service.object_hash(twin.root)
    hm = Hashmaps(service)
    account_id = c.account_id
    assert hm.hashmap(account_id, found) == hm.hashmap(account_id, twin)


def test_the_empty_object_and_one_at_the_threshold_are_inline_one_past_is_not(service):
    c = container(service)
    assert put(service, c, "empty", b"").inline == b""
    assert read(service, service.get_object(c, "empty")) == b""
    assert put(service, c, "at", b"z" * THRESHOLD).inline == b"z" * THRESHOLD
    past = put(service, c, "past", b"z" * (THRESHOLD + 1))
    assert past.inline is None
    assert read(service, service.get_object(c, "past")) == b"z" * (THRESHOLD + 1)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(min_size=0, max_size=THRESHOLD + 2),
    st.integers(0, 3 * BLOCK).map(bytes),  # zeros: zero blocks
    st.integers(THRESHOLD - 2, THRESHOLD + 2).map(lambda n: os.urandom(n))),
    cut=st.tuples(st.integers(0, 3 * BLOCK), st.integers(0, 3 * BLOCK)))
def test_inline_or_not_every_read_copy_and_hash_is_the_twins(service, data, cut):
    c = container(service)
    name = secrets.token_hex(4)
    v = put(service, c, name, data)
    twin = put(service, c, name + "-twin", data, inline=False)
    assert (v.inline is not None) == (len(data) <= THRESHOLD)
    assert (v.root, v.etag) == (twin.root, twin.etag)
    assert v.etag == hashlib.md5(data).hexdigest()
    assert service.object_hash(v.root, v.inline) == service.object_hash(twin.root)
    hm = Hashmaps(service)
    assert hm.hashmap(c.account_id, v) == hm.hashmap(c.account_id, twin)
    lo = min(cut[0], len(data))
    n = min(cut[1], len(data) - lo)
    assert read(service, v) == data and read(service, v, lo, n) == data[lo:lo + n]
    with service.upload_lease():
        copy = service.copy(v, c, name + "-copy", meta={}, content_type="x/y",
                            modified_by=None, delete_at=None)
        part = service.large_content(v, None, span=(lo, n))
        assert part is not None
        ranged = service.copy(v, c, name + "-range", meta={}, content_type="x/y",
                              modified_by=None, delete_at=None, content=part)
    assert copy.inline == v.inline and copy.root == v.root
    assert read(service, service.get_object(c, name + "-copy")) == data
    assert read(service, service.get_object(c, name + "-range")) == data[lo:lo + n]
    assert ranged.root == inline_root(data[lo:lo + n]) if ranged.inline is not None else True


def test_a_damaged_row_is_never_served(service, catalog):
    c = container(service)
    v = put(service, c, "o", b"good bytes")
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE versions SET inline_data = :d WHERE id = :i"),
                     {"d": b"evil bytes", "i": v.version_id})
    found = service.get_object(c, "o")
    with pytest.raises(IntegrityError):
        read(service, found)
    with pytest.raises(IntegrityError):
        Hashmaps(service).hashmap(c.account_id, found)
    damaged = [x for x in catalog.inline_contents() if inline_root(x.data) != x.naming.root]
    assert [(x.naming.name, x.naming.version) for x in damaged] == [("o", v.vid)]


def test_consumers_of_a_real_map_get_one_with_the_same_root(service):
    c = container(service)
    data = os.urandom(600)
    v = put(service, c, "o", data)
    assert stored_blocks(service) == set()
    # An update in place (append): the base is stored as blocks first, then updated.
    with service.upload_lease():
        grown = update_content(Hashmaps(service), c, v, offset=None, length=5,
                               body=io.BytesIO(b"12345"), source=None, truncate=None,
                               modified_by=None)
    assert grown.inline is None
    assert read(service, service.get_object(c, "o")) == data + b"12345"
    assert service.mapper.read_all(v.root) == data  # the inline root is a real map now
    # An SLO naming an inline segment, and a DLO of inline segments.
    seg = put(service, c, "seg/1", b"first ")
    put(service, c, "seg/2", b"second")
    with service.upload_lease():
        slo = service.put_slo(c.account_id, c, "slo", json.dumps(
            [{"path": "c/seg/1"}, {"path": "c/seg/2"}]).encode(), content_type="x/y",
            meta={}, modified_by=None, delete_at=None)
    assert read(service, slo) == b"first second"
    assert service.mapper.read_all(seg.root) == b"first "
    with service.upload_lease():
        stored = service.store(io.BytesIO(b""), 0)
        dlo = service.create(c, "dlo", stored, etag=None, content_type="x/y", meta={},
                             modified_by=None, delete_at=None, dlo_manifest="c/seg/")
    content = service.content(dlo, c.account_id)
    assert [p.inline for p in content.parts] == [b"first ", b"second"]
    assert b"".join(service.read(content.parts, 3, 6)) == b"st sec"
    with service.upload_lease():
        whole = service.large_content(dlo, service.catalog.account("alice"))
    assert whole is not None and whole.inline is None
    assert service.mapper.read_all(whole.root) == b"first second"


def test_an_image_registered_from_a_small_object_outlives_it_and_the_collector(service):
    c = container(service)
    data = os.urandom(512)
    v = put(service, c, "disk", data)
    image = service.images.register(OWNER, "c", "disk", name="tiny")
    assert image.root == v.root and image.size == len(data)
    service.delete_object(c, "disk", None)
    service.catalog.purge_history(c.id, None, time.time() + 1)
    time.sleep(0.1)
    roots = [*service.catalog.version_roots(), *service.catalog.image_roots()]
    gc.collect(service.mapper.blocker, roots, clock_margin_s=0.05)
    assert b"".join(service.images.read(OWNER, image.id)) == data


def test_gc_takes_no_inline_root_and_spares_what_they_made_real(service):
    c = container(service)
    small = put(service, c, "small", os.urandom(300))
    big = put(service, c, "big", os.urandom(3 * BLOCK))
    garbage = put(service, c, "garbage", os.urandom(2 * BLOCK))
    service.delete_object(c, "garbage", None)
    service.catalog.purge_history(c.id, None, time.time() + 1)
    roots = list(service.catalog.version_roots())
    assert small.root not in roots and big.root in roots
    assert service.catalog.roots_after(0).roots == [big.root]
    time.sleep(0.1)
    report = gc.collect(service.mapper.blocker, roots, clock_margin_s=0.05)
    assert report.reclaimed_blocks > 0  # the deleted object's blocks, nothing named
    assert garbage.root not in stored_blocks(service)
    assert read(service, service.get_object(c, "small")) == small.inline
    assert service.mapper.read_all(big.root) and read(service, big)


def test_the_catalog_migrates_to_inline_rows(tmp_path):
    """A catalog of the release before (schema 8) gains the column and keeps its rows."""
    from sqlalchemy import create_engine

    from pithos.catalog import Catalog, schema

    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = create_engine(url)
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        conn.execute(text("ALTER TABLE versions DROP COLUMN inline_data"))
        schema.schema_version.create(conn, checkfirst=True)
        conn.execute(text("INSERT INTO schema_version (version) VALUES (8)"))
    engine.dispose()
    cat = Catalog(url)
    try:
        acct = cat.ensure_account("a")
        cat.create_container(acct, "c")
        cid = cat.container(acct, "c").id
        v = cat.put_version(cid, "o", root=inline_root(b"x"), size=1, etag="e" * 32,
                            content_type="x/y", meta={}, inline=b"x")
        assert cat.object(cid, "o").inline == b"x" == v.inline
    finally:
        cat.close()


# -- through the wire ---------------------------------------------------------------------------

SERVER_CONFIGS = ("embedded", "scaleout")


def test_small_objects_over_http_hash_as_their_twins_and_fsck_checks_them(pithos_server):
    swift = pithos_server.connection()
    swift.put_container("small")
    data = os.urandom(5000)
    swift.put_object("small", "o", data)
    headers, body = swift.get_object("small", "o")
    assert body == data and headers["etag"] == hashlib.md5(data).hexdigest()
    _, part = swift.get_object("small", "o", headers={"Range": "bytes=10-19"})
    assert part == data[10:20]
    status, doc = _hashmap(swift, "small", "o")
    assert status == 200 and doc["bytes"] == len(data) and len(doc["hashes"]) == 1
    assert headers["x-object-hash"] == merkle_root([bytes.fromhex(doc["hashes"][0])]).hex()
    swift.copy_object("small", "o", destination="/small/copy")
    assert swift.get_object("small", "copy")[1] == data
    flags = pithos_server.storage_flags
    out = subprocess.run([sys.executable, "-m", "pithos.cli.main", "store", "fsck", "--json",
                          *flags], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["inline_objects"] >= 2 and report["inline_corrupt"] == []


def _hashmap(swift, container_name: str, name: str):
    import urllib.request

    req = urllib.request.Request(f"{swift.url}/{container_name}/{name}?hashmap",
                                 headers={"X-Auth-Token": swift.token})
    with urllib.request.urlopen(req, timeout=30) as reply:
        return reply.status, json.loads(reply.read())


def test_a_part_is_read_from_the_row_not_the_store(service):
    c = container(service)
    v = put(service, c, "o", b"abcdef")
    parts = service.content(v, c.account_id).parts
    assert parts == [Part(v.root, 6, b"abcdef")]
    assert b"".join(service.read(parts, 2, 3)) == b"cde"


def test_a_volume_cloned_from_a_small_object_outlives_it_and_the_collector(tmp_path):
    """archipelago volume clone --from-object of an object kept inline: the clone stores its
    content as a block and a map (it had none) and names them; the collector keeps them once
    the object and its history are gone."""
    from tests.test_pithos_gc import auth, clone_outlives_its_object

    server = PithosServer(tmp_path / "data")
    try:
        swift = server.connection()
        swift.put_container("images")
        data = os.urandom(4096)
        swift.put_object("images", "tiny.raw", data)
        url, headers = auth(server)
        clone_outlives_its_object(server, url, headers, "tiny.raw", data)
    finally:
        server.stop()


def test_the_threshold_is_set_by_the_environment_and_checked_at_start(tmp_path, monkeypatch):
    """PITHOS_INLINE_MAX_BYTES=0: every object is stored as blocks; a bad value stops
    `pithos serve` before any worker starts, naming the variable."""
    monkeypatch.setenv("PITHOS_INLINE_MAX_BYTES", "0")
    server = PithosServer(tmp_path / "data")
    try:
        swift = server.connection()
        swift.put_container("c")
        swift.put_object("c", "small", b"x" * 100)
        stats = subprocess.run([sys.executable, "-m", "pithos.cli.main", "store", "stats",
                                "--json", "--data-dir", str(server.data_dir)],
                               capture_output=True, timeout=120)
        assert json.loads(stats.stdout)["blocks"] == 2  # its block and its map page
        assert swift.get_object("c", "small")[1] == b"x" * 100
    finally:
        server.stop()
    for bad in ("lots", "-1", str(2 * 1024 * 1024)):
        monkeypatch.setenv("PITHOS_INLINE_MAX_BYTES", bad)
        proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", "serve", "--data-dir",
                               str(tmp_path / "data"), "--listen", "127.0.0.1:1"],
                              capture_output=True, timeout=60)
        assert proc.returncode != 0 and b"PITHOS_INLINE_MAX_BYTES" in proc.stderr, bad


def test_content_hash_kept_for_the_same_bytes_only() -> None:
    """The memo of the last inline content hashed (a GET hashes its row's bytes for its
    X-Object-Hash, then to verify them) answers for that very `bytes` object only: a mutable
    buffer changed in place, or other bytes, are hashed anew."""
    from pithos.core.hashing import block_hash
    from pithos.mapper.inline import inline_entries, verified

    data = secrets.token_bytes(BLOCK)
    assert inline_entries(data) == [(block_hash(data), BLOCK)]
    assert verified(inline_root(data), data) is data
    other = secrets.token_bytes(BLOCK)
    assert inline_entries(other) == [(block_hash(other), BLOCK)]
    buf = bytearray(data)
    assert inline_entries(buf) == [(block_hash(data), BLOCK)]
    buf[0] ^= 1
    assert inline_entries(buf) == [(block_hash(bytes(buf)), BLOCK)]
    with pytest.raises(IntegrityError):
        verified(inline_root(data), bytes(buf))
    # The root and the object hash, each derived once per content, are that content's.
    from pithos.mapper.inline import inline_object_hash

    for content in (data, other, data, bytes(buf), buf, b""):
        assert inline_object_hash(content) == merkle_root([h for h, _ in
                                                           inline_entries(bytes(content))])
        assert verified(inline_root(content), content) is content
    assert inline_root(data) != inline_root(other)

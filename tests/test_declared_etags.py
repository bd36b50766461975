"""ETags a hashmap upload declares (pithos.objects.declared_etags): the version carries the
ETag sent at once, and the server's later reading of the content confirms it, or replaces a
false one with the content's MD5 (a change in the feed).  Over a real catalog (SQLite, and
PostgreSQL when configured) and a real block store; a collector runs between the upload and
the confirmation, a copy carries the declaration, a new process (a worker after a kill -9)
confirms what an old one left, and a live server confirms on its own."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import time

import blake3
import pytest
import requests

from pithos.blocker import Blocker
from pithos.blocker.local import LocalBlockStore
from pithos.core import cdc
from pithos.mapper import Mapper
from pithos.objects import UserInfo
from pithos.objects.acl import Action
from pithos.objects.declared_etags import EtagConfirmer
from pithos.objects.hashmaps import Hashmaps
from pithos.objects.service import ObjectService

OWNER = UserInfo(1, "alice", "admin", True)


@pytest.fixture
def blocks_dir(tmp_path):
    return tmp_path / "blocks"


@pytest.fixture
def service(catalog, blocks_dir) -> ObjectService:
    store = LocalBlockStore(str(blocks_dir))
    return ObjectService(catalog, Mapper(Blocker(store), block_size=4 * 1024 * 1024))


def container(service: ObjectService, name: str = "sync"):
    account = service.authz.account(OWNER, OWNER.account, Action.CONTAINER_WRITE)
    service.create_container(account, name, {}, service.container_policy(OWNER, account))
    _, c = service.authz.container(OWNER, OWNER.account, name, Action.LISTING)
    return account, c


def chunks(data: bytes) -> list[bytes]:
    ends = cdc.cut_points(data)
    ends = list(ends)
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def upload(hm: Hashmaps, account, c, name: str, data: bytes, etag: str | None):
    """What a sync client does: POST ?blocks, then PUT ?hashmap with `etag`."""
    parts = chunks(data)
    body = b"".join(parts)
    hm.store_blocks(account.id, io.BytesIO(body), len(body), [len(p) for p in parts])
    doc = {"bytes": len(data), "hashes": [blake3.blake3(p).hexdigest() for p in parts],
           "lengths": [len(p) for p in parts]}
    with hm.objects.upload_lease():
        return hm.put(account.id, c, name, json.dumps(doc).encode(), etag=etag,
                      content_type="application/octet-stream",
                      meta={"user": {}, "sys": {}}, modified_by=None, delete_at=None)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_a_true_declaration_is_kept_and_confirmed(service):
    hm = Hashmaps(service)
    account, c = container(service)
    data = random.Random(1).randbytes(300_000)
    v = upload(hm, account, c, "a", data, md5(data))
    assert v.etag == md5(data)
    assert [d.version_id for d in service.catalog.declared_etags()] == [v.version_id]
    assert EtagConfirmer(service).confirm_pending() == 1
    assert service.catalog.declared_etags() == []
    assert service.catalog.object(c.id, "a").etag == md5(data)


def test_a_false_declaration_is_replaced_by_the_md5_and_shows_in_the_feed(service):
    hm = Hashmaps(service)
    account, c = container(service)
    data = random.Random(2).randbytes(200_000)
    v = upload(hm, account, c, "a", data, "0" * 32)
    assert v.etag == "0" * 32  # the writer's word, until confirmed
    cursor = service.changes(c, "0", 100).cursor
    EtagConfirmer(service).confirm_pending()
    now = service.catalog.object(c.id, "a")
    assert now.etag == md5(data) and now.version_id == v.version_id
    assert service.catalog.declared_etags() == []
    (change,) = service.changes(c, cursor, 100).changes
    assert change.name == "a" and change.etag == md5(data)


def test_without_an_etag_the_md5_is_computed_at_once(service):
    hm = Hashmaps(service)
    account, c = container(service)
    data = random.Random(3).randbytes(100_000)
    v = upload(hm, account, c, "a", data, None)
    assert v.etag == md5(data) and service.catalog.declared_etags() == []


def test_a_copy_carries_the_declaration_and_a_metadata_post_keeps_it(service):
    hm = Hashmaps(service)
    account, c = container(service)
    data = random.Random(4).randbytes(150_000)
    v = upload(hm, account, c, "a", data, "1" * 32)
    copy = service.copy(v, c, "b", meta={"user": {}, "sys": {}},
                        content_type="application/octet-stream", modified_by=None,
                        delete_at=None)
    service.update_meta(c, "a", {"user": {"k": "v"}, "sys": {}}, delete_at=None,
                        content_type=None)
    assert copy.etag == "1" * 32
    assert {d.version_id for d in service.catalog.declared_etags()} == {
        v.version_id, copy.version_id}
    EtagConfirmer(service).confirm_pending()
    assert service.catalog.object(c.id, "a").etag == md5(data)
    assert service.catalog.object(c.id, "b").etag == md5(data)


def test_a_new_process_confirms_what_a_killed_one_left(catalog, blocks_dir, service):
    # The mark is a catalog row of the version: a worker killed before its confirmer ran
    # leaves it, and any process of the data directory (a new worker) settles it.
    hm = Hashmaps(service)
    account, c = container(service)
    data = random.Random(5).randbytes(250_000)
    upload(hm, account, c, "a", data, "f" * 32)
    fresh = ObjectService(catalog, Mapper(Blocker(LocalBlockStore(str(blocks_dir))),
                                          block_size=4 * 1024 * 1024))
    later = EtagConfirmer(fresh)
    assert later.pending  # a new confirmer looks for what others left
    assert later.confirm_pending() == 1
    assert catalog.object(c.id, "a").etag == md5(data)


def test_confirmation_after_a_collector_and_of_a_version_gone_meanwhile(service, catalog,
                                                                        blocks_dir):
    hm = Hashmaps(service)
    account, c = container(service)
    kept = random.Random(6).randbytes(220_000)
    gone = random.Random(7).randbytes(180_000)
    upload(hm, account, c, "kept", kept, "2" * 32)
    upload(hm, account, c, "gone", gone, md5(gone))
    service.delete_object(c, "gone", None)
    catalog.purge_history(c.id, None, time.time() + 1)  # its version row goes, mark too
    # A real collector over the same catalog and store, sweeping whatever no version names
    # (no margin: the blocks of "gone" are swept; those of "kept" are marked from its root).
    data_dir = blocks_dir.parent
    done = subprocess.run([sys.executable, "-m", "pithos.cli.main", "gc", "--blocks",
                           f"file://{blocks_dir}", "--catalog", catalog.url,
                           "--data-dir", str(data_dir), "--clock-margin", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert EtagConfirmer(service).confirm_pending() == 1
    assert catalog.object(c.id, "kept").etag == md5(kept)
    assert catalog.declared_etags() == []


def test_a_live_server_confirms_a_false_declaration_on_its_own(pithos_server):
    r = requests.get(pithos_server.auth_url, headers={"X-Auth-User": "test:tester",
                                                      "X-Auth-Key": "testing"}, timeout=30)
    url, h = r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}
    requests.put(f"{url}/declared", headers=h, timeout=30).raise_for_status()
    data = random.Random(8).randbytes(400_000)
    parts = chunks(data)
    requests.post(f"{url}/declared", params={"blocks": ""}, data=b"".join(parts),
                  headers={**h, "X-Block-Lengths": ",".join(str(len(p)) for p in parts),
                           "Content-Type": "application/octet-stream"},
                  timeout=60).raise_for_status()
    doc = {"bytes": len(data), "hashes": [blake3.blake3(p).hexdigest() for p in parts],
           "lengths": [len(p) for p in parts]}
    r = requests.put(f"{url}/declared/o", params={"hashmap": ""}, data=json.dumps(doc),
                     headers={**h, "ETag": "3" * 32}, timeout=60)
    assert r.status_code == 201 and r.headers["ETag"].strip('"') == "3" * 32
    deadline = time.monotonic() + 60
    while True:  # the worker confirms once its uploads rest (a second)
        etag = requests.head(f"{url}/declared/o", headers=h, timeout=30).headers["ETag"]
        if etag.strip('"') != "3" * 32 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert etag.strip('"') == md5(data)
    assert requests.get(f"{url}/declared/o", headers=h, timeout=60).content == data

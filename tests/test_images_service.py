"""Images without HTTP (pithos.objects.images): records, visibility and sharing, uploads
(qcow2 converted with the real qemu-img), registration, images over existing maps, deletes;
over a real catalog (SQLite, and PostgreSQL when configured) and a memory block store."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest

from pithos.blocker import Blocker, MemoryBlockStore
from pithos.core.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    TooLarge,
    Unauthenticated,
)
from pithos.mapper import Mapper
from pithos.objects import UserInfo
from pithos.objects.acl import Action
from pithos.objects.images import CONTAINER
from pithos.objects.names import Limits
from pithos.objects.service import ObjectService

ALICE = UserInfo(1, "alice", "admin", True)
ALICE_READER = UserInfo(2, "alice", "reader", False)  # alice's account, not its admin
BOB = UserInfo(3, "bob", "admin", True)
CAROL = UserInfo(4, "carol", "admin", True)

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img is not installed (scripts/setup --test)")


@pytest.fixture
def service(catalog, tmp_path) -> ObjectService:
    return ObjectService(catalog, Mapper(Blocker(MemoryBlockStore()), block_size=4096),
                         limits=Limits(max_file_size=8 << 20), spool_dir=str(tmp_path / "spool"))


def disk(n: int = 3 * 4096 + 100) -> bytes:
    """Random data, zeros, random again: what a small disk looks like."""
    return os.urandom(n // 3) + bytes(n // 3) + os.urandom(n - 2 * (n // 3))


def uploaded(service, user=ALICE, data: bytes | None = None, **kw):
    images = service.images
    image = images.create(user, name=kw.pop("name", "img"), disk_format="raw",
                          container_format="bare", **kw)
    data = disk() if data is None else data
    return images.upload(user, image.id, io.BytesIO(data), len(data)), data


def content(service, user, image_id) -> bytes:
    return b"".join(service.images.read(user, image_id))


# -- records and rights ------------------------------------------------------------------------

def test_create_upload_read_a_raw_image(service):
    images = service.images
    image = images.create(ALICE, name="debian", disk_format="raw", container_format="bare",
                          min_disk=1, min_ram=128, properties={"os_distro": "debian"})
    assert (image.status, image.owner, image.root, image.visibility) == (
        "queued", "alice", None, "private")
    assert image.properties == {"os_distro": "debian"}
    with pytest.raises(Conflict, match="no data"):
        images.read(ALICE, image.id)
    data = disk()
    done = images.upload(ALICE, image.id, io.BytesIO(data), len(data))
    assert (done.status, done.size, done.container, done.object) == (
        "active", len(data), CONTAINER, image.id)
    import hashlib
    assert done.checksum == hashlib.md5(data).hexdigest()
    assert content(service, ALICE, image.id) == data
    # The data is an object of the owner's account, readable as any other.
    _, c = service.authz.container(ALICE, "alice", CONTAINER, Action.LISTING)
    assert service.find_object(c, image.id).root == done.root
    assert images.get(ALICE, image.id) == done
    with pytest.raises(Conflict, match="queued"):  # data once
        images.upload(ALICE, image.id, io.BytesIO(b"x"), 1)


def test_private_images_do_not_exist_for_other_accounts(service):
    mine, _ = uploaded(service)
    images = service.images
    for call in (lambda u: images.get(u, mine.id), lambda u: images.read(u, mine.id),
                 lambda u: images.update(u, mine.id, {"name": "x"}),
                 lambda u: images.delete(u, mine.id), lambda u: images.members(u, mine.id),
                 lambda u: images.add_member(u, mine.id, "carol")):
        with pytest.raises(NotFound) as absent:
            call(BOB)
        # The same answer as for an id that was never used.
        with pytest.raises(NotFound) as never:
            images.get(BOB, "00000000-0000-4000-8000-000000000000")
        assert type(absent.value) is type(never.value)
        with pytest.raises(Unauthenticated):
            call(None)
    assert images.list(BOB) == []
    assert [i.id for i in images.list(ALICE)] == [mine.id]
    # A user of the owner's account sees it, but only the admin changes it.
    assert images.get(ALICE_READER, mine.id).id == mine.id
    with pytest.raises(Forbidden):
        images.update(ALICE_READER, mine.id, {"name": "x"})
    with pytest.raises(Forbidden):
        images.create(ALICE_READER, name="x")


def test_public_and_community_images_are_seen_but_not_changed_by_others(service):
    images = service.images
    img, data = uploaded(service)
    images.update(ALICE, img.id, {"visibility": "public"})
    assert content(service, BOB, img.id) == data
    assert [i.id for i in images.list(BOB)] == [img.id]
    assert images.list(BOB, visibility="private") == []
    with pytest.raises(Forbidden):
        images.update(BOB, img.id, {"name": "mine now"})
    with pytest.raises(Forbidden):
        images.delete(BOB, img.id)
    images.update(ALICE, img.id, {"visibility": "community"})
    assert images.list(BOB) == []  # community images are listed only when asked for
    assert [i.id for i in images.list(BOB, visibility="community")] == [img.id]
    assert images.get(BOB, img.id).visibility == "community"


def test_shared_images_are_seen_by_members_and_listed_once_accepted(service):
    images = service.images
    img, data = uploaded(service)
    with pytest.raises(Forbidden, match="shared"):
        images.add_member(ALICE, img.id, "bob")
    images.update(ALICE, img.id, {"visibility": "shared"})
    with pytest.raises(NotFound):
        images.get(BOB, img.id)
    member = images.add_member(ALICE, img.id, "bob")
    assert (member.member, member.status) == ("bob", "pending")
    with pytest.raises(Conflict):
        images.add_member(ALICE, img.id, "bob")
    assert content(service, BOB, img.id) == data
    assert images.list(BOB) == []
    assert [i.id for i in images.list(BOB, member_status="pending")] == [img.id]
    with pytest.raises(Forbidden):  # the owner does not accept for the member
        images.set_member_status(ALICE, img.id, "bob", "accepted")
    images.set_member_status(BOB, img.id, "bob", "accepted")
    assert [i.id for i in images.list(BOB)] == [img.id]
    assert [m.member for m in images.members(BOB, img.id)] == ["bob"]
    images.add_member(ALICE, img.id, "carol")
    assert [m.member for m in images.members(ALICE, img.id)] == ["bob", "carol"]
    assert [m.member for m in images.members(BOB, img.id)] == ["bob"]  # not the others
    with pytest.raises(Forbidden):  # members do not change the image
        images.update(BOB, img.id, {"name": "x"})
    images.remove_member(ALICE, img.id, "bob")
    with pytest.raises(NotFound):
        images.get(BOB, img.id)
    assert images.get(CAROL, img.id).id == img.id


def test_list_filters_and_pages(service):
    images = service.images
    made = [images.create(ALICE, name=f"img{i % 2}", disk_format="raw",
                          container_format="bare") for i in range(5)]
    newest_first = [i.id for i in reversed(made)]
    assert [i.id for i in images.list(ALICE)] == newest_first
    page = images.list(ALICE, limit=2)
    rest = images.list(ALICE, limit=10, marker=page[-1].id)
    assert [i.id for i in page + rest] == newest_first
    assert {i.name for i in images.list(ALICE, name="img1")} == {"img1"}
    assert len(images.list(ALICE, name="img1")) == 2
    assert images.list(ALICE, status="active") == []
    assert len(images.list(ALICE, owner="alice")) == 5
    with pytest.raises(InvalidArgument, match="marker"):
        images.list(BOB, marker=made[0].id)  # not a way to probe ids either
    with pytest.raises(InvalidArgument):
        images.list(ALICE, visibility="everything")


def test_bad_values_are_refused_with_a_reason(service):
    images = service.images
    with pytest.raises(InvalidArgument, match="disk format"):
        images.create(ALICE, name="x", disk_format="vmdk")
    with pytest.raises(InvalidArgument, match="container format"):
        images.create(ALICE, name="x", container_format="ovf")
    with pytest.raises(InvalidArgument, match="min_disk"):
        images.create(ALICE, name="x", min_disk=-1)
    with pytest.raises(InvalidArgument, match="visibility"):
        images.create(ALICE, name="x", visibility="everyone")
    # NUL is no character of a name (PostgreSQL's text refuses it).
    with pytest.raises(InvalidArgument, match="NUL"):
        images.create(ALICE, name="a\0b")
    with pytest.raises(InvalidArgument, match="NUL"):
        images.list(ALICE, name="a\0b")
    img = images.create(ALICE, name="x", disk_format="raw", container_format="bare")
    with pytest.raises(InvalidArgument, match="NUL"):
        images.update(ALICE, img.id, {"k": "a\0b"})
    with pytest.raises(NotFound):
        images.remove_member(ALICE, img.id, "a\0b")
    with pytest.raises(Forbidden, match="read-only"):
        images.update(ALICE, img.id, {"status": "active"})
    with pytest.raises(Forbidden, match="read-only"):
        images.update(ALICE, img.id, {"size": 5})
    with pytest.raises(InvalidArgument, match="string"):
        images.update(ALICE, img.id, {"kernel_id": 5})
    assert images.list(ALICE)[0].name == "x"  # nothing changed


def test_update_sets_attributes_and_properties(service):
    images = service.images
    img, _ = uploaded(service)
    done = images.update(ALICE, img.id, {"name": "new", "min_ram": 256, "kernel_id": "k",
                                         "ramdisk_id": "r"})
    assert (done.name, done.min_ram, done.properties) == (
        "new", 256, {"kernel_id": "k", "ramdisk_id": "r"})
    done = images.update(ALICE, img.id, {"ramdisk_id": None, "kernel_id": "k2"})
    assert done.properties == {"kernel_id": "k2"}
    with pytest.raises(Forbidden, match="no data"):  # an active image's format is fixed
        images.update(ALICE, img.id, {"disk_format": "aki"})


def test_delete_removes_the_image_and_the_object_it_made(service):
    images = service.images
    img, _ = uploaded(service, protected=True)
    with pytest.raises(Forbidden, match="protected"):
        images.delete(ALICE, img.id)
    images.update(ALICE, img.id, {"protected": False})
    images.delete(ALICE, img.id)
    with pytest.raises(NotFound):
        images.get(ALICE, img.id)
    _, c = service.authz.container(ALICE, "alice", CONTAINER, Action.LISTING)
    assert service.find_object(c, img.id) is None
    assert list(service.catalog.image_roots()) == []
    # Nor is its history kept: nothing names the image's data, gc may reclaim it.
    assert img.root not in set(service.catalog.version_roots())


# -- registration and images over existing maps --------------------------------------------------

def put_object(service, user, container, name, data):
    account = service.authz.account(user, user.account, Action.CONTAINER_WRITE)
    service.create_container(account, container, {}, {})
    _, c = service.authz.container(user, user.account, container, Action.LISTING)
    stored = service.store(io.BytesIO(data), len(data))
    return c, service.create(c, name, stored, etag=None, content_type="x", meta={},
                             modified_by=None, delete_at=None)


def test_register_an_object_and_keep_its_map_when_the_object_goes(service):
    data = disk()
    c, v = put_object(service, ALICE, "disks", "d.raw", data)
    images = service.images
    img = images.register(ALICE, "disks", "d.raw", name="registered", min_disk=1)
    assert (img.status, img.root, img.size, img.checksum) == ("active", v.root, len(data),
                                                              v.etag)
    with pytest.raises(Forbidden):  # a user of the account who is not its admin
        images.register(ALICE_READER, "disks", "d.raw")
    with pytest.raises(NotFound):
        images.register(ALICE, "disks", "absent")
    with pytest.raises(InvalidArgument, match="raw"):
        images.register(ALICE, "disks", "d.raw", disk_format="qcow2")
    service.delete_object(c, "d.raw", None)
    assert content(service, ALICE, img.id) == data  # the image keeps the map
    assert img.root in set(service.catalog.image_roots())
    images.delete(ALICE, img.id)  # the object was not the image's: nothing else goes


def test_register_refuses_an_object_of_another_account(service):
    put_object(service, BOB, "disks", "d.raw", disk())
    # Registration names the caller's own account: bob's object is not reachable by name.
    with pytest.raises(NotFound):
        service.images.register(ALICE, "disks", "d.raw")


def test_from_root_makes_an_active_image_without_copying(service):
    data = disk()
    root, size = service.mapper.build_stream(io.BytesIO(data))
    blocks_before = len(service.mapper.blocker.store._blobs)  # type: ignore[attr-defined]
    images = service.images
    img = images.from_root(ALICE, "snap", root, size, min_disk=1,
                           properties={"kernel_id": "k"})
    assert (img.status, img.root, img.size, img.properties) == (
        "active", root, size, {"kernel_id": "k"})
    assert len(service.mapper.blocker.store._blobs) == blocks_before  # type: ignore
    assert content(service, ALICE, img.id) == data
    _, c = service.authz.container(ALICE, "alice", CONTAINER, Action.LISTING)
    assert service.find_object(c, img.id).root == root
    with pytest.raises(NotFound):
        images.from_root(ALICE, "bad", bytes(32), 10)
    with pytest.raises(InvalidArgument):
        images.from_root(ALICE, "bad", root, size + 1)


# -- qcow2 -----------------------------------------------------------------------------------

@needs_qemu_img
def test_a_qcow2_upload_is_converted_to_raw_once(service, tmp_path):
    data = disk(64 * 1024)
    raw, qcow2 = tmp_path / "d.raw", tmp_path / "d.qcow2"
    raw.write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                   check=True, timeout=60)
    body = qcow2.read_bytes()
    assert body[:4] == b"QFI\xfb" and body != data
    images = service.images
    # Declared raw, but the magic says qcow2: converted all the same.
    img = images.create(ALICE, name="q", disk_format="raw", container_format="bare")
    done = images.upload(ALICE, img.id, io.BytesIO(body), len(body))
    assert (done.disk_format, done.size, done.status) == ("raw", len(data), "active")
    assert content(service, ALICE, img.id) == data
    assert os.listdir(tmp_path / "spool") == []  # nothing left behind


@needs_qemu_img
def test_garbage_qcow2_is_refused_and_the_image_stays_queued(service, tmp_path):
    images = service.images
    img = images.create(ALICE, name="q", disk_format="qcow2", container_format="bare")
    garbage = b"QFI\xfb" + os.urandom(5000)
    with pytest.raises(InvalidArgument, match="qcow2"):
        images.upload(ALICE, img.id, io.BytesIO(garbage), len(garbage))
    assert images.get(ALICE, img.id).status == "queued"
    found = service.catalog.account_and_container("alice", CONTAINER).container
    assert found is None or service.find_object(found, img.id) is None
    # A backing file would make qemu-img read a path the uploader chose.
    base, top = tmp_path / "base.raw", tmp_path / "top.qcow2"
    base.write_bytes(b"secret" * 100)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(base),
                    str(top)], check=True, timeout=60, capture_output=True)
    body = top.read_bytes()
    with pytest.raises(InvalidArgument, match="backing file"):
        images.upload(ALICE, img.id, io.BytesIO(body), len(body))
    # Declared qcow2, raw data is refused too; redeclared raw, it takes it.
    data = disk()
    with pytest.raises(InvalidArgument, match="not in qcow2 format"):
        images.upload(ALICE, img.id, io.BytesIO(data), len(data))
    images.update(ALICE, img.id, {"disk_format": "raw"})
    assert images.upload(ALICE, img.id, io.BytesIO(data), len(data)).status == "active"
    assert os.listdir(tmp_path / "spool") == []


@needs_qemu_img
def test_a_qcow2_disk_larger_than_an_object_is_refused(service, tmp_path):
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(big), "1G"], check=True,
                   timeout=60, capture_output=True)
    images = service.images
    img = images.create(ALICE, name="q", disk_format="qcow2", container_format="bare")
    body = big.read_bytes()
    with pytest.raises(TooLarge):
        images.upload(ALICE, img.id, io.BytesIO(body), len(body))
    assert images.get(ALICE, img.id).status == "queued"


def test_an_upload_over_the_largest_object_is_refused(service):
    images = service.images
    img = images.create(ALICE, name="q", disk_format="raw", container_format="bare")
    with pytest.raises(TooLarge):
        images.upload(ALICE, img.id, io.BytesIO(bytes(9 << 20)), 9 << 20)
    assert images.get(ALICE, img.id).status == "queued"


def test_image_roots_are_gc_roots_of_the_catalog(service):
    img, _ = uploaded(service)
    assert list(service.catalog.image_roots()) == [img.root]


def test_a_collector_that_missed_the_snapshot_spares_the_image_made_from_it(service):
    """The snapshot's map is no root of a collector that started before the image (the
    snapshot went meanwhile), and the image commits while that collector runs: from_root
    touched the map inside a writer, so the sweep spares it.  An untouched map put at the
    same time (the control) is swept."""
    import time

    from pithos.mapper.gc import Collection

    blocker = service.mapper.blocker
    snap_data, other_data = disk(), disk()
    root, size = service.mapper.build_stream(io.BytesIO(snap_data))
    other, _ = service.mapper.build_stream(io.BytesIO(other_data))
    time.sleep(0.05)  # both maps' blocks were put before the collector's start
    run = Collection(blocker, started=time.time(), oldest_upload=None, clock_margin_s=0)
    run.mark([])  # neither map is a root when the collector looks
    img = service.images.from_root(ALICE, "snap", root, size)
    for batch in run.candidates():
        run.sweep(batch)
    run.finish()
    assert content(service, ALICE, img.id) == snap_data
    with pytest.raises(NotFound):
        b"".join(service.read([(other, len(other_data))], 0, len(other_data)))


def test_an_image_id_is_one_image_in_any_case(service):
    """A UUID names one image whatever the case of its hex digits: given upper-case it is kept
    lower-case, and another account's create of the same id in another case is the same
    conflict as in its own (it made a second, "shadow" image beside the first)."""
    images = service.images
    upper = "8F59C436-0D5E-4A6B-9C3D-2E1F0A9B8C7D"
    made = images.create(ALICE, name="mine", image_id=upper)
    assert made.id == upper.lower()
    assert images.get(ALICE, upper).id == upper.lower()
    for other in (upper, upper.lower()):
        with pytest.raises(Conflict):
            images.create(BOB, name="shadow", image_id=other)
    assert [i.id for i in images.list(ALICE)] == [upper.lower()]

"""Images (Plankton, the Glance v2 subset): an image is metadata over a map, kept in the
catalog (pithos/catalog/images.py), and its data is an object of its owner's account, so it
dedups against everything else and a volume snapshot becomes an image without a copy.

Who sees what: an image is seen by its owner account's users, by everybody when public or
community, and by the member accounts of a shared one.  To anyone else it does not exist:
every operation answers NotFound, never Forbidden, so no account learns another's image ids.
Who changes what: the owner account's admin (`Authz.owns`); a member only its own
membership's status.  The first check of every operation is the caller's identity
(Unauthenticated without one).

Keeping maps alive: an image row names its map's root, and gc takes every image's root as a
root (`Catalog.image_roots`), so the object the data came from may change or go.  Every
operation that points an image at a map is a writer (`ObjectService.upload_lease`): it puts or
touches the map's pages and blocks after the writer began, and commits the image row before
the writer ends (docs/design.md, "Writers and the collector").

`Images.root` (an object's map with a reader's rights) predates the records and serves
`archipelago clone --object`.
"""

from __future__ import annotations

import hashlib
import time
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, Protocol

from pithos.catalog import Catalog, Image, ImageMember, ObjectVersion, UserInfo
from pithos.core.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from pithos.objects.acl import Action
from pithos.objects.authz import Authz
from pithos.objects.image_import import QCOW2_MAGIC, Prefixed, converted_to_raw, read_head

__all__ = ["CONTAINER", "CONTAINER_FORMATS", "DISK_FORMATS", "Image", "ImageMember", "Images",
           "MEMBER_STATUSES", "READ_ONLY", "STATUSES", "VISIBILITIES"]

# The container of its owner's account that holds an uploaded image's data (made on first
# use), under the image's id.
CONTAINER = "images"
DISK_FORMATS = ("raw", "qcow2", "aki", "ari")
CONTAINER_FORMATS = ("bare", "aki", "ari")
VISIBILITIES = ("private", "shared", "public", "community")
STATUSES = ("queued", "saving", "active", "killed", "deleted")
MEMBER_STATUSES = ("pending", "accepted", "rejected")
# Glance's attributes a client may not set; `update` refuses them (Forbidden).
READ_ONLY = frozenset({"id", "owner", "status", "checksum", "size", "virtual_size",
                       "created_at", "updated_at", "file", "self", "schema", "direct_url",
                       "locations", "os_hash_algo", "os_hash_value", "container", "object",
                       "root"})
# The attributes that are columns; any other key of `update`'s changes is a property.
_FIELDS = ("name", "disk_format", "container_format", "min_disk", "min_ram", "visibility",
           "protected")
MAX_PROPERTY_KEY = 255
MAX_PROPERTY_VALUE = 65535
MAX_PROPERTIES = 128


class ObjectStore(Protocol):
    """What Images needs of the object service (pithos.objects.service.ObjectService)."""

    catalog: Catalog

    def store(self, body: BinaryIO, length: int | None, chunking: str | None = None,
              inline: bool = True) -> Any: ...
    def stored_root(self, v: ObjectVersion) -> bytes: ...
    def upload_lease(self) -> AbstractContextManager[None]: ...
    def commit_version(self, container_id: int, name: str, **version: Any
                       ) -> ObjectVersion: ...
    def block_hashes(self, root: bytes) -> list[bytes]: ...
    def read(self, parts: Any, offset: int, length: int) -> Iterator[bytes]: ...
    def touch_map(self, root: bytes) -> int: ...
    def max_file_size(self) -> int: ...


class Images:
    def __init__(self, catalog: Catalog, authz: Authz | None = None,
                 objects: ObjectStore | None = None, spool_dir: str | None = None,
                 qemu_img: str = "qemu-img") -> None:
        """`objects`: the object service that stores and reads image data (without it only
        `root` and the metadata operations work); `spool_dir`: where a qcow2 upload is
        converted (the data directory's; default the system's temporary directory)."""
        self.catalog = catalog
        self.authz = authz or Authz(catalog)
        self._objects = objects
        self.spool_dir = spool_dir
        self.qemu_img = qemu_img

    def root(self, account: str, container: str, name: str, *, user: UserInfo | None = None,
             operator: bool = False) -> bytes:
        """The map root of object `name`'s current version, read as `user` would read it
        (Unauthenticated / Forbidden as `Authz.object_access`), or, with `operator` (the
        machine's own command line), without asking.  NotFound when there is no such object;
        InvalidArgument for a dynamic large object's manifest, which has no map of its own.
        Makes no account.  A small object kept inline has a root that names nothing stored:
        see `current`."""
        return self.current(account, container, name, user=user, operator=operator)[0]

    def current(self, account: str, container: str, name: str, *,
                user: UserInfo | None = None, operator: bool = False
                ) -> tuple[bytes, bytes | None]:
        """As `root`, with the version's content when it is kept inline (else None): a
        consumer that needs a real map stores it as blocks first, as a writer."""
        if operator:
            found = self.catalog.account_and_container(account, container).container
        else:
            _, found, _ = self.authz.object_access(user, account, container, name,
                                                   Action.OBJECT_READ)
        version = self.catalog.object(found.id, name) if found is not None else None
        if version is None:
            raise NotFound(f"no object {account}/{container}/{name}")
        if version.root is None or version.dlo_manifest:
            raise InvalidArgument(f"{account}/{container}/{name} is a dynamic large object "
                                  "manifest, not an image")
        return version.root, version.inline

    # -- reading -------------------------------------------------------------------------------

    def get(self, user: UserInfo | None, image_id: str) -> Image:
        """The image, if `user` may see it; NotFound otherwise, whether or not it exists."""
        _who(user)
        # (A UUID names one image in any case of its hex digits: ids are kept lower-case.)
        found = self.catalog.image(image_id.lower()) if _is_uuid(image_id) else None
        if found is None or not self._sees(user, found):
            raise NotFound(f"no image {image_id}")
        return found

    def list(self, user: UserInfo | None, *, name: str | None = None,
             visibility: str | None = None, status: str | None = None,
             owner: str | None = None, member_status: str = "accepted", limit: int = 25,
             marker: str | None = None) -> list[Image]:
        """The images `user` sees, newest first: its account's, public ones and shared ones
        it accepted (`member_status`: "pending", "rejected" or "all" for others); community
        images only with `visibility="community"` (or "all").  `marker`: the last id of the
        previous page (InvalidArgument if `user` cannot see such an image)."""
        user = _who(user)
        for text in (name, owner):
            if text is not None and (len(text) > 256 or "\0" in text):
                raise InvalidArgument("a name or owner is at most 256 characters, without NUL")
        if visibility is not None and visibility not in (*VISIBILITIES, "all"):
            raise InvalidArgument(f"visibility is one of {', '.join(VISIBILITIES)} or all")
        if status is not None and status not in STATUSES:
            raise InvalidArgument(f"status is one of {', '.join(STATUSES)}")
        if member_status not in (*MEMBER_STATUSES, "all"):
            raise InvalidArgument(f"member_status is one of {', '.join(MEMBER_STATUSES)} or all")
        if not 0 <= limit <= 1000:
            raise InvalidArgument("limit is from 0 to 1000")
        after = None
        if marker:
            try:
                after = self.get(user, marker)
            except NotFound:
                raise InvalidArgument(f"marker {marker} not found") from None
        return self.catalog.list_images(user.account, visibility=visibility, name=name,
                                        status=status, owner=owner,
                                        member_status=member_status, limit=limit,
                                        marker=after)

    def read(self, user: UserInfo | None, image_id: str) -> Iterator[bytes]:
        """The image's content, for a download or a kernel/ramdisk to boot; NotFound as `get`,
        Conflict when it has no data yet."""
        image = self.get(user, image_id)
        if image.root is None or image.status != "active":
            raise Conflict(f"image {image_id} has no data (it is {image.status})")
        size = image.size or 0
        return self._service().read([(image.root, size)], 0, size)

    # -- making images -------------------------------------------------------------------------

    def create(self, user: UserInfo | None, *, name: str = "", disk_format: str | None = None,
               container_format: str | None = None, min_disk: int = 0, min_ram: int = 0,
               visibility: str = "private", protected: bool = False,
               properties: Mapping[str, str] | None = None,
               image_id: str | None = None) -> Image:
        """A new image without data (status queued) in `user`'s account; InvalidArgument for
        a bad value, Forbidden unless `user` is its account's admin, Conflict when `image_id`
        (a client's choice) is taken."""
        user = self._admin_of_own(user)
        values = _checked({"name": name, "disk_format": disk_format,
                           "container_format": container_format, "min_disk": min_disk,
                           "min_ram": min_ram, "visibility": visibility,
                           "protected": protected})
        props = _checked_properties(properties or {})
        if image_id is not None and not _is_uuid(image_id):
            raise InvalidArgument("an image id is a UUID")
        # Lower-case, so that another case of the same UUID is the same image, not a second.
        image_id = image_id.lower() if image_id else str(uuidlib.uuid4())
        if self.catalog.image(image_id) is not None:
            raise Conflict(f"image {image_id} exists")
        # Charged to the project the user acts in (its token's scope; else its home).
        return self.catalog.create_image(self._account_id(user.account), image_id,
                                         properties=props, project_id=user.project, **values)

    def upload(self, user: UserInfo | None, image_id: str, body: BinaryIO,
               length: int | None) -> Image:
        """Store the image's data (a queued image's; Conflict otherwise) as object
        `images/<id>` of its owner's account, then make it active.  A qcow2 (by its magic or
        its disk_format) is converted to raw first, and its disk_format becomes raw.  Bad
        data (InvalidArgument), a body over the largest object (TooLarge) or a short one
        leave the image queued and store no object."""
        image = self._owned(user, image_id)
        service = self._service()
        self._set_status(image_id, "saving", expect=("queued",))
        try:
            head = read_head(body, len(QCOW2_MAGIC))
            qcow2 = head == QCOW2_MAGIC or image.disk_format == "qcow2"
            stream: BinaryIO = Prefixed(head, body)  # type: ignore[assignment]
            with service.upload_lease():
                if qcow2:
                    with converted_to_raw(stream, length, service.max_file_size(),
                                          self.spool_dir, self.qemu_img) as (raw, size):
                        stored = service.store(raw, size, inline=False)
                else:
                    # Never inline: the image row names a real map (volumes clone it).
                    stored = service.store(stream, length, inline=False)
                version = self._commit_object(image.owner, image_id, stored.root,
                                              stored.size, stored.md5)
                done = self.catalog.update_image(
                    image_id, {"disk_format": "raw"} if qcow2 else {}, status="active",
                    expect_status=("saving",), sources=[version.version_id], data={
                        "container": CONTAINER, "object": image_id, "root": stored.root,
                        "size": stored.size, "checksum": stored.md5, "made_object": True})
        except BaseException:
            self._set_status(image_id, "queued", expect=("saving",), quiet=True)
            raise
        if done is None:  # deleted meanwhile: its object goes too
            self._delete_object(image.owner, image_id)
            raise NotFound(f"no image {image_id}")
        return done

    def from_root(self, user: UserInfo | None, name: str, root: bytes, size: int, *,
                  min_disk: int = 0, min_ram: int = 0,
                  properties: Mapping[str, str] | None = None, disk_format: str = "raw",
                  container_format: str = "bare", visibility: str = "private") -> Image:
        """A new active image in `user`'s account whose data is the existing map `root` of
        `size` bytes (a volume snapshot's): a new object `images/<id>` names the map, no data
        is copied (its MD5, the checksum, is read).  The map's pages and blocks are touched
        inside a writer, so a collector running meanwhile spares them even if the snapshot
        goes before the image commits; NotFound if the map is not whole."""
        user = self._admin_of_own(user)
        service = self._service()
        values = _checked({"name": name, "disk_format": disk_format,
                           "container_format": container_format, "min_disk": min_disk,
                           "min_ram": min_ram, "visibility": visibility, "protected": False})
        props = _checked_properties(properties or {})
        if len(root) != 32 or size < 0:
            raise InvalidArgument("a root is 32 bytes and a size is not negative")
        image_id = str(uuidlib.uuid4())
        with service.upload_lease():
            if service.touch_map(root) != size:
                raise InvalidArgument(f"the map holds a different size than {size}")
            md5 = hashlib.md5(usedforsecurity=False)
            for piece in service.read([(root, size)], 0, size):
                md5.update(piece)
            version = self._commit_object(user.account, image_id, root, size, md5.hexdigest())
            return self.catalog.create_image(
                self._account_id(user.account), image_id, properties=props, status="active",
                container=CONTAINER, obj=image_id, root=root, size=size,
                checksum=md5.hexdigest(), made_object=True, sources=[version.version_id],
                project_id=user.project, **values)

    def register(self, user: UserInfo | None, container: str, obj: str, *, name: str = "",
                 disk_format: str = "raw", container_format: str = "bare",
                 min_disk: int = 0, min_ram: int = 0, visibility: str = "private",
                 protected: bool = False,
                 properties: Mapping[str, str] | None = None) -> Image:
        """Object `container/obj` of `user`'s account (which `user` may read) as a new active
        image over its current version's map (Plankton's registration): the object stays
        the user's, deleting the image leaves it.  A dynamic large object's manifest is
        refused (InvalidArgument); qcow2 is not converted here (upload it instead)."""
        user = self._admin_of_own(user)
        service = self._service()
        if disk_format == "qcow2":
            raise InvalidArgument("a registered object must be a raw disk (qcow2 is converted "
                                  "on upload only)")
        values = _checked({"name": name or obj, "disk_format": disk_format,
                           "container_format": container_format, "min_disk": min_disk,
                           "min_ram": min_ram, "visibility": visibility,
                           "protected": protected})
        props = _checked_properties(properties or {})
        _, found, _ = self.authz.object_access(user, user.account, container, obj,
                                               Action.OBJECT_READ)
        version = self.catalog.object(found.id, obj)
        if version is None:
            raise NotFound(f"no object {container}/{obj}")
        if version.root is None or version.dlo_manifest:
            raise InvalidArgument(f"{container}/{obj} is a dynamic large object manifest, "
                                  "not an image")
        image_id = str(uuidlib.uuid4())
        with service.upload_lease():
            # A small object kept inline gets its blocks and map stored now: an image names
            # a real map (volumes clone it), kept alive by the image row.
            root = service.stored_root(version)
            service.touch_map(root)
            return self.catalog.create_image(
                self._account_id(user.account), image_id, properties=props, status="active",
                container=container, obj=obj, root=root, size=version.size,
                checksum=None if version.slo_manifest else version.etag,
                sources=[version.version_id], project_id=user.project, **values)

    # -- changing and deleting -----------------------------------------------------------------

    def update(self, user: UserInfo | None, image_id: str, changes: Mapping[str, Any]
               ) -> Image:
        """Set attributes (name, visibility, min_disk, min_ram, protected, and, while queued,
        disk_format and container_format) and properties (any other key; None removes
        one), all or nothing.  Forbidden for a read-only attribute or another account's
        image; InvalidArgument for a bad value."""
        image = self._owned(user, image_id)
        bad = sorted(READ_ONLY & set(changes))
        if bad:
            raise Forbidden(f"Attribute '{bad[0]}' is read-only.")
        fields = _checked({k: v for k, v in changes.items() if k in _FIELDS}, partial=True)
        if image.status != "queued" and any(
                k in fields and fields[k] != getattr(image, k)
                for k in ("disk_format", "container_format")):
            raise Forbidden("disk_format and container_format change only while the image "
                            "has no data")
        props = {k: v for k, v in changes.items() if k not in _FIELDS}
        _checked_properties({k: v for k, v in props.items() if v is not None},
                            len({**image.properties, **props}))
        done = self.catalog.update_image(image_id, fields, props)
        if done is None:
            raise NotFound(f"no image {image_id}")
        return done

    def delete(self, user: UserInfo | None, image_id: str) -> None:
        """Delete the image, and the object it made (an upload's or a snapshot's) if that
        object still holds the image's data; Forbidden while it is protected."""
        image = self._owned(user, image_id)
        if image.protected:
            raise Forbidden(f"image {image_id} is protected: unprotect it first")
        gone = self.catalog.delete_image(image_id)
        if gone is not None and gone.made_object and gone.container and gone.object:
            current = self._object(gone.owner, gone.container, gone.object)
            if current is not None and current.root == gone.root:
                self._delete_object(gone.owner, gone.object, gone.container)

    # -- members -------------------------------------------------------------------------------

    def members(self, user: UserInfo | None, image_id: str) -> list[ImageMember]:
        """Who a shared image is shared with: all of them for its owner, a member's own
        entry for a member."""
        image = self.get(user, image_id)
        found = self.catalog.image_members(image_id)
        if _who(user).account == image.owner:
            return found
        return [m for m in found if m.member == _who(user).account]

    def member(self, user: UserInfo | None, image_id: str, member: str) -> ImageMember:
        found = [m for m in self.members(user, image_id) if m.member == member]
        if not found:
            raise NotFound(f"{member} is not a member of image {image_id}")
        return found[0]

    def add_member(self, user: UserInfo | None, image_id: str, member: str) -> ImageMember:
        """Share a `shared` image with account `member` (pending until it accepts);
        Forbidden for another visibility, Conflict if already a member."""
        image = self._owned(user, image_id)
        if image.visibility != "shared":
            raise Forbidden("only a shared image has members: set its visibility to shared")
        if not member or len(member) > 256 or "\0" in member or member == image.owner:
            raise InvalidArgument("a member is another account (a project id)")
        added = self.catalog.put_image_member(image_id, member, "pending", create=True)
        assert added is not None
        return added

    def remove_member(self, user: UserInfo | None, image_id: str, member: str) -> None:
        self._owned(user, image_id)
        if not _account_name(member) or not self.catalog.delete_image_member(image_id, member):
            raise NotFound(f"{member} is not a member of image {image_id}")

    def set_member_status(self, user: UserInfo | None, image_id: str, member: str,
                          status: str) -> ImageMember:
        """A member accepts (the image is then listed for it) or rejects a shared image;
        only the member itself may (Forbidden for the owner)."""
        user = _who(user)
        self.get(user, image_id)
        if status not in MEMBER_STATUSES:
            raise InvalidArgument(f"status is one of {', '.join(MEMBER_STATUSES)}")
        if user.account != member:
            if not _account_name(member) or self.catalog.image_member(image_id,
                                                                        member) is None:
                raise NotFound(f"{member} is not a member of image {image_id}")
            raise Forbidden("only the member itself accepts or rejects an image")
        done = self.catalog.put_image_member(image_id, member, status, create=False)
        if done is None:
            raise NotFound(f"{member} is not a member of image {image_id}")
        return done

    # -- helpers -------------------------------------------------------------------------------

    def _service(self) -> ObjectStore:
        if self._objects is None:
            raise InvalidArgument("image data needs the object service")
        return self._objects

    def _sees(self, user: UserInfo, image: Image) -> bool:
        if image.owner == user.account or image.visibility in ("public", "community"):
            return True
        return image.visibility == "shared" and \
            self.catalog.image_member(image.id, user.account) is not None

    def _owned(self, user: UserInfo | None, image_id: str) -> Image:
        """The image, if `user` may change it: NotFound if it cannot even see it."""
        image = self.get(user, image_id)
        account = self.catalog.account(image.owner, detail=False)
        if not self.authz.owns(user, account):
            raise Forbidden(f"image {image_id} is not yours to change")
        return image

    def _admin_of_own(self, user: UserInfo | None) -> UserInfo:
        user = _who(user)
        account = self.catalog.account(user.account, detail=False)
        if not user.admin and not self.authz.owns(user, account):
            raise Forbidden("only the account's admin makes images")
        return user

    def _account_id(self, name: str) -> int:
        found = self.catalog.account(name, detail=False)
        return found.id if found is not None else self.catalog.ensure_account(name)

    def _set_status(self, image_id: str, status: str, expect: tuple[str, ...],
                    quiet: bool = False) -> None:
        try:
            done = self.catalog.update_image(image_id, {}, status=status, expect_status=expect)
        except Conflict:
            if quiet:
                return
            raise Conflict(f"image {image_id} has data already, or is being uploaded "
                           "(only a queued image takes an upload)") from None
        if done is None and not quiet:
            raise NotFound(f"no image {image_id}")

    def _commit_object(self, account: str, name: str, root: bytes, size: int,
                       md5: str) -> ObjectVersion:
        """Object `images/<name>` of `account` naming map `root` (inside the caller's writer);
        the account may name its blocks from now on."""
        service = self._service()
        account_id = self._account_id(account)
        self.catalog.create_container(account_id, CONTAINER)
        found = self.catalog.container(account_id, CONTAINER, detail=False)
        assert found is not None
        return service.commit_version(
            found.id, name, root=root, size=size, etag=md5,
            content_type="application/octet-stream", meta={},
            grant=(account_id, service.block_hashes(root)))

    def _object(self, account: str, container: str, name: str) -> ObjectVersion | None:
        found = self.catalog.account_and_container(account, container).container
        return self.catalog.object(found.id, name) if found is not None else None

    def _delete_object(self, account: str, name: str, container: str = CONTAINER) -> None:
        """Delete an object the image system made, with its history: its versions are the
        image's data and nobody else's, and kept they would keep that data from gc."""
        found = self.catalog.account_and_container(account, container).container
        if found is not None:
            self.catalog.delete_object(found.id, name)
            self.catalog.purge_history(found.id, name, time.time() + 1.0)


def _who(user: UserInfo | None) -> UserInfo:
    if user is None:
        raise Unauthenticated("authentication required")
    return user


def _account_name(text: str) -> bool:
    """Whether `text` can be an account's name (what a member is); else no account has it."""
    return 0 < len(text) <= 256 and "\0" not in text


def _is_uuid(text: str) -> bool:
    try:
        return str(uuidlib.UUID(text)) == text.lower() and len(text) == 36
    except (ValueError, AttributeError, TypeError):
        return False


def _checked(values: Mapping[str, Any], partial: bool = False) -> dict[str, Any]:
    """The image's attributes, validated; InvalidArgument with the reason otherwise."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            if value is None:
                value = ""
            if not isinstance(value, str) or len(value) > 255 or "\0" in value:
                raise InvalidArgument("name is a string of at most 255 characters (no NUL)")
        elif key == "disk_format":
            if value is not None and value not in DISK_FORMATS:
                raise InvalidArgument(f"Invalid disk format '{value}' for image: disk_format "
                                      f"is one of {', '.join(DISK_FORMATS)}")
        elif key == "container_format":
            if value is not None and value not in CONTAINER_FORMATS:
                raise InvalidArgument(f"Invalid container format '{value}' for image: "
                                      f"container_format is one of "
                                      f"{', '.join(CONTAINER_FORMATS)}")
        elif key in ("min_disk", "min_ram"):
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 0 <= value < 2**31:
                raise InvalidArgument(f"{key} is a whole number from 0 to {2**31 - 1}")
        elif key == "visibility":
            if value not in VISIBILITIES:
                raise InvalidArgument(f"visibility is one of {', '.join(VISIBILITIES)}")
        elif key == "protected" and not isinstance(value, bool):
            raise InvalidArgument("protected is true or false")
        out[key] = value
    return out


def _checked_properties(props: Mapping[str, Any], count: int | None = None) -> dict[str, str]:
    if (count if count is not None else len(props)) > MAX_PROPERTIES:
        raise InvalidArgument(f"an image has at most {MAX_PROPERTIES} properties")
    for key, value in props.items():
        if not isinstance(key, str) or not key or len(key) > MAX_PROPERTY_KEY or "\0" in key:
            raise InvalidArgument(f"a property name is 1 to {MAX_PROPERTY_KEY} characters "
                                  "(no NUL)")
        if key in READ_ONLY or key in _FIELDS:
            raise InvalidArgument(f"{key!r} is an attribute, not a property")
        if not isinstance(value, str) or len(value) > MAX_PROPERTY_VALUE or "\0" in value:
            raise InvalidArgument(f"property {key!r} is a string of at most "
                                  f"{MAX_PROPERTY_VALUE} characters (no NUL)")
    return dict(props)

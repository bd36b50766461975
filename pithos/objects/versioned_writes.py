"""Swift's legacy versioned writes (X-Versions-Location, X-History-Location): before an object
of a versioned container is overwritten (or, in history mode, deleted) its current version is
copied into the archive container as `<3-hex length of the name><name>/<timestamp>`; a DELETE
in stack mode puts the newest archived version back in its place.

The container's versioning policy names the mode ("stack" or "history": Pithos keeps its own
history as with "auto" besides) and its metadata the archive container (ARCHIVE_KEY): the
mode rides on the container row every object request loads already, so a container without
it costs nothing more.  An archive copy is a copy of the map (no data moves); it is written
with the authority of the request on the versioned container, as Swift's pre-authorized
requests do, and commits only if the version it names still exists (a concurrent gc spares
it: `put_version(sources=)`)."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING
from urllib.parse import unquote

from pithos.catalog.records import ContainerInfo, ObjectVersion
from pithos.core.errors import NotFound, PreconditionFailed

if TYPE_CHECKING:
    from pithos.objects.service import ObjectService

MODES = ("stack", "history")
# Container metadata key of the archive container's name: no client header maps to a key
# with a colon (X-Container-Meta-* names cannot hold one).
ARCHIVE_KEY = "sysmeta:versions-location"
DELETE_MARKER = "application/x-deleted;swift_versions_deleted=1"
LISTING_PAGE = 10000


def archive_prefix(name: str) -> str:
    return f"{len(name.encode()):03x}{name}/"


def archive_name(name: str, created: float) -> str:
    """Swift's name for the version of `name` made at `created` (Timestamp.internal)."""
    return f"{archive_prefix(name)}{created:016.5f}"


def _archive(objects: ObjectService, container: ContainerInfo) -> ContainerInfo:
    """The archive container of a versioned container; PreconditionFailed when it is gone
    (Swift: the copy into it fails with a client error, 412)."""
    detail = objects.container_detail(container)
    location = unquote(_utf8(detail.meta.get(ARCHIVE_KEY, ""))).split("/")[0]
    archive = objects.catalog.container(container.account_id, location) if location else None
    if archive is None:
        raise PreconditionFailed("the versions container does not exist")
    return archive


def _utf8(value: str) -> str:
    """The header's value as the client meant it: WSGI hands over its bytes as latin-1
    characters (a client may send a UTF-8 name as it is, or percent-encoded)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _copy(objects: ObjectService, src: ObjectVersion, dest: ContainerInfo, name: str,
          modified_by: str | None) -> None:
    with objects.upload_lease():
        objects.copy(src, dest, name, meta=src.meta, content_type=src.content_type,
                     modified_by=modified_by, delete_at=src.delete_at, keep_manifest=True)


def before_write(objects: ObjectService, container: ContainerInfo, name: str,
                 modified_by: str | None) -> None:
    """An object of a versioned container is about to be replaced: its current version, if
    any, archived."""
    current = objects.find_object(container, name)
    if current is not None:
        _copy(objects, current, _archive(objects, container), archive_name(name, current.created),
              modified_by)


def delete(objects: ObjectService, container: ContainerInfo, name: str,
           modified_by: str | None, now: float) -> bool:
    """A DELETE in a versioned container.  History mode: the current version archived, a
    delete marker written beside it; the caller then deletes the object.  Stack mode: the
    newest archived version restored in its place and removed from the archive, in which case
    True is returned (the DELETE is done); False: nothing archived, the caller deletes."""
    if container.versioning == "history":
        archive = _archive(objects, container)
        before_write(objects, container, name, modified_by)
        with objects.upload_lease():
            stored = objects.store(io.BytesIO(b""), 0)
            objects.create(archive, archive_name(name, now), stored, etag=None,
                           content_type=DELETE_MARKER, meta={}, modified_by=modified_by,
                           delete_at=None)
        return False
    try:
        archive = _archive(objects, container)
    except PreconditionFailed:
        return False  # no archive container, nothing to restore: a plain DELETE (as Swift)
    items = iter(objects.list_objects(archive.id, prefix=archive_prefix(name), reverse=True,
                                      limit=LISTING_PAGE))
    for newest in items:
        if newest.content_type == DELETE_MARKER:
            # Left by history mode: the object was deleted then.  If it came back since, the
            # DELETE is of it; else the version before the marker comes back and the marker
            # goes.
            if objects.find_object(container, name) is not None:
                return False
            for older in items:
                if older.content_type == DELETE_MARKER:
                    break
                if _restore(objects, archive, older.name, container, name, modified_by):
                    break
            _drop(objects, archive, newest.name, modified_by)
            return True
        if _restore(objects, archive, newest.name, container, name, modified_by):
            return True
    return False


def _restore(objects: ObjectService, archive: ContainerInfo, archived: str,
             container: ContainerInfo, name: str, modified_by: str | None) -> bool:
    src = objects.find_object(archive, archived)
    if src is None:
        return False
    _copy(objects, src, container, name, modified_by)
    _drop(objects, archive, archived, modified_by)
    return True


def _drop(objects: ObjectService, archive: ContainerInfo, archived: str,
          modified_by: str | None) -> None:
    with contextlib.suppress(NotFound):  # (gone meanwhile: nothing left to drop)
        objects.delete_object(archive, archived, modified_by)

"""What the object service knows of Swift's symlinks (pithos/api/symlink.py makes and follows
them over HTTP): the system metadata that makes a version a link, and the resolution of a link
named where a whole object is read in-process (a segment of a static large object)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from pithos.catalog.records import ContainerInfo, ObjectVersion

if TYPE_CHECKING:
    from pithos.catalog import Catalog

SYMLOOP_MAX = 2
TARGET = "x-object-sysmeta-symlink-target"
ACCOUNT = "x-object-sysmeta-symlink-target-account"
ETAG = "x-object-sysmeta-symlink-target-etag"
BYTES = "x-object-sysmeta-symlink-target-bytes"
# A static link to a static large object: the target's own (quoted) ETag, for listings.
SLO_ETAG = "x-object-sysmeta-symlink-target-slo-etag"


def resolve(catalog: Catalog, account_id: int, version: ObjectVersion,
            may_read: Callable[[ContainerInfo | None], bool]) -> ObjectVersion | None:
    """The object `version` links to, through up to SYMLOOP_MAX links, each target read with
    the caller's rights (`may_read` of its container); `version` itself when it is no link.
    None when a target is missing, unreadable, in another account, or the chain too long, or
    a static link's target has changed."""
    for _ in range(SYMLOOP_MAX + 1):
        meta = version.sys_meta()
        target = meta.get(TARGET)
        if target is None:
            return version
        if meta.get(ACCOUNT):
            return None  # another account's object: followed over HTTP only
        cname, _, oname = unquote(target).partition("/")
        container = catalog.container(account_id, cname)
        if container is None or not may_read(container):
            return None
        found = catalog.object(container.id, oname)
        if found is None or (meta.get(ETAG) and meta[ETAG] != found.etag and
                             not found.slo_manifest):
            return None
        version = found
    return None

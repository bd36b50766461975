"""Deleting many objects in one operation: Swift's bulk delete (a list of
`/container/object` and `/container` paths) and the delete of a static large object with
its segments (`multipart-manifest=delete`), one implementation for both.

Each path is deleted as its own request would be, with the caller's rights; what fails is
listed with its error (never raised), and a path that names nothing counts as not found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pithos.catalog import Catalog, ContainerInfo, ObjectVersion, UserInfo
from pithos.core.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    PithosError,
    Unauthenticated,
)
from pithos.objects.acl import Action
from pithos.objects.authz import Authz
from pithos.objects.names import Limits, check_names

MAX_DELETES_PER_REQUEST = 10000
MAX_FAILED_DELETES = 1000

# What a path's delete may fail with and be listed for; anything else (a full disk, a
# backend down) ends the whole operation.
_LISTED = (Unauthenticated, Forbidden, Conflict, InvalidArgument)


@dataclass
class DeleteResult:
    deleted: int = 0
    not_found: int = 0
    # (path, why) of each path that failed, in order.
    errors: list[tuple[str, PithosError]] = field(default_factory=list)


def limits_info() -> dict[str, int]:
    """The `bulk_delete` section of /info."""
    return {"max_deletes_per_request": MAX_DELETES_PER_REQUEST,
            "max_failed_deletes": MAX_FAILED_DELETES}


class BulkDeletes:
    def __init__(self, catalog: Catalog, authz: Authz, limits: Limits) -> None:
        self.catalog = catalog
        self.authz = authz
        self.limits = limits

    def delete_paths(self, user: UserInfo | None, account: str, paths: Iterable[str],
                     result: DeleteResult | None = None) -> DeleteResult:
        """Delete each `/container/object` (an object) or `/container` (an empty
        container) of `account`, in order, as `user`; stops after MAX_FAILED_DELETES
        failures.  Unauthenticated for an anonymous caller, before anything is deleted."""
        if user is None:
            raise Unauthenticated("authentication required")
        result = result or DeleteResult()
        modified_by = f"{user.account}:{user.name}"
        for path in paths:
            container, _, obj = path.lstrip("/").partition("/")
            try:
                check_names(self.limits, account, container, obj or None)
                if obj:
                    _, c = self.authz.container(user, account, container, Action.OBJECT_WRITE)
                    if self.catalog.delete_object(c.id, obj, modified_by):
                        result.deleted += 1
                    else:
                        result.not_found += 1
                else:
                    _, c = self.authz.container(user, account, container,
                                                Action.CONTAINER_WRITE)
                    self.catalog.delete_container(c.id)
                    result.deleted += 1
            except NotFound:
                result.not_found += 1
            except _LISTED as exc:
                result.errors.append((path, exc))
                if len(result.errors) >= MAX_FAILED_DELETES:
                    break
        return result

    def delete_slo(self, user: UserInfo | None, account: str, container: ContainerInfo,
                   v: ObjectVersion, version_only: bool = False) -> DeleteResult:
        """Delete a static large object's segments (each with `user`'s rights, as
        `delete_paths`), then its manifest `v` in `container` (which the caller may write):
        the object, or with `version_only` that version of it (Swift's ?version-id)."""
        assert v.slo_manifest is not None
        # A segment always names an object: a bare container path among them is nothing.
        # (An inline data segment has no name: nothing to delete but the manifest.)
        paths = [seg["name"] for seg in json.loads(v.slo_manifest) if "name" in seg]
        result = DeleteResult(not_found=sum(1 for p in paths if "/" not in p.lstrip("/")))
        self.delete_paths(user, account, [p for p in paths if "/" in p.lstrip("/")], result)
        modified_by = f"{user.account}:{user.name}" if user else None
        if version_only:
            gone = self.catalog.remove_version(container.id, v.name, v.vid, modified_by)
        else:
            gone = self.catalog.delete_object(container.id, v.name, modified_by)
        if gone:
            result.deleted += 1
        else:
            result.not_found += 1
        return result

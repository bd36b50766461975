"""Swift's legacy versioned writes on containers: X-Versions-Location (stack mode) and
X-History-Location (history mode) set, shown and removed as Swift does; the work on objects
is pithos.objects.versioned_writes'."""

from __future__ import annotations

from typing import Any

import falcon

from pithos.api.errors import HTTPStatusError
from pithos.objects import ContainerInfo
from pithos.objects.versioned_writes import ARCHIVE_KEY, MODES

VERSIONS, HISTORY = "X-Versions-Location", "X-History-Location"


def info() -> dict[str, Any]:
    return {"allowed_flags": [VERSIONS.lower(), HISTORY.lower()]}


def container_policy(req: falcon.Request, policy: dict[str, object],
                     meta: dict[str, str | None]) -> None:
    """A container PUT or POST: X-Versions-Location / X-History-Location (or their
    X-Remove-*) into the versioning policy and the archive container's name."""
    versions, history = req.get_header(VERSIONS), req.get_header(HISTORY)
    if versions is not None and history is not None:
        if not history:
            history = None
        elif versions:
            raise HTTPStatusError(400, f"Only one of {VERSIONS.lower()} or {HISTORY.lower()} "
                                       "may be specified")
        else:
            versions = None
    value = versions if versions is not None else history
    removed = any(req.get_header(h) for h in ("X-Remove-Versions-Location",
                                              "X-Remove-History-Location"))
    if value is None and not removed:
        return
    if not value:
        policy["versioning"] = "auto"
        meta[ARCHIVE_KEY] = None
        return
    if "/" in value.strip("/") or not value.strip("/"):
        raise HTTPStatusError(412, "Container name cannot contain slashes")
    policy["versioning"] = "stack" if versions is not None else "history"
    meta[ARCHIVE_KEY] = value


def container_headers(resp: falcon.Response, c: ContainerInfo) -> None:
    if c.versioning in MODES and c.meta.get(ARCHIVE_KEY):
        resp.set_header(VERSIONS if c.versioning == "stack" else HISTORY, c.meta[ARCHIVE_KEY])


def policy_shown(versioning: str | None) -> str:
    """X-Container-Policy-Versioning: Pithos keeps its history in Swift's modes too."""
    # (Swift's object versioning's modes too: pithos.objects.object_versioning.)
    return "auto" if versioning in MODES or not versioning or versioning.startswith(
        "swift") else versioning

"""Plain records the catalog returns (never SQLAlchemy rows above this package)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserInfo:
    id: int
    account: str
    name: str
    admin: bool


@dataclass(frozen=True)
class AccountInfo:
    id: int
    name: str
    created: float
    containers: int
    objects: int
    bytes: int
    meta: dict[str, str] = field(default_factory=dict)
    quota_bytes: int | None = None
    acl: str | None = None


@dataclass(frozen=True)
class ContainerInfo:
    id: int
    account_id: int
    name: str
    created: float
    objects: int
    bytes: int
    meta: dict[str, str] = field(default_factory=dict)
    read_acl: str | None = None
    write_acl: str | None = None
    versioning: str | None = None
    quota_bytes: int | None = None
    # Whether any X-Object-Sharing entry lives in the container; None when not asked (look).
    has_sharing: bool | None = None


@dataclass(frozen=True)
class ObjectVersion:
    object_id: int
    container_id: int
    name: str
    uuid: str
    version_id: int
    vid: str
    root: bytes | None
    size: int
    etag: str
    content_type: str
    created: float
    modified_by: str | None
    delete_at: float | None
    dlo_manifest: str | None
    slo_manifest: str | None
    meta: dict[str, dict[str, str]] = field(default_factory=dict)  # domain -> key -> value

    def user_meta(self) -> dict[str, str]:
        return self.meta.get("user", {})

    def sys_meta(self) -> dict[str, str]:
        return self.meta.get("sys", {})


@dataclass(frozen=True)
class ListingEntry:
    """One line of a container listing: an object, or a pseudo-directory (`subdir`)."""
    name: str
    size: int = 0
    etag: str = ""
    content_type: str = ""
    created: float = 0.0
    subdir: bool = False

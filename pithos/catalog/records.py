"""Plain records the catalog returns (never SQLAlchemy rows or positional tuples above this
package)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True)
class UserInfo:
    id: int
    account: str
    name: str
    admin: bool
    # The project the user acts in (its token's scope); None: its account's home project.
    project: str | None = None


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
    # X-Container-Policy-Chunking: None (fixed blocks) or "cdc" (pithos.core.cdc).
    chunking: str | None = None


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
    # The content of a small object kept in its row (docs/design.md, "Small objects
    # inline"), None for one stored as blocks; `root` is then its blocks' would-be root.
    inline: bytes | None = None

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
    # An SLO's manifest (None for any other object): Swift lists its MD5 as the hash.
    slo_manifest: str | None = None


# -- small records (NamedTuples: made from a raw row without a copy of its columns) ------------


class AccountAndContainer(NamedTuple):
    """An account and one of its containers by name (`Catalog.account_and_container`): both
    without counters and metadata; None for either that does not exist."""
    account: AccountInfo | None
    container: ContainerInfo | None


class ContainerSummary(NamedTuple):
    """One line of an account listing (`Catalog.list_containers`)."""
    name: str
    objects: int
    bytes: int
    created: float


class CurrentVersion(NamedTuple):
    """The current version of an object and its public token, None if it is unpublished
    (`Catalog.object_and_public_token`)."""
    version: ObjectVersion
    public_token: str | None


class PublicObject(NamedTuple):
    """The current version a public token names, and the id of the account that holds it
    (`Catalog.public_object_and_account`)."""
    version: ObjectVersion
    account_id: int


class VersionSummary(NamedTuple):
    """One retained content version of an object (`Catalog.versions`)."""
    vid: str  # the version id clients see
    created: float
    size: int


class ContainerPolicy(NamedTuple):
    """The quotas of a container and of its account, and the container's versioning policy."""
    quota_bytes: int | None
    account_id: int
    account_quota_bytes: int | None
    versioning: str | None
    # The project its usage is charged to (its own, else its account's home project).
    project_id: str = ""


class Usage(NamedTuple):
    """The bytes a container and its account hold, and their quotas (`Catalog.usage`); both
    byte counts are 0 when neither has a quota (they are not counted then)."""
    container_bytes: int
    container_quota_bytes: int | None
    account_bytes: int
    account_quota_bytes: int | None


class SharingEntry(NamedTuple):
    """An X-Object-Sharing entry of an object or pseudo-directory of a container: who may read
    and who may write (comma-separated accounts, account:group names or `*`)."""
    path: str
    read: str
    write: str


class AccountSharing(NamedTuple):
    """A sharing entry by the account and container that hold it (`Catalog.all_sharing`)."""
    account: str
    container: str
    read: str
    write: str


class UserCredentials(NamedTuple):
    """A user and the hash of its key (`Catalog.user_credentials`)."""
    user: UserInfo
    key_hash: str


class TokenOwner(NamedTuple):
    """The user a token authenticates, and when the token expires (`Catalog.token_user`)."""
    user: UserInfo
    expires: float


class RootsAfter(NamedTuple):
    """The map roots of versions committed after a version id, and the newest id seen
    (`Catalog.roots_after`)."""
    roots: list[bytes]
    newest_version_id: int


class VersionNaming(NamedTuple):
    """A retained version whose map is a given root (`Catalog.versions_naming`)."""
    root: bytes
    account: str
    container: str
    name: str
    version: str  # the version id clients see
    current: bool  # the object's visible version


class InlineContent(NamedTuple):
    """A retained version kept inline, with its content (`Catalog.inline_contents`)."""
    naming: VersionNaming
    data: bytes


class LeaseRow(NamedTuple):
    """A writer lease row (`Catalog.upload_lease_rows`; pithos/catalog/leases.py)."""
    lease_id: int
    started: float  # the start of the oldest writer in flight under the lease


@dataclass(frozen=True)
class Image:
    """An image (pithos/catalog/images.py): metadata over the map `root` (None until its data
    is uploaded), which the image keeps alive.  `owner` is the account's name (the Keystone
    project); `container`/`object` the object its data came from or went to; times are Unix
    seconds."""
    id: str
    owner: str
    name: str
    container: str | None
    object: str | None
    root: bytes | None
    size: int | None
    checksum: str | None
    disk_format: str | None
    container_format: str | None
    min_disk: int
    min_ram: int
    visibility: str
    status: str
    protected: bool
    properties: dict[str, str]
    created_at: float
    updated_at: float
    made_object: bool = False


class ImageMember(NamedTuple):
    """An account an image is shared with (`Catalog.image_members`)."""
    image_id: str
    member: str  # an account name
    status: str  # pending, accepted, rejected
    created_at: float
    updated_at: float


class Expect(NamedTuple):
    """A write's precondition on an object's current version (If-Match / If-None-Match),
    checked inside the write's transaction: PreconditionFailed when it does not hold, and
    nothing is written."""
    match: frozenset[str] | None = None  # If-Match: one of these ETags; {"*"}: any version
    absent: bool = False                 # If-None-Match: *: no visible version


class Change(NamedTuple):
    """One object of the change feed, as it is now (`Catalog.changes`)."""
    seq: int  # its last change's number in the container
    name: str
    deleted: bool
    size: int
    etag: str
    content_type: str
    created: float  # of the current version (of the deletion, for a deleted object)
    vid: str


class ChangePage(NamedTuple):
    """A page of the change feed: the changes after the caller's cursor in change order,
    `last`, the number to continue after, and `more`, whether a next page already exists."""
    changes: list[Change]
    last: int
    more: bool


# -- projects and quotas (pithos/catalog/projects.py) -------------------------------------------

@dataclass(frozen=True)
class Project:
    """A project.  `home`: an account's home project (id and name are the account's name;
    its members are the account's users), which every user acts in unless it asks for
    another."""
    id: str
    name: str
    description: str
    home: bool


class Holding(NamedTuple):
    """A project's holding of one resource: its limit (None: no limit), the usage accepted
    commissions charged and what issued ones may still charge."""
    resource: str
    limit: int | None
    usage: int
    pending: int


@dataclass(frozen=True)
class Commission:
    """An issued commission not yet accepted or rejected: its provisions by resource
    (positive: a charge, negative: a release), and when the reaper rejects it."""
    id: int
    project_id: str
    name: str
    created: float
    expires: float
    provisions: dict[str, int] = field(default_factory=dict)

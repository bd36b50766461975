"""The object service: Swift semantics (containers, objects, large objects, ACLs, sharing,
quotas) over the catalog and the mapper.  The HTTP layer (pithos.api) only translates to and
from it, and takes the catalog's records from here: it never imports the catalog itself."""

from pithos.catalog.records import (
    AccountInfo,
    Change,
    ContainerInfo,
    ContainerSummary,
    Expect,
    ListingEntry,
    ObjectVersion,
    PublicObject,
    UserInfo,
    VersionSummary,
)

__all__ = ["AccountInfo", "Change", "ContainerInfo", "ContainerSummary", "Expect",
           "ListingEntry", "ObjectVersion", "PublicObject", "UserInfo", "VersionSummary"]

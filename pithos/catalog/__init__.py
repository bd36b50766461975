"""The object catalog: accounts, containers, objects, versions, metadata, users and tokens in
SQL (SQLAlchemy Core; SQLite in WAL mode by default, PostgreSQL by URL alone)."""

import os

from pithos.catalog.catalog import Catalog
from pithos.catalog.records import (
    AccountAndContainer,
    AccountInfo,
    AccountSharing,
    Change,
    ChangePage,
    Commission,
    ContainerInfo,
    ContainerPolicy,
    ContainerSummary,
    CurrentVersion,
    Expect,
    Holding,
    Image,
    ImageMember,
    InlineContent,
    LeaseRow,
    ListingEntry,
    ObjectVersion,
    Project,
    PublicObject,
    RootsAfter,
    SharingEntry,
    TokenOwner,
    Usage,
    UserCredentials,
    UserInfo,
    VersionNaming,
    VersionSummary,
)


def local_url(data_dir: str) -> str:
    """The catalog of an embedded data directory: SQLite in the directory."""
    return "sqlite:///" + os.path.abspath(os.path.join(data_dir, "catalog.sqlite"))


__all__ = ["AccountAndContainer", "AccountInfo", "AccountSharing", "Catalog", "Change",
           "ChangePage", "Commission", "ContainerInfo", "ContainerPolicy", "ContainerSummary",
           "CurrentVersion", "Expect", "Holding", "Image", "ImageMember", "InlineContent",
           "LeaseRow", "ListingEntry", "ObjectVersion", "Project", "PublicObject", "RootsAfter",
           "SharingEntry", "TokenOwner", "Usage", "UserCredentials", "UserInfo", "VersionNaming",
           "VersionSummary", "local_url"]

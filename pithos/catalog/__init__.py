"""The object catalog: accounts, containers, objects, versions, metadata, users and tokens in
SQL (SQLAlchemy Core; SQLite in WAL mode by default, PostgreSQL by URL alone)."""

import os

from pithos.catalog.catalog import Catalog
from pithos.catalog.records import (
    AccountInfo,
    ContainerInfo,
    ListingEntry,
    ObjectVersion,
    UserInfo,
)


def local_url(data_dir: str) -> str:
    """The catalog of an embedded data directory: SQLite in the directory."""
    return "sqlite:///" + os.path.abspath(os.path.join(data_dir, "catalog.sqlite"))


__all__ = ["AccountInfo", "Catalog", "ContainerInfo", "ListingEntry", "ObjectVersion",
           "UserInfo", "local_url"]

"""The object catalog: accounts, containers, objects, versions, metadata, users and tokens in
SQL (SQLAlchemy Core; SQLite in WAL mode by default, PostgreSQL by URL alone)."""

from pithos.catalog.catalog import Catalog
from pithos.catalog.records import (
    AccountInfo,
    ContainerInfo,
    ListingEntry,
    ObjectVersion,
    UserInfo,
)

__all__ = ["AccountInfo", "Catalog", "ContainerInfo", "ListingEntry", "ObjectVersion", "UserInfo"]

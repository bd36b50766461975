"""The change feed of a container (GET /v1/{account}/{container}?changes_since=CURSOR), for
sync clients: what changed after a cursor, deletes included, one entry per object with its
state now, in change order, in O(changes) (pithos/catalog/changes.py keeps the numbers).

A cursor is opaque to clients: "0" is the beginning; otherwise "<container tag>.<change
number>", the tag naming the container by its id and creation time (SQLite may give a new
container the id of one deleted), so that a cursor of a container since deleted and made
again under the same name is refused (Gone: start again from "0") rather than silently
skipping changes.
"""

from __future__ import annotations

from typing import NamedTuple

from pithos.catalog import Catalog, Change, ContainerInfo
from pithos.core.errors import Gone, InvalidArgument

MAX_LIMIT = 10000


class Feed(NamedTuple):
    """A page of the change feed: `cursor` to ask for the next, `more` when a next page
    already exists."""
    cursor: str
    more: bool
    changes: list[Change]


def parse_cursor(container: ContainerInfo, cursor: str) -> int:
    """The change number after which `cursor` continues."""
    if cursor == "0":
        return 0
    owner, dot, number = cursor.partition(".")
    if not dot or not (number.isascii() and number.isdigit()) or len(number) > 18:
        raise InvalidArgument("changes_since is 0 or a cursor this server returned")
    if owner != _tag(container):
        raise Gone("the container was deleted and made again since this cursor: list "
                         "from changes_since=0")
    return int(number)


def _tag(container: ContainerInfo) -> str:
    return f"{container.id}x{int(container.created * 1e6):x}"


def feed(catalog: Catalog, container: ContainerInfo, cursor: str, limit: int) -> Feed:
    if not 0 < limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit is 1 to {MAX_LIMIT}")
    page = catalog.changes(container.id, parse_cursor(container, cursor), limit)
    return Feed(f"{_tag(container)}.{page.last}", page.more, page.changes)

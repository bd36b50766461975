"""Swift's object versioning (X-Versions-Enabled) on Pithos's own versions: no hidden
container, no symlinks.  A Swift version is a version row, its id the row's `vid`; Swift's
latest version is the object's current row; a delete marker is a deletion row typed
DELETE_MARKER.

Pithos keeps history in any container ("auto"), so which rows a Swift client sees is a rule
over them, not what is stored.  The container's metadata records when versioning was on
(SPANS_KEY: [start, end] pairs, end None while on):
- a content row made while versioning was on is a version, shown with its id;
- one made while it was off is Swift's "null" version while it is the current one; once a
  versioned write or a delete marker replaced it, it is shown with its id (Swift copies it
  into the versions then); replaced by another unversioned write or deleted while
  versioning was off (a plain deletion row), it is gone for Swift (Pithos still keeps it
  as history, as in any container, until purged);
- a deletion row is a delete marker only when typed DELETE_MARKER (plain deletion rows are
  a DELETE while versioning is off, or of the latest version by its id)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from pithos.catalog.object_versions import VersionRow

ENABLED, SUSPENDED = "swift", "swift-off"  # the container's versioning column
MODES = (ENABLED, SUSPENDED)
SPANS_KEY = "sysmeta:versions-spans"  # (a colon: no client header names such a key)
DELETE_MARKER = "application/x-deleted;swift_versions_deleted=1"
NULL = "null"
MAX_SPANS = 200


def spans(meta: dict[str, str]) -> list[tuple[float, float | None]]:
    try:
        return [(float(a), None if b is None else float(b))
                for a, b in json.loads(meta.get(SPANS_KEY) or "[]")]
    except (ValueError, TypeError):
        return []


def toggled(meta: dict[str, str], enable: bool, now: float) -> str:
    """The spans after versioning is turned on or off at `now`."""
    out = spans(meta)
    is_on = bool(out) and out[-1][1] is None
    if enable and not is_on:
        out.append((now, None))
    elif not enable and is_on:
        out[-1] = (out[-1][0], now)
    # A container toggled without end: the oldest spans merge (rows between them then count
    # as versioned, which only shows more of what is kept).
    while len(out) > MAX_SPANS:
        out[0:2] = [(out[0][0], out[1][1])]
    return json.dumps(out)


def versioned(created: float, on: Sequence[tuple[float, float | None]]) -> bool:
    return any(a <= created and (b is None or created < b) for a, b in on)


class Shown(NamedTuple):
    """A version as Swift lists it."""
    row: VersionRow
    version_id: str


def shown(rows: Sequence[VersionRow], on: Sequence[tuple[float, float | None]]
          ) -> list[Shown]:
    """What Swift shows of one object's rows (given newest first), newest first."""
    out: list[Shown] = []
    newer: VersionRow | None = None
    for r in rows:
        if r.deleted:
            if r.content_type == DELETE_MARKER:
                out.append(Shown(r, r.vid))
        elif versioned(r.created, on):
            out.append(Shown(r, r.vid))
        elif r.current:
            out.append(Shown(r, NULL))
        elif newer is not None and (
                (newer.deleted and newer.content_type == DELETE_MARKER)
                or (not newer.deleted and versioned(newer.created, on))):
            out.append(Shown(r, r.vid))
        newer = r
    return out


def version_id_of(row_vid: str, created: float, is_current: bool,
                  on: Sequence[tuple[float, float | None]]) -> str:
    """The Swift version id of a content version (NULL for the current unversioned one)."""
    return row_vid if versioned(created, on) or not is_current else NULL


def by_object(rows: Sequence[VersionRow]) -> Iterator[list[VersionRow]]:
    group: list[VersionRow] = []
    for r in rows:
        if group and group[0].name != r.name:
            yield group
            group = []
        group.append(r)
    if group:
        yield group


def listing(fetch: Any, on: Sequence[tuple[float, float | None]], *, limit: int,
            prefix: str, marker: str, version_marker: str | None, reverse: bool,
            delimiter: str) -> list[Shown | str]:
    """A versions listing: Shown entries, and pseudo-directories as strings.  `fetch(marker,
    inclusive, objects)`: the catalog's version rows of the next objects."""
    out: list[Shown | str] = []
    page = max(limit, 100)
    cursor, inclusive = marker, version_marker is not None and bool(marker)
    last_subdir = None
    while len(out) < limit:
        rows = fetch(cursor, inclusive, page)
        if not rows:
            break
        for group in by_object(rows):
            name = group[0].name
            cursor, inclusive = name, False
            if delimiter:
                cut = name.find(delimiter, len(prefix))
                if cut >= 0:
                    subdir = name[:cut + len(delimiter)]
                    if subdir != last_subdir and not (marker and (
                            subdir >= marker if reverse else subdir <= marker)):
                        out.append(subdir)
                        last_subdir = subdir
                    if len(out) >= limit:
                        break
                    continue
            entries = shown(group, on)
            if reverse:
                entries.reverse()
            if name == marker and version_marker is not None:
                ids = [e.version_id for e in entries]
                if version_marker in ids:
                    entries = entries[ids.index(version_marker) + 1:]
                elif version_marker != NULL or reverse:
                    # (An id not there: nothing of this object.  "null" with none: before
                    # every version, which all follow; in reverse, after them all.)
                    entries = []
            out.extend(entries[:limit - len(out)])
            if len(out) >= limit:
                break
        if len(rows) < 1 or len({r.name for r in rows}) < page:
            break
    return out

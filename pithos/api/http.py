"""HTTP details shared by the resources: dates, ranges, preconditions, names, metadata."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from pithos.api.errors import HTTPStatusError
from pithos.core import json_text
from pithos.objects import Expect
from pithos.objects.names import Limits

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def http_date(ts: float) -> str:
    """RFC 9110's IMF-fixdate, as email.utils.formatdate(usegmt=True) writes it (which goes
    through a datetime: a few times slower, for every object's Last-Modified).  Swift rounds
    up, so that Last-Modified is never earlier than the X-Timestamp."""
    t = time.gmtime(math.ceil(ts))
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def parse_http_date(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}"


def x_timestamp(ts: float) -> str:
    return f"{ts:016.5f}"


# -- names ---------------------------------------------------------------------------------------

def path_info(env: dict[str, str]) -> str:
    """PATH_INFO as WSGI means it: latin-1 characters carrying the path's bytes.  gunicorn
    reads the request line as latin-1, then percent-decodes it with urllib's unquote_to_bytes,
    which encodes every non-ASCII character as UTF-8 once more: raw UTF-8 in the request line
    (what Swift's clients send for non-ASCII names) would arrive encoded twice.  Such a path is
    taken from the request line itself (RAW_URI)."""
    raw_uri = env.get("RAW_URI", "")
    if raw_uri.isascii():
        return env.get("PATH_INFO", "")
    target = urlsplit(raw_uri).path if "://" in raw_uri[:16] else raw_uri.partition("?")[0]
    return unquote_to_bytes(target.encode("latin-1")).decode("latin-1")


def decode_path(raw: str) -> list[str]:
    """Split a WSGI PATH_INFO (latin-1 characters carrying the decoded bytes) into UTF-8
    segments after /v1: [account, container, object]; 412 for bad UTF-8 or NUL, as Swift."""
    try:
        path = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise HTTPStatusError(412, "Invalid UTF8 or contains NULL") from None
    if "\x00" in path:
        raise HTTPStatusError(412, "Invalid UTF8 or contains NULL")
    parts = path.split("/", 4)  # "", "v1", account, container, object
    return [p for p in parts[2:5]]


def encoded_slash_in_container(raw_uri: str) -> bool:
    """Whether the container segment of the request URI, as the client sent it, holds an
    encoded '/' (%2F): a container name with a slash, which Swift refuses with 400.  PATH_INFO
    has it decoded, where it would read as a path separator."""
    path = urlsplit(raw_uri).path if "://" in raw_uri[:16] else raw_uri.partition("?")[0]
    parts = path.split("/", 4)  # "", "v1", account, container, object
    return len(parts) > 3 and "%2f" in parts[3].lower()


# -- metadata ------------------------------------------------------------------------------------

def meta_from_headers(headers: Mapping[str, str], prefix: str, limits: Limits,
                      allow_remove: bool = True) -> dict[str, str | None]:
    """X-<Kind>-Meta-Name: value -> {name: value}; an empty value or X-Remove-<Kind>-Meta-Name
    -> {name: None} (removal).  Names are case-insensitive (stored lower case)."""
    out: dict[str, str | None] = {}
    remove = "X-REMOVE-" + prefix[2:]
    for key, value in headers.items():
        k = key.upper()
        if k == prefix:
            raise HTTPStatusError(400, "Metadata name cannot be empty")  # as Swift's
        if k.startswith(prefix) and len(k) > len(prefix):
            name = key[len(prefix):].lower()
            out[name] = value or None
        elif allow_remove and k.startswith(remove) and len(k) > len(remove):
            out[key[len(remove):].lower()] = None
    check_meta(out, limits)
    return out


def _wire_length(text: str) -> int:
    """Bytes of a header as the client sent it: WSGI hands header values over as latin-1
    characters, one per byte (a UTF-8 "é" arrives as two characters)."""
    try:
        return len(text.encode("latin-1"))
    except UnicodeEncodeError:
        return len(text.encode())


def utf8_header(text: str) -> str:
    """A header value as the text the client meant: WSGI hands over latin-1 characters, one
    per byte, and Swift's clients send UTF-8 (a value that is not UTF-8 is kept as it is)."""
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def check_meta(meta: Mapping[str, str | None], limits: Limits) -> None:
    """Swift's limits, counted in bytes as sent."""
    total = 0
    for name, value in meta.items():
        if _wire_length(name) > limits.max_meta_name_length:
            raise HTTPStatusError(400, f"Metadata name too long: {name[:40]}...; max "
                                       f"{limits.max_meta_name_length}")
        if value is not None and _wire_length(value) > limits.max_meta_value_length:
            raise HTTPStatusError(400, f"Metadata value longer than "
                                       f"{limits.max_meta_value_length}: {name}")
        total += _wire_length(name) + _wire_length(value or "")
    if len([v for v in meta.values() if v is not None]) > limits.max_meta_count:
        raise HTTPStatusError(400, f"Too many metadata items; max {limits.max_meta_count}")
    if total > limits.max_meta_overall_size:
        raise HTTPStatusError(400, f"Total metadata too large; max "
                                   f"{limits.max_meta_overall_size}")


def check_meta_update(current: Mapping[str, str], update: Mapping[str, str | None],
                      limits: Limits) -> None:
    """Swift's limits on what an account's or container's metadata becomes after a POST of
    `update` (a None value removes a key): the request alone may fit and the sum not."""
    merged = dict(current)
    for name, value in update.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    total = sum(_wire_length(k) + _wire_length(v) for k, v in merged.items())
    if total > limits.max_meta_overall_size:
        raise HTTPStatusError(400, f"Total metadata too large; max "
                                   f"{limits.max_meta_overall_size}")
    if len(merged) > limits.max_meta_count:
        raise HTTPStatusError(400, f"Too many metadata items; max {limits.max_meta_count}")


def meta_headers(prefix: str, meta: Mapping[str, str]) -> dict[str, str]:
    return {f"{prefix}{name.title()}": value for name, value in meta.items()}


# -- ranges --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of a Range header; None when there is no usable header (serve the
    whole object, as Swift does for a malformed one); 416 when nothing is satisfiable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    ranges: list[ByteRange] = []
    parsed = 0
    # A suffix range of an empty object asks for "up to the last N bytes": the whole (empty)
    # object, with 200, as Swift (and Apache, nginx) answer.
    whole = False
    for part in spec.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        if not dash:
            return None
        try:
            if first == "":
                if last == "":
                    return None
                n = int(last)
                parsed += 1
                if n > 0 and size > 0:
                    ranges.append(ByteRange(max(size - n, 0), size - 1))
                whole = whole or (n > 0 and size == 0)
                continue
            start = int(first)
            end = int(last) if last else size - 1
        except ValueError:
            return None
        if start < 0 or (last and end < start):
            return None
        parsed += 1
        if start < size:
            ranges.append(ByteRange(start, min(end, size - 1)))
    if parsed > 100:
        raise HTTPStatusError(400, "too many ranges")
    if not ranges and whole:
        return None
    if not ranges or _egregious(ranges):
        raise HTTPStatusError(416, "Requested Range Not Satisfiable",
                              {"Content-Range": f"bytes */{size}"})
    return ranges


# Swift's bounds on a multipart range request (swob, after RFC 7233 6.1: many overlapping or
# out-of-order ranges multiply what one request costs): more is refused with 416.
MAX_RANGES = 50
MAX_RANGE_OVERLAPS = 2
MAX_NONASCENDING_RANGES = 8


def _egregious(ranges: list[ByteRange]) -> bool:
    """Whether a set of satisfiable ranges passes Swift's bounds (its very comparisons: ends
    exclusive, a range overlapping another only when an end falls strictly inside it)."""
    if len(ranges) > MAX_RANGES:
        return True
    spans = [(r.start, r.end + 1) for r in ranges]
    overlaps = 0
    for i, (start1, end1) in enumerate(spans):
        for start2, end2 in spans[i + 1:]:
            if start1 < start2 < end1 or start1 < end2 < end1 or \
                    start2 < start1 < end2 or start2 < end1 < end2:
                overlaps += 1
                if overlaps > MAX_RANGE_OVERLAPS:
                    return True
    ascending = all(a <= b for a, b in itertools.pairwise(spans))
    return not ascending and len(spans) >= MAX_NONASCENDING_RANGES


# -- preconditions -------------------------------------------------------------------------------

def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def write_expect(if_match: str | None, if_none_match: str | None) -> Expect | None:
    """The precondition of a write (PUT, POST of metadata, DELETE, a move's target) from its
    If-Match and If-None-Match, for the object service to check in the write's transaction;
    None without either.  A write's If-None-Match takes only "*" (as Swift's: 400)."""
    if if_match is None and if_none_match is None:
        return None
    if if_none_match is not None and if_none_match.strip() != "*":
        raise HTTPStatusError(400, "If-None-Match on a write takes only '*'")
    match = None
    if if_match is not None:
        match = frozenset(_etags(if_match))
        if not match:
            raise HTTPStatusError(400, "If-Match names no ETag")
    return Expect(match=match, absent=if_none_match is not None)


def check_preconditions(headers: Mapping[str, str], etag: str, last_modified: float,
                        method: str) -> int | None:
    """RFC 7232 order, but for If-Unmodified-Since, which Swift checks even beside an If-Match
    that matched (its clients' tests expect that 412).  Returns 304 or 412 when a
    precondition decides the answer, else None."""
    modified = math.ceil(last_modified)
    if_match = headers.get("IF-MATCH")
    if if_match is not None:
        tags = _etags(if_match)
        if "*" not in tags and etag not in tags:
            return 412
    ius = parse_http_date(headers.get("IF-UNMODIFIED-SINCE"))
    if ius is not None and modified > ius:
        return 412
    inm = headers.get("IF-NONE-MATCH")
    if inm is not None:
        tags = _etags(inm)
        if "*" in tags or etag in tags:
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD"):
        ims = parse_http_date(headers.get("IF-MODIFIED-SINCE"))
        if ims is not None and modified <= ims:
            return 304
    return None


def json_body(req: Any, limit: int) -> Any:
    """The request's body parsed as JSON (`{}` when empty), read only up to `limit` bytes:
    413 past it (a declared length is refused before anything is read), 400 when it is not
    JSON or nests too deep to parse."""
    length = req.content_length
    too_large = HTTPStatusError(413, f"a JSON body is at most {limit} bytes")
    if length is not None and length > limit:
        raise too_large
    data = req.bounded_stream.read(limit + 1)
    if len(data) > limit:
        raise too_large
    try:
        return json_text.loads(data or b"{}")
    except (ValueError, RecursionError):
        raise HTTPStatusError(400, "the body is not valid JSON text") from None

"""The remote side: an HTTP client of one container (Swift v1 with the Pithos extensions).

Only HTTP: tempauth v1.0 login, the change feed (`?changes_since=`), hashmaps (`GET/PUT
?hashmap`), `POST ?missing` and `?blocks`, ranged GETs, conditional PUT/DELETE and server-side
moves.  Every write is conditional: `If-Match` the ETag last seen, or `If-None-Match: *` for a
new name; a failed precondition is `PreconditionFailed` (the caller re-plans that path).
Bytes sent and received are counted (`sent_bytes`, `received_bytes`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3

from pithos.core.binary_hashes import (
    HASHES_TYPE,
    HASHMAP_FORMAT,
    pack_hashes,
    pack_hashmap,
    unpack_hashes,
)
from pithos.sync.state import Chunk, RemoteEntry, chunk_hashes, chunk_lengths

MISSING_BATCH = 20000  # hashes per POST ?missing (the server takes 32,768 at most)
RETRIES = 4  # for 5xx and dropped connections, with backoff
# Hash lists and hashmaps (hex) deflate to about 57% at any level (so at level 1).  Chunk
# batches up to DEFLATE_FINE_MAX are deflated at level 6 (an edit's few chunks: every byte
# counts), up to DEFLATE_MAX at level 1 (a small new file's: level 6 there was still ~18%
# of the client's CPU on the sync bench's first sync), bigger ones go as they are (a first
# sync's: deflating them, even at level 1, was ~1.5 of the client's 3.9 s for 487 MB).
DEFLATE_FINE_MAX = 256 << 10
DEFLATE_MAX = 1 << 20
# A link that takes uncompressed chunk batches (of at least RATE_MIN_BODY bytes, timed while
# the request is sent: the socket's buffers, then the link and the server's reading pace it)
# at this rate or faster is not worth deflating for: level 1 deflates text at ~100-200 MB/s
# here and sends ~35% of it, so it pays only below ~0.65 of that.  (Timed to the answer, the
# server's storing and commit counted too, a busy server looked like a slow link, and
# deflating for it made the client and the server busier still: zlib was 10% of the
# client's CPU in a loaded first sync.)  On the sync bench's first sync over loopback, deflating
# small text files was ~9% of the client's CPU (and inflating a share of the server's), for
# bytes the link carried at several hundred MB/s.  Until a batch has been timed, compressible
# chunks are deflated (an edit's few chunks: every byte counts).
FAST_LINK_BYTES_S = 64e6
RATE_MIN_BODY = 1 << 20


class RemoteError(Exception):
    """The server refused or failed a request; `status` 0 when it could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class PreconditionFailed(RemoteError):
    """If-Match / If-None-Match failed: the remote changed since we looked (412)."""


class NotFoundRemote(RemoteError):
    pass


class ContentChanged(RemoteError):
    """The bytes sent are not those the ETag promised: the file changed while sent."""


class CursorGone(RemoteError):
    """The change feed no longer knows our cursor (410): read it again from the start."""


class MissingBlocks(RemoteError):
    """A hashmap PUT named blocks the server lacks (409): send them and retry."""

    def __init__(self, hashes: list[bytes]) -> None:
        super().__init__(f"{len(hashes)} block(s) missing", 409)
        self.hashes = hashes


@dataclass(frozen=True)
class Credentials:
    auth_url: str
    user: str
    key: str


@dataclass(frozen=True)
class Change:
    """One entry of the change feed (or of a full listing)."""
    path: str
    deleted: bool
    entry: RemoteEntry | None


@dataclass(frozen=True)
class ChangePage:
    changes: list[Change]
    cursor: str | None  # None: the server has no feed, `changes` is a full listing
    more: bool


@dataclass(frozen=True)
class FileRanges:
    """A request body read by the kernel from an open file (sendfile), never copied through
    this process: the byte ranges (offset, length) of `fd`, back to back."""
    fd: int
    ranges: Sequence[tuple[int, int]]

    def size(self) -> int:
        return sum(n for _, n in self.ranges)


# A request body of ranges of several files, back to back (a batch of chunks of several).
Parts = tuple[FileRanges, ...]


def _size(body: bytes | bytearray | memoryview | FileRanges | Parts) -> int:
    if isinstance(body, FileRanges):
        return body.size()
    if isinstance(body, tuple):
        return sum(p.size() for p in body)
    return memoryview(body).nbytes


class FileShrank(Exception):
    """A FileRanges body ended early: the file is shorter than a range (changed meanwhile);
    the request was abandoned (its connection closed) before the server could act on it."""


@dataclass(frozen=True)
class _Answer:
    """What the lean transport gives back: the status, the headers, the whole body."""
    status: int
    headers: http.client.HTTPMessage
    data: bytes
    send_s: float  # the time the request took to send (its head and body)


@dataclass(frozen=True)
class RemoteMap:
    etag: str
    size: int
    chunks: list[Chunk]


def _quote(name: str) -> str:
    return quote(name, safe="/")


class Remote:
    def __init__(self, creds: Credentials, container: str, timeout_s: float = 120.0) -> None:
        self.creds = creds
        self.container = container
        # Connections kept: one per upload worker (pithos.sync.engine) and one more.
        self.http = urllib3.PoolManager(
            num_pools=2, maxsize=10, retries=False,
            timeout=urllib3.Timeout(connect=min(timeout_s, 30.0), read=timeout_s))
        self.storage_url = ""
        self.token = ""
        self.sent_bytes = 0
        self.received_bytes = 0
        self._count_lock = threading.Lock()
        self._description: dict[str, Any] | None = None
        self._link_rate: float | None = None  # bytes/s of uncompressed batches (EWMA)
        self.timeout_s = timeout_s
        self._lean_local = threading.local()  # each thread's connection (`lean`)
        self.cdc = False  # the container cuts plain PUTs as this client does (ensure_container)

    # -- plumbing ------------------------------------------------------------------------------

    def login(self) -> None:
        try:
            r = self.http.request("GET", self.creds.auth_url,
                                  headers={"X-Auth-User": self.creds.user,
                                           "X-Auth-Key": self.creds.key})
        except urllib3.exceptions.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.creds.auth_url}: {_reason(exc)}") from None
        if r.status in (401, 403):
            raise RemoteError(f"login refused for {self.creds.user} at {self.creds.auth_url}",
                              r.status)
        if r.status >= 300 or "X-Storage-Url" not in r.headers:
            raise RemoteError(f"login failed at {self.creds.auth_url}: HTTP {r.status}",
                              r.status)
        self.storage_url = r.headers["X-Storage-Url"].rstrip("/")
        self.token = r.headers["X-Auth-Token"]

    def _url(self, name: str | None) -> str:
        base = f"{self.storage_url}/{_quote(self.container)}"
        return base if name is None else f"{base}/{_quote(name)}"

    def request(self, method: str, name: str | None, *, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None,
                body: bytes | bytearray | memoryview | Iterable[bytes] | None = None,
                stream: bool = False,
                ok: Sequence[int] = (200, 201, 202, 204), retries: int = RETRIES
                ) -> urllib3.BaseHTTPResponse:
        """One request, logged in (again on a 401), retried on 5xx and dropped connections;
        412 is PreconditionFailed, 404 NotFoundRemote, other statuses outside `ok`
        RemoteError with the server's reason."""
        if not self.token:
            self.login()
        url = self._url(name)
        if query:
            url += "?" + "&".join(f"{k}={quote(v, safe='')}" if v else k
                                  for k, v in query.items())
        relogged = False
        for attempt in range(retries + 1):
            h = {"X-Auth-Token": self.token, **(headers or {})}
            try:
                # (A bytearray or memoryview is sent as it is, with its length: urllib3
                # takes any buffer, though its annotation names bytes.)
                r = self.http.request(method, url, headers=h, body=body,  # type: ignore[arg-type]
                                      preload_content=not stream)
            except urllib3.exceptions.HTTPError as exc:
                if attempt == retries:
                    raise RemoteError(f"{method} {name or self.container}: {_reason(exc)}"
                                      ) from None
                time.sleep(min(0.2 * 2 ** attempt, 5))
                continue
            if isinstance(body, (bytes, bytearray, memoryview)):
                with self._count_lock:  # (several upload workers)
                    self.sent_bytes += len(body)
            if r.status == 401 and not relogged and retries:
                relogged = True
                _drain(r)
                self.login()
                continue
            if r.status >= 500 and r.status != 507 and attempt < retries:
                _drain(r)
                time.sleep(min(0.2 * 2 ** attempt, 5))
                continue
            if r.status in ok:
                if not stream:
                    self.received_bytes += len(r.data)
                return r
            _refuse(f"{method} {name or self.container}", r.status, _drain(r))
        raise AssertionError("unreachable")

    def lean(self, method: str, name: str | None, *, query: dict[str, str] | None = None,
             headers: dict[str, str] | None = None,
             body: bytes | bytearray | memoryview | FileRanges | Parts = b"",
             ok: Sequence[int] = (200, 201, 202, 204)) -> _Answer:
        """`request` for the upload's requests (?missing, ?blocks, hashmap and small PUTs,
        a thousand of them a GB): on this thread's own keep-alive http.client connection,
        without urllib3's pool, URL parsing, retry objects and header dicts per request
        (~20% of the client's time holding the GIL on the sync bench's first sync).  A
        FileRanges body (or several, Parts) goes by sendfile; FileShrank if a file ends
        early.  The same
        retries, login and errors as `request`; the whole answer is read."""
        if not self.token:
            self.login()
        path = urlsplit(self._url(name)).path
        if query:
            path += "?" + "&".join(f"{k}={quote(v, safe='')}" if v else k
                                   for k, v in query.items())
        size = _size(body)
        relogged = False
        for attempt in range(RETRIES + 1):
            conn = self._lean_conn()
            try:
                started = time.monotonic()
                conn.putrequest(method, path, skip_accept_encoding=True)
                conn.putheader("X-Auth-Token", self.token)
                for k, v in (headers or {}).items():
                    conn.putheader(k, v)
                conn.putheader("Content-Length", str(size))
                if isinstance(body, FileRanges):
                    conn.endheaders()
                    _sendfile(conn, body)
                elif isinstance(body, tuple):
                    conn.endheaders()
                    for part in body:
                        _sendfile(conn, part)
                else:
                    conn.endheaders(body if size else None)
                send_s = time.monotonic() - started
                r = conn.getresponse()
                data = r.read()
            except FileShrank:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if attempt == RETRIES:
                    raise RemoteError(f"{method} {name or self.container}: {exc}") from None
                time.sleep(min(0.2 * 2 ** attempt, 5))
                continue
            with self._count_lock:  # (several upload workers)
                self.sent_bytes += size
                self.received_bytes += len(data)
            if r.status == 401 and not relogged:
                relogged = True
                self.login()
                continue
            if r.status >= 500 and r.status != 507 and attempt < RETRIES:
                time.sleep(min(0.2 * 2 ** attempt, 5))
                continue
            if r.status in ok:
                return _Answer(r.status, r.headers, data, send_s)
            _refuse(f"{method} {name or self.container}", r.status,
                    data.decode("utf-8", "replace"))
        raise AssertionError("unreachable")

    def _lean_conn(self) -> http.client.HTTPConnection:
        """This thread's connection to the storage URL's host (made on first use, and
        again after a login moved the storage URL)."""
        local = self._lean_local
        where = urlsplit(self.storage_url)
        conn: http.client.HTTPConnection | None = getattr(local, "conn", None)
        if conn is None or getattr(local, "netloc", None) != where.netloc:
            if conn is not None:
                conn.close()
            host, port = where.hostname or "", where.port
            if where.scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout_s,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout_s)
            local.conn, local.netloc = conn, where.netloc
        return conn

    # -- the container -------------------------------------------------------------------------

    def ensure_container(self) -> None:
        """Create the container if absent, CDC-chunked (X-Container-Policy-Chunking: cdc),
        so the server cuts a plain PUT of a small file as this client does.  (Reads the API
        description too, before upload workers share this client.)"""
        self.inflates()
        try:
            r = self.request("HEAD", None)
            self.cdc = r.headers.get("X-Container-Policy-Chunking") == "cdc"
        except NotFoundRemote:
            self.request("PUT", None, headers={"X-Container-Policy-Chunking": "cdc"},
                         ok=(201, 202))
            self.cdc = True

    def put_object(self, name: str, data: bytes | Iterable[bytes], md5: str,
                   if_match: str | None, content_type: str | None = None,
                   size: int | None = None) -> str:
        """A plain conditional PUT; `data` is bytes, or pieces adding up to `size` bytes
        (sent once: no retry).  The server checks the content against `md5` (422 if it
        differs: ContentChanged)."""
        h = {"ETag": md5, "Content-Type": content_type or "application/octet-stream"}
        h.update(_condition(if_match))
        if not isinstance(data, bytes):
            h["Content-Length"] = str(size)
        try:
            r: urllib3.BaseHTTPResponse | _Answer = (
                self.lean("PUT", name, body=data, headers=h, ok=(201,))
                if isinstance(data, bytes) else
                self.request("PUT", name, body=data, headers=h, ok=(201,), retries=0))
        except RemoteError as exc:
            if exc.status == 422:
                raise ContentChanged(f"PUT {name}: the content is not what was hashed",
                                     422) from None
            raise
        if not isinstance(data, bytes):
            with self._count_lock:
                self.sent_bytes += size or 0
        return r.headers.get("ETag", md5).strip('"')

    def changes(self, cursor: str, limit: int = 1000) -> Iterator[ChangePage]:
        """The change feed from `cursor` ("0": from the start), page by page.  A server
        without the feed answers a plain listing: then one page per listing page, with
        cursor None (the caller replaces its mirror)."""
        try:
            r = self.request("GET", None, query={"changes_since": cursor,
                                                 "limit": str(limit), "format": "json"},
                             ok=(200,))
        except RemoteError as exc:
            if exc.status == 410:  # the container was deleted and made again since
                raise CursorGone(str(exc), 410) from None
            raise
        doc = json.loads(r.data)
        if isinstance(doc, list):
            yield from self._listing(doc)
            return
        while True:
            yield ChangePage([_change(c) for c in doc["changes"]], str(doc["cursor"]),
                             bool(doc.get("more")))
            if not doc.get("more"):
                return
            r = self.request("GET", None, query={"changes_since": str(doc["cursor"]),
                                                 "limit": str(limit), "format": "json"})
            doc = json.loads(r.data)

    def _listing(self, first: list[dict[str, Any]]) -> Iterator[ChangePage]:
        page = first
        while True:
            changes = [_change(c) for c in page if "name" in c]
            more = bool(page)
            if more:
                marker = page[-1]["name"]
                page = json.loads(self.request("GET", None, query={
                    "format": "json", "marker": marker}).data)
                more = bool(page)
            yield ChangePage(changes, None, more)
            if not more:
                return

    # -- reading -------------------------------------------------------------------------------

    def hashmap(self, name: str) -> RemoteMap:
        """The current version's chunk list (every page of it) and its ETag."""
        chunks: list[Chunk] = []
        marker = 0
        etag = None
        from pithos.core.hashing import from_hex

        while True:
            q = {"hashmap": "", "format": "json"}
            if marker:
                q["marker"] = str(marker)
            h: dict[str, str] = {"If-Match": etag} if etag else {}
            r = self.request("GET", name, query=q, headers=h)
            page_etag = r.headers.get("ETag", "").strip('"')
            if etag is None:
                etag = page_etag
            doc = json.loads(r.data)
            hashes = [from_hex(x) for x in doc["hashes"]]
            lengths = doc.get("lengths")
            if lengths is None:
                bs = int(doc["block_size"])
                last = "next" not in doc
                size = int(doc["bytes"])
                lengths = [bs] * len(hashes)
                if last and hashes:
                    lengths[-1] = size - (len(chunks) + len(hashes) - 1) * bs
            chunks.extend(Chunk(h, int(n)) for h, n in zip(hashes, lengths, strict=True))
            if "next" not in doc:
                return RemoteMap(etag, int(doc["bytes"]), chunks)
            marker = int(doc["next"])

    def get_range(self, name: str, etag: str, start: int, end: int
                  ) -> urllib3.BaseHTTPResponse:
        """Bytes [start, end) of the version `etag` (412 if it is no longer current), as a
        stream the caller reads and releases."""
        r = self.request("GET", name, headers={"Range": f"bytes={start}-{end - 1}",
                                               "If-Match": etag},
                         stream=True, ok=(200, 206))
        if r.status == 200 and (start != 0 or end != int(r.headers.get("Content-Length", -1))):
            _drain(r)
            raise RemoteError(f"GET {name}: the server ignored the range", 200)
        return r

    # -- writing -------------------------------------------------------------------------------

    def missing(self, hashes: Sequence[bytes]) -> set[bytes]:
        """Which of these chunks the server wants sent (lacks, or we may not name)."""
        from pithos.core.hashing import from_hex, to_hex

        wanted: set[bytes] = set()
        unique = list(dict.fromkeys(hashes))
        binary = self.binary_hashes()
        for i in range(0, len(unique), MISSING_BATCH):
            batch = unique[i:i + MISSING_BATCH]
            if binary:  # raw hashes: nothing to gain by deflating them
                r = self.lean("POST", None, query={"missing": ""},
                                 body=pack_hashes(batch), headers={"Content-Type": HASHES_TYPE})
                try:
                    wanted.update(unpack_hashes(r.data))
                except ValueError as exc:
                    raise RemoteError(f"POST ?missing: {exc}", r.status) from None
                continue
            body = json.dumps([to_hex(h) for h in batch]).encode()
            h = {"Content-Type": "application/json"}
            r = self.lean("POST", None, query={"missing": ""}, body=self._deflate(body, h),
                             headers=h)
            wanted.update(from_hex(h) for h in json.loads(r.data))
        return wanted

    def put_blocks(self, body: bytes | bytearray | memoryview | FileRanges | Parts,
                   lengths: Sequence[int], compress: bool = False) -> list[bytes]:
        """Send chunks (`body`: chunks of these lengths back to back, in memory or ranges of
        files sent by the kernel) as blocks of their own lengths (one request), deflated if
        `compress` (the caller found them compressible; a buffer only) and the server takes
        it; returns the hashes the server found for them, in order (the caller checks them
        against its own).  FileShrank if the file ends before a range does."""
        from pithos.core.hashing import from_hex

        h = {"Content-Type": "application/octet-stream",
             "X-Block-Lengths": ",".join(map(str, lengths))}
        size = _size(body)
        if compress and not isinstance(body, (FileRanges, tuple)) and size <= DEFLATE_MAX:
            body = self._deflate(body, h, 6 if size <= DEFLATE_FINE_MAX else 1)
        r = self.lean("POST", None, query={"blocks": ""}, body=body, headers=h)
        if "Content-Encoding" not in h and size >= RATE_MIN_BODY:
            self.note_rate(size, r.send_s)
        try:
            return [from_hex(x) for x in json.loads(r.data)]
        except (ValueError, TypeError):
            raise RemoteError("POST ?blocks: the answer is not a list of hashes", r.status
                              ) from None

    def note_rate(self, size: int, seconds: float) -> None:
        """An uncompressed batch of `size` bytes took `seconds` to send."""
        rate = size / max(seconds, 1e-6)
        with self._count_lock:  # (upload workers note at once)
            old = self._link_rate
            self._link_rate = rate if old is None else 0.7 * old + 0.3 * rate

    def fast_link(self) -> bool:
        """Whether uncompressed chunk batches have gone at FAST_LINK_BYTES_S or faster (on
        average, lately): then deflating compressible ones costs more than it saves."""
        rate = self._link_rate
        return rate is not None and rate >= FAST_LINK_BYTES_S

    def _deflate(self, body: bytes | bytearray | memoryview, headers: dict[str, str],
                 level: int = 1) -> bytes | bytearray | memoryview:
        """`body` deflated (Content-Encoding: deflate added to `headers`) if the server
        inflates request bodies of the block operations, else as it is.  Level 1 unless
        told: hex hash lists deflate to 57.6% at level 1 and 56.3% at level 6, which took
        four times as long (1.9 s for the 4 MB of a GB's hashmap on this VM)."""
        if not self.inflates():
            return body
        headers["Content-Encoding"] = "deflate"
        return zlib.compress(body, level)

    def put_hashmap(self, name: str, size: int, chunks: Sequence[Chunk], md5: str,
                    if_match: str | None, content_type: str | None = None) -> str:
        """Create the new version from chunks the server holds: If-Match `if_match`, or
        If-None-Match: * when None.  Returns the new ETag."""
        from pithos.core.hashing import HASH_NAME, to_hex

        h = {"ETag": md5, "Content-Type": content_type or "application/octet-stream"}
        h.update(_condition(if_match))
        if self.binary_hashes():
            # (Binary: hashes and lengths as they are, the size their sum.)
            body: bytes | bytearray | memoryview = pack_hashmap(
                chunk_hashes(chunks), chunk_lengths(chunks))
            query = {"hashmap": "", "format": HASHMAP_FORMAT}
        else:
            doc = {"bytes": size, "block_hash": HASH_NAME,
                   "hashes": [to_hex(h) for h in chunk_hashes(chunks)],
                   "lengths": chunk_lengths(chunks)}
            body = self._deflate(json.dumps(doc, separators=(",", ":")).encode(), h)
            query = {"hashmap": ""}
        r = self.lean("PUT", name, query=query, body=body, headers=h, ok=(201,))
        return r.headers.get("ETag", md5).strip('"')

    def delete(self, name: str, if_match: str) -> None:
        with contextlib.suppress(NotFoundRemote):  # gone already: what we wanted
            self.request("DELETE", name, headers={"If-Match": if_match})

    def binary_hashes(self) -> bool:
        """Whether the server takes hash lists and hashmaps in their binary forms
        (pithos.core.binary_hashes), as its API description says: a request body of
        HASHES_TYPE on the container's POST."""
        self._described("/v1/{account}/{container}", "post")  # (reads the description)
        assert self._description is not None
        op = self._description.get("paths", {}).get("/v1/{account}/{container}", {}).get(
            "post", {})
        body = op.get("requestBody", {})
        return isinstance(body, dict) and HASHES_TYPE in body.get("content", {})

    def _described(self, path: str, method: str) -> set[str]:
        """The header parameters the server's API description (GET /openapi.json, served
        without a token; read once) names for an operation; empty if it has none."""
        if self._description is None:
            if not self.token:
                self.login()
            root = self.storage_url.split("/v1/")[0]
            self._description = {}
            with contextlib.suppress(urllib3.exceptions.HTTPError, ValueError):
                r = self.http.request("GET", f"{root}/openapi.json")
                if r.status == 200:
                    self._description = json.loads(r.data)
        op = self._description.get("paths", {}).get(path, {}).get(method, {})
        return {p.get("name", "") for p in op.get("parameters", [])
                if isinstance(p, dict) and p.get("in") == "header"}

    def supports_move(self) -> bool:
        """Whether the server moves objects (PUT with X-Move-From), as its API description
        says."""
        return "X-Move-From" in self._described("/v1/{account}/{container}/{object}", "put")

    def inflates(self) -> bool:
        """Whether the server takes the block operations' bodies compressed
        (Content-Encoding on POST ?blocks / ?missing), as its API description says."""
        return "Content-Encoding" in self._described("/v1/{account}/{container}", "post")

    def move(self, src: str, dst: str, src_etag: str) -> str:
        """Rename `src` (if still at `src_etag`) to the new name `dst` (if still free) on the
        server, moving no data: the target appears and the source goes in one transaction.
        Returns the new ETag.  PreconditionFailed if either side changed."""
        try:
            r = self.request("PUT", dst, body=b"", headers={
                "X-Move-From": f"/{_quote(self.container)}/{_quote(src)}",
                "X-Source-If-Match": src_etag, "If-None-Match": "*"}, ok=(201,))
        except RemoteError as exc:
            if exc.status == 409:  # the source changed while the server read it
                raise PreconditionFailed(f"move {src}: it changed meanwhile", 409) from None
            raise
        return r.headers.get("ETag", src_etag).strip('"')

    def copy(self, src: str, dst: str, src_etag: str) -> str:
        """Copy `src` (if still at `src_etag`) to the new name `dst` (if still free) on the
        server, naming the source's map: no data moves.  Returns the new ETag.
        PreconditionFailed if either side changed (the source gone too)."""
        try:
            r = self.request("PUT", dst, body=b"", headers={
                "X-Copy-From": f"/{_quote(self.container)}/{_quote(src)}",
                "X-Source-If-Match": src_etag, "If-None-Match": "*"}, ok=(201,))
        except NotFoundRemote:
            raise PreconditionFailed(f"copy {src}: it is gone", 404) from None
        except RemoteError as exc:
            if exc.status == 409:  # the source changed while the server read it
                raise PreconditionFailed(f"copy {src}: it changed meanwhile", 409) from None
            raise
        return r.headers.get("ETag", src_etag).strip('"')


def _refuse(what: str, status: int, text: str) -> None:
    """Raise the error a status outside the request's `ok` means."""
    if status == 412:
        raise PreconditionFailed(f"{what}: precondition failed", 412)
    if status == 404:
        raise NotFoundRemote(f"{what}: not found", 404)
    if status == 409 and text.startswith("["):
        from pithos.core.hashing import from_hex

        raise MissingBlocks([from_hex(h) for h in json.loads(text)])
    raise RemoteError(f"{what}: HTTP {status} {text.strip()[:200]}", status)


def _sendfile(conn: http.client.HTTPConnection, body: FileRanges) -> None:
    """Send the ranges of the file on the connection's socket, by the kernel (no copy here
    for a plain socket).  FileShrank if the file ends before a range does."""
    assert conn.sock is not None
    with os.fdopen(body.fd, "rb", buffering=0, closefd=False) as f:
        for offset, n in body.ranges:
            if n and conn.sock.sendfile(f, offset, n) != n:
                raise FileShrank(f"the file ends before {offset + n}")


def _condition(if_match: str | None) -> dict[str, str]:
    return {"If-Match": if_match} if if_match else {"If-None-Match": "*"}


def _change(c: dict[str, Any]) -> Change:
    name = str(c["name"])
    if c.get("deleted"):
        return Change(name, True, None)
    return Change(name, False, RemoteEntry(
        name, int(c.get("bytes", 0)), str(c.get("hash", "")).strip('"'),
        str(c.get("content_type", "")), str(c.get("version", ""))))


def _drain(r: urllib3.BaseHTTPResponse) -> str:
    try:
        data = r.data
    except urllib3.exceptions.HTTPError:
        data = b""
    r.release_conn()
    return data.decode("utf-8", "replace") if data else ""


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


def host_of(url: str) -> str:
    return urlsplit(url).netloc

"""Request bodies sent compressed to the Pithos block operations.

`POST ?blocks`, `POST ?missing` and `PUT ?hashmap` take `Content-Encoding: gzip` or `deflate`
(a zlib stream, as HTTP's "deflate" is): a sync client sends its hashmaps (hex hashes, about
half their size deflated) and its compressible chunks (text, logs, the zero remainders of an
image) that way.  Only these operations: on a plain object PUT, Content-Encoding is the
object's own metadata (Swift stores it and serves the bytes as they came), never undone here.

The inflated size has a hard bound per operation, checked as the body is inflated, never
after: a few KB that inflate to gigabytes (a zip bomb) get 413 once the bound is passed, the
rest of the body unread and the connection closed after the answer.  Bad compressed data is
400.  Each read inflates at most 1 MiB, so the event loop is held briefly.
"""

from __future__ import annotations

import zlib
from typing import Any

from pithos.api.body import refuse_body
from pithos.api.errors import HTTPStatusError

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
RAW_PIECE = 64 * 1024
OUT_PIECE = 1 << 20
# POST ?missing asks about this many hashes at most (the sync client asks 20,000 at a time):
# its look-ups run on the worker's loop, so a list of half a million held every other
# request of the worker for seconds.  Its body is read up to the JSON of that many (as
# uncompressed; 68 bytes a hash with its quotes, comma and a space), a binary one then
# counted.  ?blocks without X-Block-Lengths reads at most BLOCKS_INFLATED_MAX (with them,
# their sum), a client's batch being ~8 MiB.
MISSING_HASHES_MAX = 32768
MISSING_BODY_MAX = 70 * MISSING_HASHES_MAX
BLOCKS_INFLATED_MAX = 64 * 1024 * 1024


def read_bounded(stream: Any, length: int | None, bound: int, what: str) -> bytes:
    """A whole request body of at most `bound` bytes, else 413 ("`what` too large"): a body
    past the bound is refused whole, never taken for its first part.  `length`: the
    declared length of an uncoded body (None: chunked or coded), read as it is, not with a
    read of the bound, which would first make a buffer of the bound for every request."""
    if length is not None and length > bound:
        raise HTTPStatusError(413, f"{what} too large")
    data: bytes = stream.read(bound + 1 if length is None else length)
    if len(data) > bound:
        raise HTTPStatusError(413, f"{what} too large")
    return data


def encoding(value: str | None, env: dict[str, Any]) -> str | None:
    """The body's Content-Encoding (`value`) for the block operations: None (identity),
    "gzip" or "deflate"; 415 for any other (the body left unread)."""
    value = (value or "").strip().lower()
    if value in ("", "identity"):
        return None
    if value not in WBITS:
        refuse_body(env)
        raise HTTPStatusError(415, f"Content-Encoding {value!r}: only gzip or deflate here")
    return value


class Inflating:
    """A file-like reader of the inflated body (read(n) only): at most `limit` bytes, else
    413; 400 if the data is not `how` (gzip or deflate) or ends before its stream does."""

    def __init__(self, raw: Any, how: str, limit: int, env: dict[str, Any]) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(WBITS[how])
        self._limit = limit
        self._env = env
        self._out = b""
        self.count = 0  # inflated bytes handed out
        self._done = False

    def _fail(self, status: int, message: str) -> HTTPStatusError:
        refuse_body(self._env)
        return HTTPStatusError(status, message)

    def _more(self, want: int) -> bytes:
        """The next inflated bytes (at most `want`, b"" at the end of the stream)."""
        z = self._z
        while not self._done:
            if z.unconsumed_tail:
                data = z.unconsumed_tail
            else:
                data = self._raw.read(RAW_PIECE)
                if not data:
                    if not z.eof:
                        raise self._fail(400, "the compressed body ends before its stream")
                    self._done = True
                    break
            try:
                out = z.decompress(data, want)
            except zlib.error:
                raise self._fail(400, "the body is not valid compressed data") from None
            if z.eof:
                if z.unused_data or self._raw.read(1):
                    raise self._fail(400, "data after the end of the compressed stream")
                self._done = True
            if out:
                self.count += len(out)
                if self.count > self._limit:
                    raise self._fail(413, f"the inflated body is larger than {self._limit} "
                                          "bytes")
                return out
        return b""

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._out]
            self._out = b""
            while piece := self._more(OUT_PIECE):
                parts.append(piece)
            return b"".join(parts)
        while len(self._out) < n and not self._done:
            piece = self._more(max(n - len(self._out), 1))
            if not piece:
                break
            self._out += piece
        out, self._out = self._out[:n], self._out[n:]
        return out

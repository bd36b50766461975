"""The request head of `pithos serve`'s worker: a plain request parsed by two regex matches,
anything else by gunicorn's own parser, unchanged.

gunicorn's Python parser takes each request line and header apart one by one (a decode, a
split, a token match, a strip and a value match per header, `urllib.parse.urlsplit` for the
target): about a tenth of a worker's CPU for a 4 KiB GET.  Most requests are plain: an
upper-case method, an origin-form target, HTTP/1.0 or 1.1, well-formed header lines, all of it
in the first read from the socket.  For those, one match of the request line and one of the
header block give the same method, target, path, query, version and (upper-cased) header
list that gunicorn's parser gives, and each header goes through gunicorn's own header policy
(`Expect`, a repeated `Host` or `Content-Type`, names with `_`, the forwarding headers).

Everything else goes to gunicorn's parser with the bytes read so far put back first: a head
that did not come whole in one read (so any wait for more, and its limits, are gunicorn's), a
target that is not a plain path (`*`, absolute form, `//`, a fragment, a control character or
space), another HTTP version, a header line that is not `token: value` (folding, a space
before the colon, a control character), a head longer than the line or field limits, more
headers than allowed, PROXY protocol.  So bad input gets gunicorn's answer, the same as
before, and the fast path never accepts what gunicorn would refuse (tests/test_serve_parse.py
checks both parsers against each other).  Request lines are decoded as latin-1 as gunicorn
decodes them: raw UTF-8 in a name arrives as it did.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Upper-case letters only: passes gunicorn's method checks whatever its settings (no lower
# case, no '#', 3 to 20 characters).  The target: origin form only, not starting with "//"
# (which gunicorn splits otherwise), no fragment, no space or control character; over it
# urlsplit gives path = before the first '?', query = after.
_REQUEST_LINE = re.compile(
    r"([A-Z]{3,20}) (/(?!/)[^\x00-\x20\x7f#]*) HTTP/1\.([01])\r\n")
# A field line as gunicorn's parse_headers reads it: a token name right before the colon,
# a value of no control character but tab, stripped of spaces and tabs at both ends.
_FIELDS = re.compile(rf"(?:{_TOKEN}:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_FIELD = re.compile(rf"({_TOKEN}):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\r\n")


class SwiftRequest(Request):  # type: ignore[misc]
    """gunicorn's request, whose head is parsed by parse_plain when it is plain."""

    def parse(self, unreader: Any) -> bytes:
        buf = bytearray()
        self.read_into(unreader, buf, stop=True)
        rest = None
        if self.cfg.proxy_protocol == "off":
            rest = self.parse_plain(bytes(buf))
        if rest is None:
            # gunicorn's parse, from the first byte: it reads what was put back first.
            unreader.unread(bytes(buf))
            return bytes(super().parse(unreader))
        return rest

    def parse_plain(self, data: bytes) -> bytes | None:
        """The bytes after the head when `data` holds a whole plain head (its fields set
        as gunicorn's parser sets them), else None with nothing set."""
        end = data.find(b"\r\n\r\n")
        limit = min(self.limit_request_line, self.limit_request_field_size)
        if end < 0 or not 0 < end < limit:
            return None
        head = data[: end + 2].decode("latin-1")
        line = _REQUEST_LINE.match(head)
        if line is None:
            return None
        start = line.end()
        if _FIELDS.fullmatch(head, start) is None:
            return None
        fields = _FIELD.findall(head, start)
        if len(fields) > self.limit_request_fields:
            return None
        method, uri, minor = line.groups()
        self.method = method.upper() if self.cfg.casefold_http_method else method
        self.uri = uri
        self.path, _, self.query = uri.partition("?")
        self.fragment = ""
        self.version = (1, int(minor))
        # gunicorn's policy for each header, as its parse_headers applies it.
        scheme_state = [False]
        seen: set[str] = set()
        secure_scheme_headers, forwarder_headers = self._peer_trusted_for_forwarded()
        apply = self._apply_header_policy
        headers = []
        for name, value in fields:
            kept = apply(name.upper(), value, scheme_state, seen, secure_scheme_headers,
                         forwarder_headers)
            if kept is not None:
                headers.append(kept)
        self.headers = headers
        return data[end + 4 :]


class SwiftRequestParser(RequestParser):  # type: ignore[misc]
    mesg_class = SwiftRequest


def supported() -> bool:
    """Whether this gunicorn's request has what parse_plain calls (gunicorn 26's header
    policy and reads; pyproject allows gunicorn 22 and later, whose parser is left alone)."""
    return all(hasattr(Request, name) for name in (
        "_apply_header_policy", "_peer_trusted_for_forwarded", "read_into"))

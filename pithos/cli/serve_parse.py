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

from gunicorn.http import message
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.message import Message, Request
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


# Upper-case header names gunicorn's header policy leaves alone (no singleton, no Expect, no
# '_', no scheme header of the settings' secure_scheme_headers): kept as they are, with no
# call per header.  Per that setting's value (a reload makes new workers; tests new configs).
INERT_MAX = 4096
_inert: list[Any] = [None, {}]  # [the secure_scheme_headers they were found for, name -> bool]


def _inert_names(secure_scheme_headers: Any) -> dict[str, bool]:
    if _inert[0] is not secure_scheme_headers:
        _inert[:] = [secure_scheme_headers, {}]
    return _inert[1]  # type: ignore[no-any-return]


class SwiftRequest(Request):  # type: ignore[misc]
    """gunicorn's request, whose head is parsed by parse_plain when it is plain."""

    # A plain head's answers, found once (None: gunicorn's methods decide): whether its
    # headers and version close the connection, whether it names a body at all.
    _close_by_head: bool | None = None
    _bodiless = False

    def should_close(self) -> bool:
        if self._close_by_head is None:
            return bool(super().should_close())
        return self.must_close or self._close_by_head

    def set_body_reader(self) -> None:
        if self._bodiless:
            # (What gunicorn's makes of a request with neither Content-Length nor
            # Transfer-Encoding: an EOF reader, replaced by an empty length reader.)
            self.body = Body(LengthReader(self.unreader, 0))
            return
        super().set_body_reader()

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
        # gunicorn's policy for each header, as its parse_headers applies it (a name it
        # leaves alone, as it does, without the call).
        scheme_state = [False]
        seen: set[str] = set()
        policy: tuple[Any, Any] | None = None
        apply = self._apply_header_policy
        secure = self.cfg.secure_scheme_headers
        inert = _inert_names(secure)
        headers = []
        bodiless = True
        for name, value in fields:
            name = name.upper()
            if inert.get(name):
                headers.append((name, value))
                continue
            if policy is None:  # (the peer's trust: asked once, for the first other name)
                policy = self._peer_trusted_for_forwarded()
            kept = apply(name, value, scheme_state, seen, policy[0], policy[1])
            if kept is not None:
                headers.append(kept)
            if name in ("CONTENT-LENGTH", "TRANSFER-ENCODING"):
                bodiless = False
            elif name not in inert and len(inert) < INERT_MAX:
                inert[name] = (name not in message.RFC9110_5_3_SINGLETON_FIELDS
                               and name != "EXPECT" and "_" not in name
                               and name not in secure)
        self.headers = headers
        self._bodiless = bodiless
        self._close_by_head = bool(Message.should_close(self))
        return data[end + 4 :]


class SwiftRequestParser(RequestParser):  # type: ignore[misc]
    mesg_class = SwiftRequest

    def finish_body(self, deadline: Any = None, max_bytes: Any = None) -> bool:
        # Nothing left of the last body (a GET's, or one read whole): nothing to drain.
        # (gunicorn's reads the empty length reader once more, with the socket's timeout
        # asked and set back.)
        body = getattr(self.mesg, "body", None)
        if deadline is None and type(body) is Body and type(body.reader) is LengthReader \
                and body.reader.length == 0 and body.buf.tell() == 0:
            return True
        return bool(super().finish_body(deadline, max_bytes))


def supported() -> bool:
    """Whether this gunicorn's request has what parse_plain calls (gunicorn 26's header
    policy and reads; pyproject allows gunicorn 22 and later, whose parser is left alone)."""
    return all(hasattr(Request, name) for name in (
        "_apply_header_policy", "_peer_trusted_for_forwarded", "read_into"))

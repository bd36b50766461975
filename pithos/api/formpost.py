"""Swift's form uploads (the `formpost` middleware of a Swift proxy): a browser POSTs a
multipart/form-data form to /v1/ACCOUNT/CONTAINER[/PREFIX] with the fields `redirect`,
`max_file_size`, `max_file_count`, `expires` and `signature` (the HMAC of
"PATH\\nREDIRECT\\nMAX_FILE_SIZE\\nMAX_FILE_COUNT\\nEXPIRES" under one of the account's or
the container's Temp-URL keys; hex or ALGO:BASE64, as a temporary URL's), then its files;
each file becomes the object PREFIX + its file name, written as a `ScopedUser` of that one
container.  Optional fields: x_delete_at, x_delete_after, content-type.  The answer is Swift's:
303 to `redirect` with ?status=&message=, or the status as text; 401 "FormPost: Invalid
Signature" / "Form Expired"; 400 "FormPost: ..." for a bad form.

Parsing is bounded: the body is read as a stream in 64 KiB pieces (each read waits for the
client at most the client timeout); a preamble, a part's headers, a field's value, the number
of fields and every file (max_file_size) have limits, past which the form is refused with 400
and no more of it is read.  A file goes straight into the block store; a file refused
(too large, no right) leaves no object.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from email.parser import HeaderParser
from typing import Any, BinaryIO
from urllib.parse import quote

import falcon

from pithos.api import tempurl
from pithos.api.body import refuse_body
from pithos.api.context import Services
from pithos.api.errors import REASONS, status_of
from pithos.api.http import decode_path, path_info
from pithos.api.paths import account_name
from pithos.core.errors import PithosError
from pithos.objects import names
from pithos.objects.acl import Action, ScopedUser

PIECE = 65536
MAX_PREAMBLE = 65536
MAX_PART_HEADERS = 16384
MAX_VALUE_LENGTH = 4096  # Swift's: a longer value is cut to this
MAX_VALUE_READ = 65536  # and a value longer than this ends the form
MAX_FIELDS = 64
FIELDS = ("redirect", "max_file_size", "max_file_count", "expires", "signature")


class FormInvalid(Exception):
    pass


class FormUnauthorized(Exception):
    pass


def info() -> dict[str, list[str]]:
    return {"allowed_digests": list(tempurl.ALLOWED_DIGESTS),
            "deprecated_digests": list(tempurl.DEPRECATED_DIGESTS)}


def boundary_of(req: falcon.Request) -> bytes | None:
    """The boundary of a multipart/form-data POST (None: not a form)."""
    kind, _, rest = (req.content_type or "").partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in rest.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    return None


class _Parts:
    """The parts of a multipart body, read as a stream with bounded buffers."""

    def __init__(self, stream: BinaryIO, boundary: bytes) -> None:
        self.stream = stream
        self.delim = b"\r\n--" + boundary
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(PIECE)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def start(self) -> None:
        """Past the first boundary line."""
        first = self.delim[2:]
        while True:
            at = self.buf.find(first)
            if at >= 0 and (at == 0 or self.buf[at - 2:at] == b"\r\n"):
                self.buf = self.buf[at + len(first):]
                return
            if len(self.buf) > MAX_PREAMBLE or not self._fill():
                raise FormInvalid("invalid starting boundary")

    def next_headers(self) -> dict[str, str] | None:
        """The next part's headers, or None after the closing boundary."""
        while len(self.buf) < 2 and self._fill():
            pass
        if self.buf.startswith(b"--"):
            return None
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_PART_HEADERS or not self._fill():
                raise FormInvalid("invalid part headers")
        head = self.buf[:end].lstrip(b"\r\n")
        self.buf = self.buf[end + 4:]
        parsed = HeaderParser().parsestr(head.decode("latin-1"))
        return {k.lower(): v for k, v in parsed.items()}

    def read(self, n: int = PIECE) -> bytes:
        """Up to `n` bytes of the current part's body; b"" at its end (the buffer then
        starts with the delimiter)."""
        while True:
            at = self.buf.find(self.delim)
            if at >= 0:
                out, self.buf = self.buf[:min(at, n)], self.buf[min(at, n):]
                return out
            # What may be the start of a delimiter stays in the buffer.
            safe = len(self.buf) - (len(self.delim) - 1)
            if safe > 0:
                out, self.buf = self.buf[:min(n, safe)], self.buf[min(n, safe):]
                return out
            if not self._fill():
                raise FormInvalid("the form ends inside a part")

    def skip(self) -> None:
        """Past the rest of the current part and the delimiter after it."""
        while self.read():
            pass
        self.buf = self.buf[len(self.delim):]


class _Capped:
    """A file's bytes, refused past max_file_size."""

    def __init__(self, parts: _Parts, limit: int) -> None:
        self.parts, self.limit, self.size = parts, limit, 0

    def read(self, n: int = PIECE) -> bytes:
        data = self.parts.read(PIECE if n < 0 else max(1, min(n, PIECE)))
        self.size += len(data)
        if self.size > self.limit:
            raise FormInvalid("max_file_size exceeded")
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _content_disposition(value: str) -> tuple[str, dict[str, str]]:
    parsed = HeaderParser().parsestr(f"Content-Disposition: {value}\n\n")
    params = {k.lower(): v for k, v in (parsed.get_params(header="content-disposition")
                                         or [])[1:]}
    return (parsed.get_content_disposition() or ""), params


class FormPost:
    def __init__(self, services: Services) -> None:
        self.services = services

    def handle(self, req: falcon.Request, resp: falcon.Response, boundary: bytes) -> None:
        try:
            status, message, redirect, finished = self._translate(req, boundary)
        except (FormUnauthorized, FormInvalid) as exc:
            # What is left of the form is not read (it may never end): the connection closes
            # after the answer.
            refuse_body(req.env)
            unauthorized = isinstance(exc, FormUnauthorized)
            resp.status = falcon.HTTP_401 if unauthorized else falcon.HTTP_400
            resp.content_type = "text/plain; charset=utf-8"
            resp.text = f"FormPost: {str(exc).title() if unauthorized else exc}"
            return
        if not finished:
            refuse_body(req.env)
        if not redirect:
            body = status + (f"\r\nFormPost: {message.title()}" if message else "")
            resp.status = status
            resp.content_type = "text/plain"
            resp.text = body
            return
        location = redirect + ("&" if "?" in redirect else "?") + \
            f"status={quote(status[:3])}&message={quote(message)}"
        resp.status = falcon.HTTP_303
        resp.set_header("Location", location)
        resp.content_type = "text/html; charset=UTF-8"
        resp.text = (f'<html><body><p><a href="{location}">Click to continue...</a></p>'
                     "</body></html>")

    def _translate(self, req: falcon.Request, boundary: bytes
                   ) -> tuple[str, str, str, bool]:
        """(status, message, redirect, whether the whole form was read)."""
        raw = path_info(req.env)
        segments = decode_path(raw)
        account, container = account_name(segments[0]), segments[1]
        path = raw.encode("latin-1").decode("utf-8")
        parts = _Parts(req.stream, boundary)  # type: ignore[arg-type]
        parts.start()
        attributes: dict[str, str] = {}
        status = message = ""
        files = fields = 0
        finished = False
        while True:
            headers = parts.next_headers()
            if headers is None:
                finished = True
                break
            disposition, params = _content_disposition(headers.get("content-disposition", ""))
            if disposition == "form-data" and params.get("filename"):
                files += 1
                try:
                    if files > int(attributes.get("max_file_count") or 0):
                        status, message = "400 Bad Request", "max file count exceeded"
                        break
                except ValueError:
                    raise FormInvalid("max_file_count not an integer") from None
                status = self._file(req, parts, path, account, container, params["filename"],
                                    headers, attributes)
                if not status.startswith("2"):
                    break  # (the rest of the file unread: the connection will close)
                parts.skip()
                continue
            fields += 1
            if fields > MAX_FIELDS:
                raise FormInvalid("too many form fields")
            value = b""
            while chunk := parts.read():
                value += chunk
                if len(value) > MAX_VALUE_READ:
                    raise FormInvalid("a form field is too long")
            parts.skip()
            if "name" in params:
                text = value[:MAX_VALUE_LENGTH].decode("utf-8", "replace")
                # (Swift's rstrip("\r\n--"): any of those characters at the end.)
                attributes[params["name"].lower()] = text.rstrip("\r\n-")
        if not status:
            status, message = "400 Bad Request", "no files to process"
        return status, message, attributes.get("redirect", ""), finished

    def _check(self, path: str, attributes: dict[str, str], account: str,
               container: str) -> ScopedUser:
        try:
            if int(attributes.get("expires") or 0) < time.time():
                raise FormUnauthorized("form expired")
        except ValueError:
            raise FormInvalid("expired not an integer") from None
        message = "\n".join([path, attributes.get("redirect") or "",
                             attributes.get("max_file_size") or "0",
                             attributes.get("max_file_count") or "0",
                             attributes.get("expires") or "0"]).encode()
        try:
            algo, given = tempurl.parse_signature(attributes.get("signature", ""))
        except ValueError:
            raise FormUnauthorized("invalid signature") from None
        keys = self.services.objects.tempurl.keys(account, container)
        ok = False
        for key in keys:
            mac = hmac.new(tempurl.key_bytes(key.key), message, getattr(hashlib, algo))
            ok |= hmac.compare_digest(mac.digest(), given)
        if not ok:
            raise FormUnauthorized("invalid signature")
        return ScopedUser(0, account, ".wsgi.formpost", True, container=container)

    def _file(self, req: falcon.Request, parts: _Parts, path: str, account: str,
              container: str, filename: str, headers: dict[str, str],
              attributes: dict[str, str]) -> str:
        """Store one file; its status line."""
        try:
            max_size = int(attributes.get("max_file_size") or 0)
        except ValueError:
            raise FormInvalid("max_file_size not an integer") from None
        user = self._check(path, attributes, account, container)
        prefix = path.split("/", 4)[4] if path.count("/") >= 4 else ""
        name = prefix + filename
        delete_at: float | None = None
        for field, kind in (("x_delete_at", "Unix timestamp"),
                            ("x_delete_after", "Number of seconds")):
            if field in attributes:
                try:
                    int(attributes[field])
                except ValueError:
                    raise FormInvalid(f"{field} not an integer: {kind} required.") from None
        delete_at = names.delete_at(attributes.get("x_delete_at"),
                                    attributes.get("x_delete_after"), time.time())
        content_type = attributes.get("content-type") or headers.get("content-type") or \
            "application/octet-stream"
        objects = self.services.objects
        try:
            names.check_names(self.services.limits, account, container, name)
            _, c, _ = objects.authz.object_access(user, account, container, name,
                                                  Action.OBJECT_WRITE)
            with objects.upload_lease():
                stored = objects.store(_Capped(parts, max_size), None,  # type: ignore[arg-type]
                                       chunking=c.chunking)
                objects.create(c, name, stored, etag=None, content_type=content_type,
                               meta={"user": {}, "sys": {}}, modified_by=".wsgi.formpost",
                               delete_at=delete_at, uploader=user)
        except PithosError as exc:
            code = status_of(exc)
            return f"{code} {REASONS.get(code, '')}"
        return "201 Created"

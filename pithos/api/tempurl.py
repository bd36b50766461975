"""Swift's temporary URLs (the `tempurl` middleware of a Swift proxy): a request to
/v1/ACCOUNT/CONTAINER/OBJECT with `temp_url_sig` and `temp_url_expires` (and optionally
`temp_url_prefix`, `temp_url_ip_range`, `filename`, `inline`) is let in without a token when
the signature is the HMAC of "METHOD\\nEXPIRES\\nPATH" (with "ip=RANGE\\n" before it when a
range is given) under one of the account's or the container's Temp-URL keys.  It then acts
as a `ScopedUser` of that account (an account key) or container (a container key): objects
only, never another account or container, never keys, ACLs or sharing.  Every refusal is the
same 401 ("Temp URL invalid"), whatever failed, so that a caller learns nothing about keys.

Signatures: hex SHA-1/256/512 (by length) or "ALGO:BASE64" (standard or URL-safe, padded or
not).  Expiry: a UNIX time or ISO 8601 ("2026-12-06T10:00:00Z").  A HEAD is let in by a GET,
PUT or POST signature too; `temp_url_prefix` signs "prefix:/v1/a/c/PREFIX" for every object
under it.  Other query parameters are dropped (a signature does not sign them), as are
X-Timestamp and X-Open-Expired; PUT/POST/DELETE naming another object (X-Copy-From,
X-Object-Manifest, X-Symlink-Target, and the Pithos headers that do the same: X-Move-From,
X-Source-Object, or set rights: X-Object-Sharing, X-Object-Public) answer 400.  Responses
lose X-Object-Meta-* but X-Object-Meta-Public-*, and a GET's carries Content-Disposition
and Expires.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import time
from ipaddress import ip_address, ip_network
from typing import Any
from urllib.parse import quote

import falcon

from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import decode_path, path_info
from pithos.api.paths import account_name
from pithos.objects.tempurl import KEY_NAMES, SigningKey

METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
DIGESTS = {40: "sha1", 64: "sha256", 128: "sha512"}  # hex length -> algorithm
ALLOWED_DIGESTS = ("sha1", "sha256", "sha512")
DEPRECATED_DIGESTS = ("sha1",)
ISO8601 = "%Y-%m-%dT%H:%M:%SZ"
# Swift's lists, and the Pithos headers that would do what Swift's do (name another object,
# or change who may read one).
DISALLOWED_HEADERS = ("X-Object-Manifest", "X-Symlink-Target", "X-Copy-From",
                      "X-Move-From", "X-Source-Object", "X-Object-Sharing", "X-Object-Public")
# The symlink layer (pithos.api.symlink) runs before this one and turns X-Symlink-Target into
# its system metadata, which no client can send (pithos.api.subrequest.Gatekeeper).
TRANSLATED = {"X-Object-Sysmeta-Symlink-Target": "X-Symlink-Target"}
INCOMING_REMOVE = ("x-timestamp", "x-open-expired")
OUTGOING_REMOVE = "x-object-meta-"
OUTGOING_ALLOW = "x-object-meta-public-"
INVALID = "401 Unauthorized: Temp URL invalid\n"
# Where a signed request's scope waits for the requests made on its behalf (pithos.api.subrequest
# copies the caller's environment).
ENV_KEY = "pithos.tempurl"
KEPT_PARAMS = ("temp_url_sig", "temp_url_expires", "temp_url_prefix", "filename", "inline")


def info() -> dict[str, Any]:
    """/info's "tempurl", with the keys Swift's middleware registers."""
    return {"methods": list(METHODS), "incoming_remove_headers": list(INCOMING_REMOVE),
            "incoming_allow_headers": [], "outgoing_remove_headers": ["x-object-meta-*"],
            "outgoing_allow_headers": ["x-object-meta-public-*"],
            "allowed_digests": list(ALLOWED_DIGESTS),
            "deprecated_digests": list(DEPRECATED_DIGESTS)}


def visible_meta(meta: dict[str, str], owner: bool) -> dict[str, str]:
    """Account or container metadata as `owner` (an account admin) or anyone else may see
    it: the Temp-URL keys are the owner's secrets (an ACL reader does not see them)."""
    if owner or not any(k.lower() in KEY_NAMES for k in meta):
        return meta
    return {k: v for k, v in meta.items() if k.lower() not in KEY_NAMES}


def parse_expires(text: str) -> int:
    """The expiry as a UNIX time; 0 when unreadable or past (both refused)."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = calendar.timegm(time.strptime(text, ISO8601))
        except ValueError:
            return 0
    return value if value >= time.time() else 0


def parse_signature(text: str) -> tuple[str, bytes]:
    """(algorithm, raw digest); ValueError for anything else."""
    if ":" in text:
        algo, _, value = text.partition(":")
        if ("-" in value or "_" in value) and not ("+" in value or "/" in value):
            value = value.replace("-", "+").replace("_", "/")
        value = value.rstrip("=")
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    else:
        raw = binascii.unhexlify(text)
        algo = DIGESTS.get(len(text), "")
    if algo not in ALLOWED_DIGESTS or len(raw) != hashlib.new(algo).digest_size:
        raise ValueError("bad signature")
    return algo, raw


def signature(key: str, method: str, expires: int, path: str, algo: str,
              ip_range: str | None = None) -> bytes:
    """The HMAC a URL carries, as Swift's (swift.common.digest.get_hmac)."""
    message = f"{method}\n{expires}\n{path}"
    if ip_range:
        message = f"ip={ip_range}\n{message}"
    return hmac.new(key_bytes(key), message.encode(), algo).digest()


def key_bytes(key: str) -> bytes:
    """A key as the client sent it: metadata keeps header values as WSGI hands them over
    (latin-1 characters, one per byte of the UTF-8 sent)."""
    try:
        return key.encode("latin-1")
    except UnicodeEncodeError:
        return key.encode()


def disposition(kind: str, filename: str) -> str:
    return f"{kind}; filename=\"{quote(filename, safe=' /')}\"; filename*=UTF-8''{quote(filename)}"


def _invalid(req: falcon.Request, resp: falcon.Response) -> None:
    """Turn an answer the URL may not have into Swift's 401, made afresh: nothing of what
    the handler prepared (a container's metadata, counts) goes out with it."""
    for name in list(resp.headers):
        if name.lower() not in ("x-trans-id", "x-openstack-request-id"):
            resp.delete_header(name)
    resp.status = falcon.HTTP_401
    resp.content_type = "text/plain; charset=utf-8"
    resp.text = INVALID if req.method != "HEAD" else None
    resp.stream = None


class TempURLMiddleware:
    """Falcon middleware, after the token's: a signed request gets its ScopedUser on
    `req.context.user` (and `req.context.tempurl` set), a badly signed one 401."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.tempurl = None
        inherited = req.env.get(ENV_KEY)
        if inherited is not None:
            # A request a middleware layer makes on behalf of a signed one (a symlink's
            # target): the same scope, checked again by every authorization below.
            req.context.tempurl, req.context.user = inherited
            return
        # The cheap test first: every request passes here.
        if "temp_url_" not in req.query_string or req.method == "OPTIONS" \
                or not req.path.startswith("/v1/"):
            return
        params = req.params
        sig, expires_text = params.get("temp_url_sig"), params.get("temp_url_expires")
        if sig is None and expires_text is None:
            return
        self._check(req, sig, expires_text)

    def _check(self, req: falcon.Request, sig: Any, expires_text: Any) -> None:
        params = req.params
        prefix, ip_range = params.get("temp_url_prefix"), params.get("temp_url_ip_range")
        if not (isinstance(sig, str) and isinstance(expires_text, str)
                and isinstance(prefix, str | None) and isinstance(ip_range, str | None)):
            raise HTTPStatusError(401, INVALID)  # one missing, or given twice
        expires = parse_expires(expires_text)
        if not sig or not expires or req.method not in METHODS:
            raise HTTPStatusError(401, INVALID)
        try:
            algo, given = parse_signature(sig)
        except (ValueError, binascii.Error):
            raise HTTPStatusError(401, INVALID) from None
        segments = decode_path(path_info(req.env))
        parts = [*segments, "", ""]
        account, container, obj = parts[0], parts[1], parts[2]
        # A container's root only for a GET/HEAD with an empty prefix (a static web listing).
        root = req.method in ("GET", "HEAD") and prefix == "" and len(segments) >= 2
        if len(segments) < 2 or not account or not container or not (obj or root):
            raise HTTPStatusError(401, INVALID)
        if ip_range:
            try:
                if ip_address(req.remote_addr) not in ip_network(ip_range):
                    raise ValueError
            except ValueError:
                raise HTTPStatusError(401, INVALID) from None
        if prefix is None:
            signed = f"/v1/{account}/{container}/{obj}"
        elif obj.startswith(prefix):
            signed = f"prefix:/v1/{account}/{container}/{prefix}"
        else:
            raise HTTPStatusError(401, INVALID)
        methods = ("HEAD", "GET", "POST", "PUT") if req.method == "HEAD" else (req.method,)
        keys = self.services.objects.tempurl.keys(account_name(account), container)
        match: SigningKey | None = None
        for key in keys:
            for method in methods:
                # compare_digest: the time taken says nothing about how much of it matched.
                if hmac.compare_digest(given, signature(key.key, method, expires, signed, algo,
                                                        ip_range)):
                    match = match or key
        if match is None:
            raise HTTPStatusError(401, INVALID)
        if req.method not in ("GET", "HEAD"):
            for header in (*DISALLOWED_HEADERS, *TRANSLATED):
                if req.get_header(header) is not None:
                    header = TRANSLATED.get(header, header)
                    raise HTTPStatusError(400, f"The header {header!r} is not allowed in this "
                                               "tempurl")
        for name in INCOMING_REMOVE:
            req.env.pop("HTTP_" + name.upper().replace("-", "_"), None)
        # What the signature does not cover does not reach the handlers (?version=,
        # ?multipart-manifest=, ?hashmap ...): only the URL's own parameters remain.
        kept = {k: v for k, v in params.items() if k in KEPT_PARAMS}
        req._params = kept  # (falcon parsed them before any middleware ran)
        req.context.tempurl = (match, expires, not obj)
        req.context.user = self.services.objects.tempurl.user(account_name(account), match)
        # Not a header: only code in this process sets it, never a client.
        req.env[ENV_KEY] = (req.context.tempurl, req.context.user)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        found = getattr(req.context, "tempurl", None)
        if found is None:
            return
        _, expires, root = found
        status = resp.status if isinstance(resp.status, int) else int(str(resp.status)[:3])
        if status == 403:
            # A refusal inside the scope (a large object's segments elsewhere): as Swift's
            # tempurl, which answers anything it does not authorize with its 401.
            _invalid(req, resp)
            return
        for name in list(resp.headers):
            lower = name.lower()
            if lower.startswith(OUTGOING_REMOVE) and not lower.startswith(OUTGOING_ALLOW):
                resp.delete_header(name)
        if req.method not in ("GET", "HEAD") or not 200 <= status < 300:
            return
        # A static web listing (pithos.api.staticweb) is the one thing a container's root
        # serves to a temporary URL, inline, as Swift's.
        web = getattr(req.context, "web_generated", False)
        if root and not web:
            _invalid(req, resp)
            return
        filename = req.get_param("filename")
        inline = web or "inline" in req.params
        existing = resp.get_header("Content-Disposition")
        if inline:
            value = disposition("inline", filename) if filename else "inline"
        elif filename:
            value = disposition("attachment", filename)
        elif existing:
            value = existing
        else:
            name = decode_path(path_info(req.env))[-1].rstrip("/").rsplit("/", 1)[-1]
            value = disposition("attachment", name)
        resp.set_header("Content-Disposition", value.replace("\n", "%0A"))
        resp.set_header("Expires", time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                 time.gmtime(expires)))

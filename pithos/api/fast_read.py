"""The plainest GET and HEAD of a small object, answered without falcon.

A GET of a 4 KiB object kept inline (docs/design.md, "Small objects inline") cost a worker
~5000 Python bytecodes, a quarter of them in falcon's request and response objects, its
middleware and routing, and the Swift layers in front of the API (the gatekeeper, the
symlinks' subrequest plumbing).  `FastReads` answers the plainest such request itself, with
the object service's own calls (the same token check, the same authorization, the same
catalog statements), and the answer the full stack gives: the same status, the same headers
in the same order and case, the same body.  Whatever it does not understand goes to the full
stack, untouched: it answers nothing it was not sure of, and a request it hands on costs
the full stack's answer plus the look at its environ.  (The current version it found of an
object it leaves, a large object's, a link's or a published one's, goes with the request
(`pithos.api.objects.PREFETCHED`), which then asks the catalog for it no second time; so
does the answer that there is no such object.)

What it understands is a whitelist, not a list of exceptions:
- GET or HEAD of /v1/ACCOUNT/CONTAINER/OBJECT, no query string, no request body;
- request headers among `PLAIN_HEADERS` only (Host, the token, User-Agent, Accept*,
  Connection, Cache-Control, Pragma, a proxy's forwarding headers): no Range, no
  conditional header, no Origin (CORS), no Referer (referrer ACLs), no X-Web-Mode (static
  web), no system metadata, nothing a middleware put in the environ (`pithos.*`);
- a valid token of the account's own admin (the owner, who reads everything in it by
  tempauth's first rule, whatever ACL or sharing says): anyone else, and no token or a bad or
  expired one, goes to the full stack, which decides (401, ACLs, referrers, sharing, public
  containers, temporary URLs, static web);
- a container without Swift's object versioning, an object that exists, kept inline, with
  a content type, no public link (its URL is made from the request), no large-object
  manifest, no system metadata of our middleware (symlinks, versioned writes).
Any error on the way (an object that is not there, a catalog that fails, a damaged inline
row) is answered by the full stack, which words it and logs it as always.

tests/test_fast_read.py compares its answers with the full stack's for drawn requests, and
fails when they differ by a byte; `pithos serve` turns it off with PITHOS_FAST_READS=0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from pithos.api.context import Services
from pithos.api.http import (
    decode_path,
    encoded_slash_in_container,
    http_date,
    path_info,
    x_timestamp,
)
from pithos.api.object_headers import SYS_HEADERS
from pithos.api.objects import PREFETCHED
from pithos.api.paths import account_name
from pithos.api.swift import _txid
from pithos.core.errors import NotFound
from pithos.core.hashing import to_hex
from pithos.objects import UserInfo
from pithos.objects import object_versioning as ov
from pithos.objects.acl import Action
from pithos.objects.names import check_names

# The request headers (environ keys) a plain read may carry: none of them changes the answer
# (no content coding is offered, Connection is the server's; what a proxy in front adds, the
# client's address and scheme, makes only URLs: a public link's, which is left to the full
# stack, a static web redirect's, the web UI's cookies).
PLAIN_HEADERS = frozenset({
    "HTTP_HOST", "HTTP_X_AUTH_TOKEN", "HTTP_X_STORAGE_TOKEN", "HTTP_USER_AGENT",
    "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING", "HTTP_ACCEPT_LANGUAGE", "HTTP_CONNECTION",
    "HTTP_CACHE_CONTROL", "HTTP_PRAGMA", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "HTTP_FORWARDED", "HTTP_X_REAL_IP",
    "HTTP_VIA"})
# The other environ keys a WSGI server (gunicorn, and pithos serve's own loop) sets, which
# change nothing either; an environ key outside both sets is looked at (`_plain`).
SERVER_KEYS = frozenset({
    "REQUEST_METHOD", "QUERY_STRING", "RAW_URI", "REQUEST_URI", "PATH_INFO", "SCRIPT_NAME",
    "SERVER_PROTOCOL", "SERVER_NAME", "SERVER_PORT", "SERVER_SOFTWARE", "REMOTE_ADDR",
    "REMOTE_PORT", "wsgi.input", "wsgi.errors", "wsgi.version", "wsgi.multithread",
    "wsgi.multiprocess", "wsgi.run_once", "wsgi.url_scheme", "wsgi.file_wrapper",
    "wsgi.input_terminated", "wsgi.early_hints", "gunicorn.socket"})
KNOWN_KEYS = PLAIN_HEADERS | SERVER_KEYS
# An environ key with one of these prefixes that is not a plain header sends the request to
# the full stack: another header, a body's type or length, or what a layer of ours set.
SUSPECT = ("HTTP_", "CONTENT_", "pithos.", "swift.", "falcon.")
# falcon's status line for the one status answered here.
OK = "200 OK"
_SYSMETA = "x-object-sysmeta-"


def _plain(env: dict[str, Any]) -> bool:
    """Whether every environ key is one a plain read may carry (one set difference for
    the usual environ: a key of an unknown kind is looked at by name)."""
    for key in env.keys() - KNOWN_KEYS:
        if type(key) is not str or key.startswith(SUSPECT):
            return False
    return True


class FastReads:
    """The WSGI answer to a plain read of a small object (see the module's docstring), or
    None: the full stack answers.  `out`: the App's way with an answer's headers (falcon's
    lower-case names to the case it sends, `pithos.api.app._out`)."""

    def __init__(self, services: Services,
                 out: Callable[[dict[str, Any], list[tuple[str, str]]],
                               list[tuple[str, str]]]) -> None:
        self.services = services
        self.objects = services.objects
        self.authz = services.objects.authz
        self.identity = services.identity
        self.limits = services.limits
        self.out = out

    def __call__(self, env: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes] | None:
        method = env.get("REQUEST_METHOD")
        if (method != "GET" and method != "HEAD") or env.get("QUERY_STRING") or \
                not _plain(env):
            return None
        token = env.get("HTTP_X_AUTH_TOKEN") or env.get("HTTP_X_STORAGE_TOKEN")
        raw = env.get("PATH_INFO")
        if not token or type(raw) is not str or not raw.startswith("/v1/"):
            return None
        try:
            return self._answer(env, start_response, method, token)
        except Exception:
            # Whatever failed is the full stack's to answer (and to log): it makes the same
            # calls, and words every error as always.
            return None

    def _answer(self, env: dict[str, Any], start_response: Callable[..., Any], method: str,
                token: str) -> Iterable[bytes] | None:
        # The path as the /v1 sink reads it (pithos.api.swift.SwiftSink).
        segments = decode_path(path_info(env))
        if len(segments) != 3 or not all(segments):
            return None
        raw_uri = env.get("RAW_URI") or env.get("REQUEST_URI") or ""
        if "%" in raw_uri and encoded_slash_in_container(raw_uri):
            return None
        account, container_name, obj = account_name(segments[0]), segments[1], segments[2]
        limits = self.limits
        check_names(limits, account, container_name, None)
        check_names(limits, account, None, obj)
        # The token's user (TokenMiddleware's call): only the account's own admin, whom no
        # ACL, referrer or sharing rule concerns.
        user = self.identity.authenticate(token)
        if user is None or type(user) is not UserInfo or not user.admin or \
                user.account != account:
            return None
        # ObjectHandlers._read's calls, in its order.
        info, container, via = self.authz.object_access(user, account, container_name, obj,
                                                         Action.OBJECT_READ, None)
        if info is None or via is not None or container.versioning in ov.MODES or \
                not self.authz.owns(user, info):
            return None
        objects = self.objects
        try:
            v, public = objects.chosen_version(container, obj, vid=None, until=None,
                                               with_token=True)
        except NotFound as exc:
            # The full stack's 404 (a HEAD before an upload is a sync client's habit), with
            # what the catalog said: not asked a second time.
            env[PREFETCHED] = (container.id, obj, exc, None)
            return None
        inline = v.inline
        sys_meta = v.sys_meta()
        if public is not None or inline is None or v.root is None or v.slo_manifest or \
                v.dlo_manifest or not v.content_type or \
                (sys_meta and any(k.startswith(_SYSMETA) for k in sys_meta)):
            # The full stack's, with the version found here (a large object's read must
            # not cost a second statement for it).
            env[PREFETCHED] = (container.id, obj, v, public)
            return None
        # The headers as falcon keeps them (lower-case names, a later value of a name in the
        # first one's place), in the order the full stack sets them.
        txid = _txid()
        h = {"x-trans-id": txid, "x-openstack-request-id": txid}
        shared = objects.sharing.of_object(container, v.name)  # (ObjectHandlers._owner_headers)
        if shared is not None:
            h["x-object-sharing"] = shared.text
            if shared.path != v.name:
                h["x-object-shared-by"] = quote(shared.path, safe="/")
        # ObjectHandlers._headers, for a version that is no manifest.
        created = v.created
        stamp = x_timestamp(created)
        # (ObjectService.content: for a version that is no manifest, its own content.)
        parts, size, etag, _ = objects.content(v, info.id)
        h["etag"] = etag
        h["last-modified"] = http_date(created)
        h["x-timestamp"] = stamp
        h["accept-ranges"] = "bytes"
        h["x-object-uuid"] = v.uuid
        h["x-object-version"] = v.vid
        h["x-object-version-timestamp"] = stamp
        h["x-object-hash"] = to_hex(objects.object_hash(v.root, inline))
        if v.modified_by:
            h["x-object-modified-by"] = v.modified_by
        for name, value in v.user_meta().items():
            h[f"X-Object-Meta-{name.title()}".lower()] = str(value)
        if sys_meta:
            for header in SYS_HEADERS:
                lower = header.lower()
                if lower in sys_meta:
                    h[lower] = str(sys_meta[lower])
        if v.delete_at is not None:
            h["x-delete-at"] = str(int(v.delete_at))
        h["content-type"] = str(v.content_type)
        h["content-length"] = str(size)
        if method == "HEAD":
            body: list[bytes] = []
        else:
            # ObjectService.read: the row's bytes, checked against the version's root
            # (IntegrityError, never served: the full stack then answers it).
            body = list(objects.read(parts, 0, size)) if size else []
        start_response(OK, self.out(env, list(h.items())))
        return body

"""Object requests of the Swift API: GET/HEAD (ranges, preconditions, large objects), PUT
(streamed, copies, manifests), POST (metadata), DELETE, COPY."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote

import falcon

from pithos.api import bulk, slo
from pithos.api import object_versioning as versioning
from pithos.api.body import PieceBuffers, refuse_body, request_body
from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import (
    ByteRange,
    check_preconditions,
    http_date,
    meta_from_headers,
    meta_headers,
    parse_range,
    write_expect,
    x_timestamp,
)
from pithos.api.inflate import Inflating, encoding, read_bounded
from pithos.api.listing import truthy
from pithos.api.object_headers import (
    MANIFEST_SENT,
    SYS_HEADERS,
    dlo_manifest_sent,
    manifest_header,
    sys_meta_sent,
)
from pithos.api.paths import RESELLER_PREFIX, Target, account_name, public_url
from pithos.core.binary_hashes import HASHMAP_FORMAT
from pithos.core.errors import Forbidden, NotFound
from pithos.core.hashing import to_hex
from pithos.objects import (
    AccountInfo,
    ContainerInfo,
    Expect,
    ObjectVersion,
    UserInfo,
    names,
    versioned_writes,
)
from pithos.objects.acl import Action
from pithos.objects.hashmaps import HASHMAP_PAGE, MissingBlocks, check_updatable, update_content
from pithos.objects.service import UPLOAD_PIECE_BYTES
from pithos.objects.sharing import SharingChange

HASHMAP_BODY_MAX = 64 * 1024 * 1024
# Receive buffers a worker keeps for the pieces of uploads (at 1 MiB each, 64 MiB): enough
# for a dozen uploads or more at once, each holding a few pieces queued for MD5 and being
# written.
PIECE_BUFFERS_KEPT = 64
def _content_type(req: falcon.Request, name: str) -> str:
    given = req.get_header("Content-Type")
    if given and len(given) > names.MAX_CONTENT_TYPE:
        # Said before the body is read and stored (the catalog would refuse it at the end).
        raise HTTPStatusError(
            400, f"Content-Type longer than {names.MAX_CONTENT_TYPE} characters")
    if given and not truthy(req.get_header("X-Detect-Content-Type")):
        return given
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def _delete_at(req: falcon.Request) -> float | None:
    return names.delete_at(req.get_header("X-Delete-At"), req.get_header("X-Delete-After"),
                           time.time())


def parse_until(req: falcon.Request) -> float | None:
    text = req.get_param("until")
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise HTTPStatusError(400, "until must be a UNIX timestamp") from None


# Where the fast reads (pithos.api.fast_read) leave the current version they found, with its
# public token, when they leave the request to the full stack: (container id, name, version
# or the NotFound the catalog answered, token).  Not a header: only code in this process
# sets it, never a client.
PREFETCHED = "pithos.fast_read.version"

# The request headers check_preconditions reads, and their WSGI keys.
_CONDITIONS = tuple((name, "HTTP_" + name.replace("-", "_")) for name in (
    "IF-MATCH", "IF-NONE-MATCH", "IF-MODIFIED-SINCE", "IF-UNMODIFIED-SINCE"))


class ObjectHandlers:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.objects = services.objects
        self.authz = services.objects.authz
        self.pieces = PieceBuffers(UPLOAD_PIECE_BYTES, PIECE_BUFFERS_KEPT)

    # -- helpers -------------------------------------------------------------------------------

    def _user_meta(self, req: falcon.Request) -> dict[str, str]:
        meta = meta_from_headers(req.headers, "X-OBJECT-META-", self.services.limits,
                                 allow_remove=False)
        return {k: v for k, v in meta.items() if v is not None}

    def _chosen_version(self, req: falcon.Request, container: ContainerInfo, name: str,
                        with_token: bool = False) -> tuple[ObjectVersion, str | None]:
        """The current version, or the one named by ?version=ID, or the one current at
        ?until=TIMESTAMP; and `with_token`, the object's public token (None otherwise)."""
        vid, until = req.get_param("version"), parse_until(req)
        found = req.env.pop(PREFETCHED, None)
        if found is not None and found[0] == container.id and found[1] == name and \
                not vid and until is None:
            # The current version and its token, as the fast reads found them a moment ago
            # for this very object (pithos.api.fast_read), not asked for a second time; or
            # the NotFound they were told.
            if isinstance(found[2], NotFound):
                raise found[2]
            return found[2], found[3] if with_token else None
        return self.objects.chosen_version(container, name, vid=vid, until=until,
                                           with_token=with_token)

    def _hashmap(self, req: falcon.Request, resp: falcon.Response, v: ObjectVersion) -> None:
        user = req.context.user
        if user is None:
            raise HTTPStatusError(401, "a hashmap names blocks: log in to read it")
        reader_id = self.objects.account_id(user.account)
        try:
            start = int(req.get_param("marker") or 0)
            limit = min(int(req.get_param("limit") or HASHMAP_PAGE), HASHMAP_PAGE)
            if start < 0 or limit < 1:  # (a negative one gave a "next" that never ended)
                raise ValueError
        except ValueError:
            raise HTTPStatusError(400, "marker and limit are entry counts (marker >= 0, "
                                       "limit >= 1)") from None
        doc = self.services.hashmaps.hashmap(reader_id, v, start, limit, user=user)
        self._headers(resp, v, v.etag)
        resp.content_type = "application/json; charset=utf-8"
        resp.text = json.dumps(doc)

    def _version_list(self, req: falcon.Request, resp: falcon.Response,
                      container: ContainerInfo, name: str) -> None:
        versions = self.objects.versions(container, name)
        if (req.get_param("format") or "json") == "json":
            resp.content_type = "application/json; charset=utf-8"
            resp.text = json.dumps({"versions": [[v.vid, v.created] for v in versions]})
        else:
            resp.content_type = "text/plain; charset=utf-8"
            resp.text = "".join(f"{v.vid} {v.created}\n" for v in versions)

    def _headers(self, resp: falcon.Response, v: ObjectVersion, etag: str) -> None:
        resp.set_header("ETag", etag)
        resp.set_header("Last-Modified", http_date(v.created))
        stamp = x_timestamp(v.created)
        resp.set_header("X-Timestamp", stamp)
        resp.set_header("Accept-Ranges", "bytes")
        resp.set_header("X-Object-UUID", v.uuid)
        resp.set_header("X-Object-Version", v.vid)
        resp.set_header("X-Object-Version-Timestamp", stamp)
        if v.root is not None and not v.dlo_manifest:
            resp.set_header("X-Object-Hash",
                            to_hex(self.objects.object_hash(v.root, v.inline)))
        if v.modified_by:
            resp.set_header("X-Object-Modified-By", v.modified_by)
        for k, val in meta_headers("X-Object-Meta-", v.user_meta()).items():
            resp.set_header(k, val)
        sys_meta = v.sys_meta()
        if sys_meta:
            for h in SYS_HEADERS:
                if h.lower() in sys_meta:
                    resp.set_header(h, sys_meta[h.lower()])
            for k, val in sys_meta.items():
                if k.startswith("x-object-sysmeta-"):
                    resp.set_header(k, val)
        if v.delete_at is not None:
            resp.set_header("X-Delete-At", str(int(v.delete_at)))
        if v.dlo_manifest:
            resp.set_header("X-Object-Manifest",
                            manifest_header(v.dlo_manifest, sys_meta.get(MANIFEST_SENT)))
        if v.slo_manifest:
            resp.set_header("X-Static-Large-Object", "True")

    # -- GET / HEAD ----------------------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        self._read(req, resp, t, head=False)

    def on_head(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        self._read(req, resp, t, head=True)

    def _read(self, req: falcon.Request, resp: falcon.Response, t: Target, head: bool) -> None:
        assert t.container is not None and t.obj is not None
        user = req.context.user
        account, container, via = self.authz.object_access(user, t.account, t.container,
                                                           t.obj, Action.OBJECT_READ,
                                                           req.referer)
        if via:
            resp.set_header("X-Object-Allowed-To", via)
        if req.get_param("version") is not None or req.get_param("until") is not None or \
                versioning.version_id(req) is not None:
            # An object's history (deleted and replaced content) is its owner's, or a
            # writer's, to see: a read ACL (".r:*" included) grants the current version only.
            self.authz.object_access(user, t.account, t.container, t.obj, Action.OBJECT_WRITE)
        if req.get_param("version") == "list":
            self._version_list(req, resp, container, t.obj)
            return
        owner = self.authz.owns(user, account)
        chosen = versioning.chosen(self.objects, req, resp, container, t.obj)  # ?version-id
        if chosen is None and versioning.version_id(req) is not None:
            return  # (a delete marker's 404)
        v, token = ((chosen, None) if chosen is not None else
                    self._chosen_version(req, container, t.obj, with_token=owner))
        versioning.read_headers(self.objects, req, resp, container, v)
        if "hashmap" in req.params:
            self._hashmap(req, resp, v)
            return
        if owner:
            self._owner_headers(req, resp, container, v, token)
        assert account is not None
        # A large object's segments are read with the same rights (the Referer included).
        may_read = self.authz.may_read(user, account, req.referer)
        if v.slo_manifest and not head and via is None and \
                req.get_param("multipart-manifest") != "get":
            # Swift's SLO GET asks for the first segment first (409 when it cannot have
            # it).  Not of a sharee, whom no container ACL names: Pithos sharing has no
            # Swift equivalent, and its reads stay what they were.
            self.objects.check_slo_segments(v, account.id, may_read)
        self.serve(req, resp, v, account.id, head, may_read=may_read)

    def public(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """GET/HEAD /public/TOKEN: a published object, without a token (ranges and
        conditional requests work; an unpublished or deleted object is 404)."""
        found = self.objects.sharing.public_object(token)
        self.serve(req, resp, found.version, found.account_id, req.method == "HEAD",
                   public=True)

    def serve(self, req: falcon.Request, resp: falcon.Response, v: ObjectVersion,
              account_id: int, head: bool,
              may_read: Callable[[ContainerInfo | None], bool] = lambda _: True,
              public: bool = False) -> None:
        manifest_get = not public and req.get_param("multipart-manifest") == "get"
        if v.slo_manifest and manifest_get:
            body, content_type = slo.manifest_body(req, v)
            self._headers(resp, v, hashlib.md5(body, usedforsecurity=False).hexdigest())
            resp.content_type = content_type
            resp.content_length = len(body)
            if not head:
                resp.data = body
            return
        if public:
            parts, size, etag, large = self.objects.public_content(v, account_id)
        else:
            parts, size, etag, large = self.objects.content(v, account_id, may_read,
                                                            manifest=manifest_get)
        if large:
            etag = f'"{etag}"'  # as Swift quotes a large object's ETag
        self._headers(resp, v, etag)
        resp.content_type = v.content_type
        part = None
        if v.slo_manifest and not manifest_get:
            slo.read_headers(resp, v)
            part = slo.part_number(req)
        env = req.env
        # The four conditional headers alone (falcon's req.headers builds a dict of all).
        conditions = {name: env[key] for name, key in _CONDITIONS if key in env}
        decided = check_preconditions(conditions, etag.strip('"'), v.created, req.method)
        if decided == 304:
            resp.status = falcon.HTTP_304
            return
        if decided == 412:
            raise HTTPStatusError(412, "Precondition Failed",
                                  {"ETag": etag, "Last-Modified": http_date(v.created)})
        if part is not None:
            part_range = slo.part_range(req, resp, v, part, size)
            if part_range is None:
                return
            ranges: list[ByteRange] | None = [part_range]
        else:
            ranges = parse_range(env.get("HTTP_RANGE"), size)  # (req.get_header's)
            if ranges and len(ranges) > 1 and v.dlo_manifest and large:
                ranges = None  # Swift's DLO serves a multi-range request whole (a 200)
        if not ranges:
            resp.status = falcon.HTTP_200
            resp.content_length = size
            if not head:
                resp.stream = self.services.objects.read(parts, 0, size)
        elif len(ranges) == 1:
            r = ranges[0]
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {r.start}-{r.end}/{size}")
            resp.content_length = r.length
            if not head:
                resp.stream = self.services.objects.read(parts, r.start, r.length)
        else:
            boundary = secrets.token_hex(16)
            heads = [(f"--{boundary}\r\nContent-Type: {v.content_type}\r\n"
                      f"Content-Range: bytes {r.start}-{r.end}/{size}\r\n\r\n").encode()
                     for r in ranges]
            tail = f"--{boundary}--".encode()
            resp.status = falcon.HTTP_206
            resp.content_type = f"multipart/byteranges;boundary={boundary}"
            resp.content_length = (sum(len(h) + r.length + 2 for h, r in zip(heads, ranges,
                                                                             strict=True))
                                   + len(tail))
            if not head:
                resp.stream = self._multipart(parts, ranges, heads, tail)

    def _multipart(self, parts: list[tuple[bytes, int]], ranges: list[ByteRange],
                   heads: list[bytes], tail: bytes) -> Iterator[bytes]:
        for head, r in zip(heads, ranges, strict=True):
            yield head
            yield from self.services.objects.read(parts, r.start, r.length)
            yield b"\r\n"
        yield tail

    # -- PUT -----------------------------------------------------------------------------------

    def on_put(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None and t.obj is not None
        user = req.context.user
        copy_from = req.get_header("X-Copy-From")
        if copy_from is not None:
            self._check_source(user, account_name(req.get_header("X-Copy-From-Account")
                                                  or t.account), _split_source(copy_from),
                               exists=not req.get_header("X-Source-Version"))
        account, container, _ = self.authz.object_access(user, t.account, t.container, t.obj,
                                                         Action.OBJECT_WRITE)
        sharing_public = self._sharing_public(req, user, account)
        assert account is not None
        if versioning.put(self.objects, req, resp, container, t.obj):  # ?version-id
            return
        versioning.check_quota(self.objects, req, container)
        replaced = versioning.replaced_null(self.objects, container, t.obj)
        self._put(req, resp, t, user, account, container)
        versioning.written(resp, container, self.objects, t.obj, replaced)
        if sharing_public is not None and resp.status in (falcon.HTTP_201, 201):
            v = self.objects.find_object(container, t.obj)
            if v is not None:
                self._apply_sharing_public(req, resp, sharing_public, account, container, v)

    def _put(self, req: falcon.Request, resp: falcon.Response, t: Target,
             user: UserInfo | None, account: AccountInfo, container: ContainerInfo) -> None:
        assert t.obj is not None
        expect = _expect(req)
        copy_from = req.get_header("X-Copy-From")
        move_from = req.get_header("X-Move-From")
        if copy_from is not None and move_from is not None:
            raise HTTPStatusError(400, "X-Copy-From and X-Move-From together")
        if container.versioning in versioned_writes.MODES:
            versioned_writes.before_write(self.objects, container, t.obj, _modified_by(user))
        if copy_from is not None or move_from is not None:
            source_account = account_name(req.get_header("X-Copy-From-Account") or t.account)
            if move_from is not None and source_account != t.account:
                raise HTTPStatusError(400, "a move stays in its account")
            self._copy(req, resp, user, _split_source(copy_from or move_from or ""),
                       source_account, container, t.obj, expect=expect,
                       move=move_from is not None, dest_account=account)
            return
        if expect is not None and expect.absent and \
                self.objects.find_object(container, t.obj) is not None:
            # Before the body is read; the commit checks again, atomically.
            raise HTTPStatusError(412, "Precondition Failed")
        meta = {"user": self._user_meta(req), "sys": sys_meta_sent(req)}
        delete_at = _delete_at(req)
        content_type = _content_type(req, t.obj)
        modified_by = f"{user.account}:{user.name}" if user else None
        length = req.content_length
        chunked = "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
        if length is None and not chunked:
            refuse_body(req.env)
            raise HTTPStatusError(411, "Missing Content-Length header.")
        if length is not None:
            self.objects.check_quota(container, t.obj, length)
        objects = self.services.objects
        if "hashmap" in req.params:
            self._put_hashmap(req, resp, user, container, t.obj, content_type=content_type,
                              meta=meta, modified_by=modified_by, delete_at=delete_at,
                              expect=expect)
            return
        if req.get_param("multipart-manifest") == "put":
            manifest = req.stream.read(self.services.limits.max_manifest_size + 1)

            def put_slo() -> ObjectVersion:
                with objects.upload_lease():
                    return objects.put_slo(account.id, container, t.obj, manifest,
                                           content_type=content_type, meta=meta,
                                           modified_by=modified_by, delete_at=delete_at,
                                           may_read=self.authz.may_read(user, account),
                                           etag=req.get_header("ETag"))
            if truthy(req.get_param("heartbeat")):
                slo.put_with_heartbeat(req, resp, put_slo, objects.offload)
                return
            v = put_slo()
            self._created(resp, v, f'"{v.etag}"')
            return
        dlo = dlo_manifest_sent(req)
        with objects.upload_lease():
            stored = objects.store(request_body(req.env, self.pieces,
                                                self.services.client_timeout_s), length,
                                   chunking=container.chunking)
            v = objects.create(container, t.obj, stored, etag=req.get_header("ETag"),
                               content_type=content_type, meta=meta, modified_by=modified_by,
                               delete_at=delete_at, dlo_manifest=dlo, uploader=user,
                               expect=expect)
        self._created(resp, v, v.etag)

    def _put_hashmap(self, req: falcon.Request, resp: falcon.Response, user: UserInfo | None,
                     container: ContainerInfo, name: str, **kw: Any) -> None:
        if user is None:
            raise HTTPStatusError(401, "log in to upload by hashmap")
        how = encoding(req.get_header("Content-Encoding"), req.env)
        raw = request_body(req.env, None, self.services.client_timeout_s)  # (see _store_blocks)
        stream = raw if how is None else Inflating(raw, how, HASHMAP_BODY_MAX, req.env)
        if how is not None:  # the coding of the hashmap sent, not of the object's content
            kw["meta"]["sys"].pop("content-encoding", None)
        body = read_bounded(stream, req.content_length if how is None else None,
                            HASHMAP_BODY_MAX, "hashmap")
        account_id = self.objects.account_id(user.account)
        try:
            with self.services.objects.upload_lease():
                v = self.services.hashmaps.put(
                    account_id, container, name, body, etag=req.get_header("ETag"),
                    user=user, binary=req.params.get("format") == HASHMAP_FORMAT, **kw)
        except MissingBlocks as exc:
            resp.status = falcon.HTTP_409
            resp.content_type = "application/json; charset=utf-8"
            resp.text = json.dumps([to_hex(h) for h in exc.hashes])
            return
        self._created(resp, v, v.etag)

    # -- sharing and public links --------------------------------------------------------------

    def _sharing_public(self, req: falcon.Request, user: UserInfo | None,
                        account: AccountInfo | None) -> SharingChange | None:
        """X-Object-Sharing / X-Object-Public of a request, checked: only the owner sets them."""
        return self.objects.sharing.check(user, account, req.get_header("X-Object-Sharing"),
                                          req.get_header("X-Object-Public"))

    def _apply_sharing_public(self, req: falcon.Request, resp: falcon.Response,
                              change: SharingChange, account: AccountInfo | None,
                              container: ContainerInfo, v: ObjectVersion) -> None:
        token = self.objects.sharing.apply(change, account, container, v)
        if token is not None:
            resp.set_header("X-Object-Public", public_url(self.services, req, token))

    def _owner_headers(self, req: falcon.Request, resp: falcon.Response,
                       container: ContainerInfo, v: ObjectVersion, token: str | None) -> None:
        """Sharing and the public link (`token`, the object's), shown to the owner only."""
        found = self.objects.sharing.of_object(container, v.name)
        if found is not None:
            resp.set_header("X-Object-Sharing", found.text)
            if found.path != v.name:
                # Percent-encoded, as Swift sends names in headers: a name may hold CR or LF.
                resp.set_header("X-Object-Shared-By", quote(found.path, safe="/"))
        if token is not None:
            resp.set_header("X-Object-Public", public_url(self.services, req, token))

    def _created(self, resp: falcon.Response, v: ObjectVersion, etag: str) -> None:
        resp.status = falcon.HTTP_201
        resp.set_header("ETag", etag)
        resp.set_header("Last-Modified", http_date(v.created))
        resp.set_header("X-Object-Version", v.vid)
        resp.content_type = "text/html; charset=UTF-8"
        resp.text = ""

    def _copy(self, req: falcon.Request, resp: falcon.Response, user: UserInfo | None,
              source: tuple[str, str], source_account: str, dest: ContainerInfo,
              dest_name: str, expect: Expect | None = None, move: bool = False,
              dest_account: AccountInfo | None = None) -> None:
        """A copy (X-Copy-From, COPY) or a move (X-Move-From) naming the source's map, no
        data moved.  `expect`: the target's precondition; X-Source-If-Match: the source's,
        checked with the target's in the commit's transaction, as is (for a move) the
        source's delete."""
        src_account, src_container, _ = self.authz.object_access(
            user, source_account, source[0], source[1], Action.OBJECT_READ)
        if move:
            # A move deletes the source: the right to write there too.
            self.authz.object_access(user, source_account, source[0], source[1],
                                     Action.OBJECT_WRITE)
        source_if_match = req.get_header("X-Source-If-Match")
        source_expect = (write_expect(source_if_match, None) if source_if_match is not None
                         else None)
        source_version = req.get_header("X-Source-Version")
        if source_version and (move or source_expect is not None):
            raise HTTPStatusError(400, "X-Source-Version with a move or X-Source-If-Match")
        if source_version:
            # An older version is history, its owner's or a writer's to read (as GET
            # ?version=): a read ACL grants the current version only.
            self.authz.object_access(user, source_account, source[0], source[1],
                                     Action.OBJECT_WRITE)
            src = self.objects.object_version(src_container, source[1], source_version)
            if src is None:
                raise HTTPStatusError(404, "no such version of the source object")
        else:
            src = self.objects.get_object(src_container, source[1])
        objects = self.services.objects
        fresh = truthy(req.get_header("X-Fresh-Metadata"))
        user_meta = {} if fresh else dict(src.user_meta())
        user_meta.update(self._user_meta(req))
        sys_meta = {} if fresh else dict(src.sys_meta())
        sys_meta.update(sys_meta_sent(req))
        # A move takes the object as it is (a large object's manifest, not its content).
        keep_manifest = move or req.get_param("multipart-manifest") == "get"
        if keep_manifest and src.slo_manifest and dest.account_id != src_container.account_id:
            # A manifest's paths name containers of its own account: in another account it
            # is a new manifest, checked there as a PUT of it is (as Swift's).
            with objects.upload_lease():
                v = objects.put_slo(
                    dest.account_id, dest, dest_name, slo.raw_body(src),
                    content_type=req.get_header("Content-Type") or src.content_type,
                    meta={"user": user_meta, "sys": sys_meta},
                    modified_by=f"{user.account}:{user.name}" if user else None,
                    delete_at=_delete_at(req), may_read=self.authz.may_read(user, dest_account))
            self._created(resp, v, f'"{v.etag}"')
            return
        content = None
        # The lease covers the new map of a large object's content and the copy's commit, and
        # the source's map until the copy names it.
        with objects.upload_lease():
            if not keep_manifest:
                content = objects.large_content(src, src_account,
                                                self.authz.may_read(user, src_account),
                                                span=_copy_span(req, src))
            v = objects.copy(src, dest, dest_name, meta={"user": user_meta, "sys": sys_meta},
                             content_type=req.get_header("Content-Type") or src.content_type,
                             modified_by=f"{user.account}:{user.name}" if user else None,
                             delete_at=_delete_at(req), content=content,
                             keep_manifest=keep_manifest, expect=expect,
                             source_expect=source_expect, move=move)
        self._created(resp, v, f'"{v.etag}"' if v.slo_manifest else v.etag)
        if move:
            resp.set_header("X-Moved-From", quote(f"{source[0]}/{source[1]}"))
            return
        # Quoted, as Swift does: names may hold characters a header cannot.
        resp.set_header("X-Copied-From", quote(f"{source[0]}/{source[1]}"))
        resp.set_header("X-Copied-From-Account", quote(RESELLER_PREFIX + source_account))

    def _check_source(self, user: UserInfo | None, account: str,
                      source: tuple[str, str], exists: bool = True) -> None:
        """A copy's source readable (and, with `exists`, there), or its refusal: as Swift's
        copy, which reads the source before it writes the target, a copy answers for its
        source first."""
        _, container, _ = self.authz.object_access(user, account, source[0], source[1],
                                                   Action.OBJECT_READ)
        if exists:
            self.objects.get_object(container, source[1])

    def on_copy(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        """COPY with Destination: container/object (and Destination-Account)."""
        assert t.container is not None and t.obj is not None
        destination = req.get_header("Destination")
        if not destination:
            raise HTTPStatusError(412, "Destination header required")
        dest_container, dest_obj = _split_source(destination)
        dest_account = account_name(req.get_header("Destination-Account") or t.account)
        # The names a COPY creates are held to the limits of a PUT's (a 1,100-byte name made
        # an object no request could then name).
        names.check_names(self.services.limits, dest_account, dest_container, dest_obj)
        _, src_container, _ = self.authz.object_access(req.context.user, t.account,
                                                       t.container, t.obj, Action.OBJECT_READ)
        if versioning.version_id(req) is not None:  # (history: see _copy)
            self.authz.object_access(req.context.user, t.account, t.container, t.obj,
                                     Action.OBJECT_WRITE)
        versioning.copy_source(req, src_container, t.obj, self.objects)  # ?version-id
        self._check_source(req.context.user, t.account, (t.container, t.obj),
                           exists=versioning.version_id(req) is None)
        account, container = self.authz.container(req.context.user, dest_account,
                                                  dest_container, Action.OBJECT_WRITE)
        if container.versioning in versioned_writes.MODES:
            versioned_writes.before_write(self.objects, container, dest_obj,
                                          _modified_by(req.context.user))
        self._copy(req, resp, req.context.user, (t.container, t.obj), t.account, container,
                   dest_obj, dest_account=account)
        versioning.written(resp, container, self.objects, dest_obj)

    # -- POST / DELETE -------------------------------------------------------------------------

    def on_post(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None and t.obj is not None
        user = req.context.user
        account, container, _ = self.authz.object_access(user, t.account, t.container, t.obj,
                                                         Action.OBJECT_WRITE)
        if versioning.version_id(req) is not None:
            raise HTTPStatusError(400, "POST to a specific version is not allowed")
        current = self.objects.get_object(container, t.obj)
        sharing_public = self._sharing_public(req, user, account)
        if any(req.get_header(h) is not None
               for h in ("Content-Range", "X-Object-Bytes", "X-Source-Object")):
            self._update(req, resp, t, container, current)
        elif sharing_public is None or req.get_header("Content-Type") is not None or any(
                k.upper().startswith("X-OBJECT-META-") for k in req.headers):
            delete_at = _delete_at(req)
            if delete_at is None and req.get_header("X-Remove-Delete-At") is None:
                delete_at = current.delete_at
            content_type = req.get_header("Content-Type")
            # A POST replaces the metadata but not the system metadata (as Swift's).
            sys_meta = {k: val for k, val in current.sys_meta().items()
                        if k.startswith("x-object-sysmeta-")}
            sys_meta.update(sys_meta_sent(req))
            self.objects.update_meta(
                container, t.obj, {"user": self._user_meta(req), "sys": sys_meta},
                delete_at=delete_at, content_type=content_type, expect=_expect(req),
                replace_dlo=not current.slo_manifest, dlo_manifest=dlo_manifest_sent(req))
            resp.status = falcon.HTTP_202
            resp.content_type = "text/html; charset=UTF-8"
            resp.text = ""
        else:
            resp.status = falcon.HTTP_202
        for k, val in current.sys_meta().items():
            if k.startswith("x-object-sysmeta-"):  # for the middleware (a POST to a symlink)
                resp.set_header(k, val)
        # Sharing and publishing last: a request refused for its other headers (a bad
        # Content-Range, metadata over the limits) changes nothing, not even them.
        if sharing_public is not None:
            self._apply_sharing_public(req, resp, sharing_public, account, container, current)

    def _update(self, req: falcon.Request, resp: falcon.Response, t: Target,
                container: ContainerInfo, current: ObjectVersion) -> None:
        """Pithos in-place updates: Content-Range: bytes START-END/* writes the body (or
        X-Source-Object's data) there, bytes */* appends, X-Object-Bytes truncates."""
        user = req.context.user
        check_updatable(current)
        offset, length = _content_range(req.get_header("Content-Range"))
        source = None
        src_name = req.get_header("X-Source-Object")
        if src_name is not None:
            src_account = req.get_header("X-Source-Account") or t.account
            src_container_name, src_obj = _split_source(src_name)
            _, src_container, _ = self.authz.object_access(
                user, src_account, src_container_name, src_obj, Action.OBJECT_READ)
            vid = req.get_header("X-Source-Version")
            if vid:  # (history: see _copy)
                self.authz.object_access(user, src_account, src_container_name, src_obj,
                                         Action.OBJECT_WRITE)
            src = (self.objects.object_version(src_container, src_obj, vid)
                   if vid else self.objects.find_object(src_container, src_obj))
            if src is None or src.root is None:
                raise HTTPStatusError(404, "no such source object")
            source = src
        elif req.get_header("Content-Range") is not None:
            body_length = req.content_length
            if body_length is None:
                raise HTTPStatusError(411, "Length Required")
            if length is not None and length != body_length:
                raise HTTPStatusError(416, "the body's length does not match Content-Range")
            length = body_length
        truncate = None
        if req.get_header("X-Object-Bytes") is not None:
            try:
                truncate = int(req.get_header("X-Object-Bytes") or "")
                if truncate < 0:
                    raise ValueError
            except ValueError:
                raise HTTPStatusError(400, "X-Object-Bytes is a size in bytes") from None
        with self.services.objects.upload_lease():
            v = update_content(
                self.services.hashmaps, container, current, offset=offset, length=length,
                body=req.stream if source is None and length is not None else None,
                source=source, truncate=truncate,
                modified_by=f"{user.account}:{user.name}" if user else None)
        resp.status = falcon.HTTP_204
        try:
            # The new content's MD5, only to who may read it: a write-only grantee's append
            # of nothing would learn the MD5 of content it may not read.
            self.authz.object_access(user, t.account, t.container, t.obj or "",
                                     Action.OBJECT_READ)
            resp.set_header("ETag", v.etag)
        except Forbidden:
            pass
        resp.set_header("X-Object-Version", v.vid)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None and t.obj is not None
        user = req.context.user
        _, container = self.authz.container(user, t.account, t.container, Action.OBJECT_WRITE)
        modified_by = f"{user.account}:{user.name}" if user else None
        until = parse_until(req)
        if until is not None:
            # Pithos: DELETE ?until= purges the object's history before that time.
            self.objects.purge_history(container, t.obj, until)
            resp.status = falcon.HTTP_204
            return
        if req.get_param("multipart-manifest") == "delete":
            version = versioning.version(self.objects, req, container, t.obj)  # ?version-id
            v = version or self.objects.get_object(container, t.obj)
            if v.slo_manifest:
                bulk.send_result(req, resp, self.objects.bulk.delete_slo(
                    user, t.account, container, v, version_only=version is not None))
                return
        if_delete_at = req.get_header("X-If-Delete-At")
        if if_delete_at is not None:
            # Swift's: delete only if the object's X-Delete-At is this one.
            if not if_delete_at.isascii() or not if_delete_at.isdigit():
                raise HTTPStatusError(400, "Bad X-If-Delete-At header value")
            at = self.objects.get_object(container, t.obj).delete_at
            if at is None or int(at) != int(if_delete_at):
                raise HTTPStatusError(412, "X-If-Delete-At does not match the object's")
        if versioning.delete(self.objects, req, resp, container, t.obj, modified_by):
            return  # Swift's object versioning: a delete marker, or one version dropped
        if container.versioning in versioned_writes.MODES and versioned_writes.delete(
                self.objects, container, t.obj, modified_by, time.time()):
            resp.status = falcon.HTTP_204  # stack mode: the previous version is back
            return
        self.objects.delete_object(container, t.obj, modified_by, expect=_expect(req))
        resp.status = falcon.HTTP_204
        resp.content_type = "text/html; charset=UTF-8"  # as Swift types its 204


def _copy_span(req: falcon.Request, src: ObjectVersion) -> tuple[int, int] | None:
    """(offset, length) of the source a copy takes, as Swift's copy reads it: one part of an
    SLO (?part-number=N), or the one range of a Range header; None for the whole source.
    (Not of a DLO, whose size is known only once its segments are listed.)"""
    if src.dlo_manifest:
        return None
    part = slo.part_number(req) if src.slo_manifest else None
    if part is not None:
        return slo.part_span(src, part)
    ranges = parse_range(req.get_header("Range"), src.size)
    if ranges and len(ranges) == 1:
        return ranges[0].start, ranges[0].length
    return None


def _modified_by(user: UserInfo | None) -> str | None:
    return f"{user.account}:{user.name}" if user else None


def _expect(req: falcon.Request) -> Expect | None:
    """A write's If-Match / If-None-Match, to be checked in its transaction."""
    return write_expect(req.get_header("If-Match"), req.get_header("If-None-Match"))


def _content_range(text: str | None) -> tuple[int | None, int | None]:
    """Content-Range of an update -> (offset or None to append, length or None)."""
    if text is None:
        return None, None
    unit, _, spec = text.strip().partition(" ")
    rng, _, _total = spec.partition("/")
    if unit.lower() != "bytes" or not rng:
        raise HTTPStatusError(416, "Content-Range must be 'bytes START-END/*' or 'bytes */*'")
    if rng == "*":
        return None, None
    first, _, last = rng.partition("-")
    try:
        start = int(first)
        end = int(last) if last else None
    except ValueError:
        raise HTTPStatusError(416, "bad Content-Range") from None
    if start < 0 or (end is not None and end < start):
        raise HTTPStatusError(416, "bad Content-Range")
    return start, None if end is None else end - start + 1


def _split_source(text: str) -> tuple[str, str]:
    # Header values arrive as latin-1 characters carrying the client's bytes (WSGI); the
    # name is their UTF-8, percent-decoded, and as strict as a path's (Swift: 412).
    try:
        path = unquote(text.encode("latin-1").decode("utf-8"), errors="strict").lstrip("/")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise HTTPStatusError(412, "Invalid UTF8 or contains NULL") from None
    if "\x00" in path:
        raise HTTPStatusError(412, "Invalid UTF8 or contains NULL")
    container, _, obj = path.partition("/")
    if not container or not obj:
        raise HTTPStatusError(412, "X-Copy-From / Destination must be container/object")
    return container, obj

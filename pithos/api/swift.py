"""The Swift API v1 under /v1: parses the path, authorizes, dispatches to account, container
and object handlers.  Handlers translate HTTP to the object service and back; Swift 2.x
behaviour where the spec is silent."""

from __future__ import annotations

import json
import os
import secrets

import falcon

from pithos.api import (
    bulk,
    bulk_upload,
    formpost,
    listing,
    object_versioning,
    quotas,
    staticweb,
    tempurl,
    versioned_writes,
)
from pithos.api.body import refuse_body, request_body
from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import (
    check_meta_update,
    decode_path,
    encoded_slash_in_container,
    http_date,
    meta_from_headers,
    meta_headers,
    path_info,
    x_timestamp,
)
from pithos.api.inflate import (
    BLOCKS_INFLATED_MAX,
    MISSING_BODY_MAX,
    MISSING_HASHES_MAX,
    Inflating,
    encoding,
    read_bounded,
)
from pithos.api.objects import ObjectHandlers, parse_until
from pithos.api.paths import RESELLER_PREFIX, Target, account_name
from pithos.core.binary_hashes import HASHES_TYPE, pack_hashes, unpack_hashes
from pithos.core.errors import InvalidArgument
from pithos.core.hashing import from_hex, to_hex
from pithos.objects import AccountInfo, UserInfo
from pithos.objects.acl import Action
from pithos.objects.names import check_names
from pithos.objects.sharing import ContainerView

# Swift's container sync headers.  There is no container sync here (/info does not offer
# it); the key is kept and shown to the account's admins as Swift's container server keeps it
# (a client may keep it as a secret of the container), under a key of our own (with a colon:
# no client header names one).
SYNC_KEY, SYNC_TO = "X-Container-Sync-Key", "X-Container-Sync-To"
SYNC_KEY_META = "sysmeta:sync-key"


# Transaction ids made from the system's randomness a few kilobytes at a time (a getrandom(2)
# per request was ~1% of a small GET's worker CPU); a forked worker drops its parent's, so no
# two workers give the same ids.  (list.pop is atomic: no two threads take the same one.)
_TXID_BYTES = 12
_txids: list[str] = []
os.register_at_fork(after_in_child=_txids.clear)


def _txid() -> str:
    try:
        return _txids.pop()
    except IndexError:
        drawn = secrets.token_bytes(_TXID_BYTES * 256).hex()
        step = 2 * _TXID_BYTES
        _txids.extend(["tx" + drawn[i:i + step] for i in range(0, len(drawn), step)])
        return _txids.pop()


class SwiftSink:
    """falcon sink for /v1/..."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.authz = services.objects.authz
        self.objects = ObjectHandlers(services)
        self.web = staticweb.StaticWeb(services, self.objects)
        self.form = formpost.FormPost(services)

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        raw = path_info(req.env)
        if raw != "/v1" and not raw.startswith("/v1/"):
            raise HTTPStatusError(404)
        txid = _txid()
        resp.set_header("X-Trans-Id", txid)
        resp.set_header("X-Openstack-Request-Id", txid)
        coding = req.env.get("HTTP_TRANSFER_ENCODING")  # (req.get_header's, without its call)
        if coding is not None and coding.strip().lower() != "chunked":
            # As Swift: only plain chunked framing (gunicorn would read "gzip, chunked" as
            # chunked and hand us gzip bytes).
            refuse_body(req.env)
            raise HTTPStatusError(501, "Unsupported Transfer-Coding header value specified in "
                                       "Transfer-Encoding header")
        segments = decode_path(raw)
        parts: list[str | None] = [*segments, None, None, None]
        account, container, obj = parts[0], parts[1] or None, parts[2] or None
        if any(not s for s in segments[:-1]):
            # /v1//c/o, /v1/a//o: an empty account or container before a name (as Swift's).
            raise HTTPStatusError(404, "empty account or container in the path")
        if not account:
            if req.method == "GET":
                self.sharing_accounts(req, resp)
                return
            # As Swift's: /v1 alone names nothing (its proxy's words, as text/html).
            raise HTTPStatusError(412, "Bad URL", html=True)
        raw_uri = req.env.get("RAW_URI") or req.env.get("REQUEST_URI") or ""
        if container is not None and encoded_slash_in_container(raw_uri):
            raise HTTPStatusError(400, "container names cannot contain '/'")
        target = Target(account_name(account), container, obj)
        try:
            check_names(self.services.limits, target.account, target.container, None)
        except InvalidArgument as exc:
            # Swift's proxy sends an account's or a container's name over its limit as
            # text/html (an object's as text/plain, below).
            raise HTTPStatusError(400, str(exc), html=True) from None
        check_names(self.services.limits, target.account, None, target.obj)
        method = req.method
        if obj is not None and container is not None:
            handler = getattr(self.objects, f"on_{method.lower()}", None)
        elif container is not None:
            handler = getattr(self, f"container_{method.lower()}", None)
        else:
            handler = getattr(self, f"account_{method.lower()}", None)
        if method in ("POST", "DELETE") and container is not None and \
                req.get_param("bulk-delete") is not None:
            # Swift's bulk middleware takes ?bulk-delete on any path of the account, not only
            # the account's own (account_post/account_delete): the body's paths are the
            # account's, whatever container or object the path names.
            bulk.bulk_delete(self.services, req, resp, target.account)
            return
        if method == "PUT" and bulk_upload.wanted(req) is not None:
            bulk_upload.extract(self.services, req, resp, target.account, container, obj)
            return
        if method == "POST" and container is not None and \
                (boundary := formpost.boundary_of(req)) is not None:
            self.form.handle(req, resp, boundary)
            return
        if handler is None:
            raise HTTPStatusError(405, f"{method} is not allowed here")
        if container is not None and method in ("GET", "HEAD") and staticweb.applies(req) \
                and self.web.handle(req, resp, target, handler):
            return
        handler(req, resp, target)

    # -- account -------------------------------------------------------------------------------

    def _account_headers(self, resp: falcon.Response, info: AccountInfo,
                         user: UserInfo | None) -> None:
        resp.set_header("X-Account-Container-Count", str(info.containers))
        resp.set_header("X-Account-Object-Count", str(info.objects))
        resp.set_header("X-Account-Bytes-Used", str(info.bytes))
        resp.set_header("X-Timestamp", x_timestamp(info.created))
        resp.set_header("X-Put-Timestamp", x_timestamp(info.created))
        meta = tempurl.visible_meta(info.meta, self.authz.owns(user, info))
        for k, v in meta_headers("X-Account-Meta-", meta).items():
            resp.set_header(k, v)
        # Every account admin sees the ACL, groups and quota (the owner, and those the ACL
        # makes admins).
        if self.authz.owns(user, info):
            if info.acl:
                resp.set_header("X-Account-Access-Control", info.acl)
            for name, members in self.services.objects.sharing.groups(info.id).items():
                resp.set_header(f"X-Account-Group-{name}", ",".join(members))
            resp.set_header("X-Account-Policy-Quota", str(info.quota_bytes or 0))

    def account_head(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        info = self.authz.account(req.context.user, t.account, Action.ACCOUNT_READ)
        self._account_headers(resp, info, req.context.user)
        listing.send_empty(resp, listing.listing_format(req))

    def account_get(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        info = self.authz.account(req.context.user, t.account, Action.ACCOUNT_READ)
        params = listing.listing_params(req, self.services.limits.account_listing_limit)
        fmt = listing.listing_format(req)
        objects = self.services.objects
        rows = objects.list_containers(info.id, until=parse_until(req),
                                       delimiter=req.get_param("delimiter") or "",
                                       **params)  # type: ignore[arg-type]
        if "shared" in req.params:
            shared = objects.sharing.shared_containers(info.name)
            rows = [r for r in rows if r.name in shared]
        self._account_headers(resp, info, req.context.user)
        listing.send_containers(resp, fmt, RESELLER_PREFIX + t.account, rows)

    def account_post(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        if req.get_param("bulk-delete") is not None:
            bulk.bulk_delete(self.services, req, resp, t.account)
            return
        user = req.context.user
        info = self.authz.account(user, t.account, Action.ACCOUNT_WRITE)
        quotas.refuse_account_quotas(req)
        meta = meta_from_headers(req.headers, "X-ACCOUNT-META-", self.services.limits)
        check_meta_update(info.meta, meta, self.services.limits)
        groups = {k[len("X-Account-Group-"):].lower(): v for k, v in req.headers.items()
                  if k.upper().startswith("X-ACCOUNT-GROUP-")}
        self.services.objects.update_account(
            user, info, meta, acl=req.get_header("X-Account-Access-Control"), groups=groups)
        resp.status = falcon.HTTP_204

    def sharing_accounts(self, req: falcon.Request, resp: falcon.Response) -> None:
        """GET /v1: the accounts that share something with me (as Pithos)."""
        user = req.context.user
        if user is None:
            raise HTTPStatusError(401, "authentication required")
        owners = self.services.objects.sharing.sharing_accounts(user)
        if listing.listing_format(req) == "json":
            resp.content_type = "application/json; charset=utf-8"
            resp.text = json.dumps([{"name": RESELLER_PREFIX + o} for o in owners])
        elif owners:
            resp.content_type = "text/plain; charset=utf-8"
            resp.text = "".join(f"{RESELLER_PREFIX}{o}\n" for o in owners)
        else:
            resp.status = falcon.HTTP_204

    def account_delete(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        if req.get_param("bulk-delete") is None:
            raise HTTPStatusError(405, "DELETE is not allowed here")
        bulk.bulk_delete(self.services, req, resp, t.account)

    # -- container -----------------------------------------------------------------------------

    def _container_policy(self, req: falcon.Request, user: UserInfo | None,
                          account: AccountInfo, meta: dict[str, str | None]
                          ) -> dict[str, object]:
        """The policy a container PUT or POST sets, and into `meta` its Swift sync key.  The
        ACLs and the sync key are Swift's owner headers (its proxy's swift_owner_headers):
        an account admin's; anyone else who may write the container (an account ACL's
        read-write user) has them dropped from the request, as Swift's proxy drops them, and
        the rest of the request is done."""
        owner = self.authz.owns(user, account)
        acls: dict[str, str | None] = {}
        for header in ("X-Container-Read", "X-Container-Write"):
            value = req.get_header(header)
            if req.get_header("X-Remove-" + header[2:]) is not None:
                value = ""
            acls[header] = value if owner else None
        sync_to = req.get_header(SYNC_TO)
        if sync_to and sync_to.strip().rstrip("/") and owner:
            # As a Swift whose container server allows no sync host and knows no realm
            # (there is no container sync here, and /info does not offer it).
            raise HTTPStatusError(400, f"Invalid {SYNC_TO}: container sync is not offered "
                                       "by this server")
        sync_key = req.get_header(SYNC_KEY)
        if sync_key is not None and owner:
            meta[SYNC_KEY_META] = sync_key or None
        return self.services.objects.container_policy(
            user, account, versioning=req.get_header("X-Container-Policy-Versioning"),
            quota=quotas.container_quota(req, self.services),
            read_acl=acls["X-Container-Read"], write_acl=acls["X-Container-Write"],
            chunking=req.get_header("X-Container-Policy-Chunking"),
            project=req.get_header("X-Container-Policy-Project"))

    def container_put(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        user = req.context.user
        info = self.authz.account(user, t.account, Action.CONTAINER_WRITE)
        storage_policy = req.get_header("X-Storage-Policy")
        if storage_policy and storage_policy.strip().lower() != "default":
            # One storage policy, /info's "default" (an empty value names it too); Swift
            # refuses a name it does not have.
            raise HTTPStatusError(400, f"Invalid X-Storage-Policy {storage_policy!r}")
        meta = meta_from_headers(req.headers, "X-CONTAINER-META-", self.services.limits)
        policy = self._container_policy(req, user, info, meta)
        versioned_writes.container_policy(req, policy, meta)
        object_versioning.container_policy(
            req, self.services.objects, self.services.objects.catalog.container(
                info.id, t.container) if req.get_header(object_versioning.HEADER) else None,
            policy, meta)
        created = self.services.objects.create_container(info, t.container, meta, policy)
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_202

    def container_post(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        user = req.context.user
        if "blocks" in req.params or "missing" in req.params:
            self._blocks(req, resp, t)
            return
        info, container = self.authz.container(user, t.account, t.container,
                                                Action.CONTAINER_WRITE)
        assert info is not None
        meta = meta_from_headers(req.headers, "X-CONTAINER-META-", self.services.limits)
        if meta:
            check_meta_update(self.services.objects.container_detail(container).meta, meta,
                              self.services.limits)
        policy = self._container_policy(req, user, info, meta)
        versioned_writes.container_policy(req, policy, meta)
        object_versioning.container_policy(req, self.services.objects, container, policy, meta)
        self.services.objects.update_container(container, meta, policy)
        resp.status = falcon.HTTP_204
        content_type = (req.content_type or "").partition(";")[0].strip().lower()
        if content_type == "application/octet-stream" and req.content_length != 0:
            # Pithos+: a container POST with raw data stores its blocks (as POST ?blocks)
            # and answers 202 with their hashes, one a line (or JSON, by format).
            hashes = [to_hex(h) for h in self._store_blocks(req, t)]
            resp.status = falcon.HTTP_202
            fmt = listing.listing_format(req)
            resp.content_type = listing.CONTENT_TYPES["json" if fmt == "json" else "plain"]
            resp.text = json.dumps(hashes) if fmt == "json" else "".join(
                f"{h}\n" for h in hashes)

    def _blocks(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        """POST ?blocks: raw blocks in the body (cut at the block size, or at the lengths in
        X-Block-Lengths), answered with their hashes.  POST ?missing: a JSON list of hashes,
        answered with those the client must send.  Both only for who may write here, and
        both answer for the caller's own account only (dedup without leaking)."""
        if "missing" in req.params:
            user, account_id = self._block_writer(req, t)
            how = encoding(req.get_header("Content-Encoding"), req.env)
            raw = request_body(req.env, None, self.services.client_timeout_s)
            body = raw if how is None else Inflating(raw, how, MISSING_BODY_MAX, req.env)
            binary = (req.content_type or "").partition(";")[0].strip().lower() == \
                HASHES_TYPE
            try:
                data = read_bounded(body, req.content_length if how is None else None,
                                    MISSING_BODY_MAX, "hash list")
                wanted = unpack_hashes(data) if binary else \
                    [from_hex(h) for h in json.loads(data)]
            except ValueError as exc:
                if binary:
                    raise HTTPStatusError(400, str(exc)) from None
                raise HTTPStatusError(400, "expected a JSON list of hex hashes") from None
            except (TypeError, RecursionError):
                raise HTTPStatusError(400, "expected a JSON list of hex hashes") from None
            if len(wanted) > MISSING_HASHES_MAX:
                raise HTTPStatusError(
                    413, f"at most {MISSING_HASHES_MAX} hashes in one POST ?missing")
            missing = self.services.hashmaps.missing(account_id, wanted, user)
            if binary:  # answered in kind: the hashes to send, back to back
                resp.status = falcon.HTTP_200
                resp.content_type = HASHES_TYPE
                resp.data = pack_hashes(missing)
                return
        else:
            missing = self._store_blocks(req, t)
        resp.status = falcon.HTTP_200
        resp.content_type = "application/json; charset=utf-8"
        resp.text = json.dumps([to_hex(h) for h in missing])

    def _block_writer(self, req: falcon.Request, t: Target) -> tuple[UserInfo, int]:
        """(the user, its account's id) for who may write objects here and is logged in."""
        assert t.container is not None
        user = req.context.user
        self.authz.container(user, t.account, t.container, Action.OBJECT_WRITE)
        if user is None:
            raise HTTPStatusError(401, "log in to upload blocks")
        return user, self.services.objects.account_id(user.account)

    def _store_blocks(self, req: falcon.Request, t: Target) -> list[bytes]:
        """The body's blocks (cut at the block size, or at X-Block-Lengths) stored; their
        hashes, in order."""
        user, account_id = self._block_writer(req, t)
        lengths_text = req.get_header("X-Block-Lengths")
        try:
            lengths = [int(n) for n in lengths_text.split(",")] if lengths_text else None
        except ValueError:
            raise HTTPStatusError(400, "X-Block-Lengths is a comma-separated list") from None
        if req.content_length is None and "chunked" not in (
                req.get_header("Transfer-Encoding") or "").lower():
            refuse_body(req.env)
            raise HTTPStatusError(411, "Missing Content-Length header.")
        # Read from the socket (as an object PUT's body), not through gunicorn's reader, which
        # receives 8 KiB at a time and copies each piece twice: it was a third of a worker's
        # time holding the GIL on the sync bench's first sync (py-spy, --gil).
        # Its pieces in the upload buffers an object PUT uses (READ_PIECE each: reused once
        # no block refers to them any more), not a fresh zeroed megabyte a read.
        body, length = request_body(req.env, self.objects.pieces,
                                    self.services.client_timeout_s), req.content_length
        how = encoding(req.get_header("Content-Encoding"), req.env)
        if how is not None:
            # Inflated as it is read, never past the lengths' sum (or a bound): 413 beyond.
            body = Inflating(body, how, sum(lengths) if lengths else BLOCKS_INFLATED_MAX,
                             req.env)
            length = None
        with self.services.objects.upload_lease():
            hashes = self.services.hashmaps.store_blocks(account_id, body, length, lengths,
                                                         user)
        if how is not None and lengths and body.read(1):
            raise HTTPStatusError(413, "the inflated body is longer than X-Block-Lengths")
        return hashes

    def container_delete(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        _, container = self.authz.container(req.context.user, t.account, t.container,
                                            Action.CONTAINER_WRITE)
        until = parse_until(req)
        if until is not None:
            # Pithos: DELETE ?until= purges the history of every object in the container.
            self.services.objects.purge_history(container, None, until)
        else:
            object_versioning.check_empty(self.services.objects, container)
            self.services.objects.delete_container(container)
        resp.status = falcon.HTTP_204

    def _container_headers(self, resp: falcon.Response, view: ContainerView,
                           user: UserInfo | None) -> None:
        account = view.account
        c = self.services.objects.container_detail(view.container)
        if view.sharee is not None:
            # A sharee sees the objects shared with it and nothing of the owner's container:
            # totals of what it sees, no metadata, no policy (issue 26, finding 14).
            objects, used = self.services.objects.sharing.sharee_totals(view)
        else:
            objects, used = c.objects, c.bytes
        resp.set_header("X-Container-Object-Count", str(objects))
        resp.set_header("X-Container-Bytes-Used", str(used))
        resp.set_header("X-Timestamp", x_timestamp(c.created))
        resp.set_header("X-Put-Timestamp", x_timestamp(c.created))
        # Swift's is the last PUT or POST of the container; the catalog keeps its creation.
        resp.set_header("Last-Modified", http_date(c.created))
        resp.set_header("X-Storage-Policy", "default")
        resp.set_header("X-Container-Block-Size", str(self.services.block_size))
        resp.set_header("X-Container-Block-Hash", "blake3")
        if view.sharee is not None:
            return
        resp.set_header("X-Container-Policy-Versioning",
                        versioned_writes.policy_shown(c.versioning))
        versioned_writes.container_headers(resp, c)
        object_versioning.container_headers(resp, self.services.objects, c)
        resp.set_header("X-Container-Policy-Quota", str(c.quota_bytes or 0))
        resp.set_header("X-Container-Policy-Chunking", c.chunking or "fixed")
        # (Keys with a colon are our middleware's system metadata, never a client's.)
        meta = tempurl.visible_meta({k: v for k, v in c.meta.items() if ":" not in k},
                                    self.authz.owns(user, account))
        for k, v in meta_headers("X-Container-Meta-", meta).items():
            resp.set_header(k, v)
        if self.authz.owns(user, account):
            if c.read_acl:
                resp.set_header("X-Container-Read", c.read_acl)
            if c.write_acl:
                resp.set_header("X-Container-Write", c.write_acl)
            if c.meta.get(SYNC_KEY_META):
                resp.set_header(SYNC_KEY, c.meta[SYNC_KEY_META])

    def container_head(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        user = req.context.user
        # As a GET: who lists the container, or a sharee of objects in it (its own view).
        view = self.services.objects.sharing.listing_access(user, t.account, t.container,
                                                            False, req.referer)
        self._container_headers(resp, view, user)
        listing.send_empty(resp, listing.listing_format(req))

    def _changes(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        """GET ?changes_since=CURSOR[&limit=N]: the change feed, for who may list the
        container (a sharee's view of it has no feed: it would name what is not shared)."""
        assert t.container is not None
        _, container = self.authz.container(req.context.user, t.account, t.container,
                                            Action.LISTING)
        limit_text = req.get_param("limit") or "1000"
        if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 6:
            raise HTTPStatusError(400, "limit is a number of changes (1 to 10000)")
        feed = self.services.objects.changes(container, req.get_param("changes_since") or "",
                                             int(limit_text))
        listing.send_changes(resp, feed)

    def container_get(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        if "changes_since" in req.params:
            self._changes(req, resp, t)
            return
        user = req.context.user
        objects = self.services.objects
        # `view.visible`: a filter, for who sees only what is shared with them (or ?shared).
        view = objects.sharing.listing_access(user, t.account, t.container,
                                              "shared" in req.params, req.referer)
        c, visible = view.container, view.visible
        until = parse_until(req)
        if until is not None:
            # A listing as it was names deleted objects: the container's history, like an
            # object's, is for who may write in it, not for a read ACL or a sharee (issue
            # 26, finding 8; found by tests/test_authz_matrix.py).
            self.authz.container(user, t.account, t.container, Action.OBJECT_WRITE)
        params = listing.listing_params(req, self.services.limits.container_listing_limit)
        if "versions" in req.params:
            # Swift's object versioning: every version and delete marker, for who may see
            # the container's history (as ?until=, above; not a sharee's view).
            self.authz.container(user, t.account, t.container, Action.OBJECT_WRITE)
            self._container_headers(resp, view, user)
            object_versioning.send_listing(req, resp, objects, c, params)
            return
        delimiter = req.get_param("delimiter") or ""
        path = req.get_param("path")
        if path is not None:
            entries = objects.list_path(c.id, path, **params)  # type: ignore[arg-type]
        else:
            entries = objects.list_objects(c.id, delimiter=delimiter, until=until,
                                           **params)  # type: ignore[arg-type]
        if visible is not None:
            entries = [e for e in entries if visible(e.name, e.subdir)]
        self._container_headers(resp, view, user)
        if visible is None and object_versioning.send_current(
                req, resp, objects, c, RESELLER_PREFIX + t.account, entries):
            return
        listing.send_objects(resp, listing.listing_format(req), t.container, entries)

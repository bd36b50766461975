"""The Swift API v1 under /v1: parses the path, authorizes, dispatches to account, container
and object handlers.  Handlers translate HTTP to the object service and back; Swift 2.x
behaviour where the spec is silent."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import falcon

from pithos.api import bulk, listing
from pithos.api.auth import RESELLER_PREFIX
from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import (
    check_names,
    decode_path,
    encoded_slash_in_container,
    meta_from_headers,
    meta_headers,
    path_info,
    x_timestamp,
)
from pithos.api.objects import ObjectHandlers, parse_until
from pithos.catalog import AccountInfo, ContainerInfo, UserInfo
from pithos.core.errors import Conflict, InvalidArgument
from pithos.core.hashing import from_hex, to_hex
from pithos.objects.acl import (
    Action,
    decide,
    parse_account_acl,
    sharing_right,
    validate_container_acl,
)


@dataclass
class Target:
    account: str
    container: str | None
    obj: str | None


def account_name(segment: str) -> str:
    return segment[len(RESELLER_PREFIX):] if segment.startswith(RESELLER_PREFIX) else segment


class Authz:
    """Authorization against the catalog: 401 for anonymous refusals, 403 otherwise, and never
    a hint of whether another account's container or object exists."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def account(self, user: UserInfo | None, name: str, action: Action,
                autocreate: bool = True) -> AccountInfo:
        catalog = self.services.catalog
        info = catalog.account(name)
        if info is None and autocreate and user is not None and user.account == name \
                and user.admin:
            catalog.ensure_account(name)
            info = catalog.account(name)
        self.require(user, name, info.acl if info else None, action)
        if info is None:
            raise HTTPStatusError(404, "no such account")
        return info

    def require(self, user: UserInfo | None, account: str, account_acl: str | None,
                action: Action, container: ContainerInfo | None = None) -> None:
        decision = decide(user, account, account_acl, action, container)
        if not decision.allowed:
            raise HTTPStatusError(401 if decision.needs_login else 403,
                                  "authentication required" if decision.needs_login
                                  else "access denied")

    def container(self, user: UserInfo | None, account: str, name: str,
                  action: Action) -> tuple[AccountInfo | None, ContainerInfo]:
        """The container, if `user` may do `action` in it; a refusal comes before any 404
        so that outsiders learn nothing about names."""
        info, container = self._account_and_container(user, account, name)
        self.require(user, account, info.acl if info else None, action, container)
        if container is None:
            raise HTTPStatusError(404, "no such container")
        return info, container

    def _account_and_container(self, user: UserInfo | None, account: str, name: str
                               ) -> tuple[AccountInfo | None, ContainerInfo | None]:
        """Both by name in one catalog statement; only ids and ACLs (no counters: they cost
        aggregate queries).  The account's admin makes it on first use."""
        catalog = self.services.catalog
        info, container = catalog.account_and_container(account, name)
        if info is None and user is not None and user.account == account and user.admin:
            catalog.ensure_account(account)
            info, container = catalog.account_and_container(account, name)
        return info, container

    def object_access(self, user: UserInfo | None, account: str, container_name: str,
                      obj: str, action: Action) -> tuple[AccountInfo | None, ContainerInfo,
                                                          str | None]:
        """Like `container`, but an object shared with the user (X-Object-Sharing on it or
        on a pseudo-directory above it) is reachable too.  The third value is the right the
        sharing gives ("read"/"write"), None when the account or container grants it."""
        info, container = self._account_and_container(user, account, container_name)
        try:
            self.require(user, account, info.acl if info else None, action, container)
        except HTTPStatusError as refused:
            if user is None or refused.status != 403 or action not in (Action.OBJECT_READ,
                                                                       Action.OBJECT_WRITE):
                raise
            right = self._shared_right(user, account, info, container, obj)
            if right is None or (action is Action.OBJECT_WRITE and right != "write"):
                raise
            assert info is not None and container is not None
            return info, container, right
        if container is None:
            raise HTTPStatusError(404, "no such container")
        return info, container, None

    def shared_right(self, user: UserInfo | None, account: str, container_name: str,
                     obj: str) -> str | None:
        info, container = self.services.catalog.account_and_container(account, container_name)
        return self._shared_right(user, account, info, container, obj)

    def _shared_right(self, user: UserInfo | None, account: str, info: AccountInfo | None,
                      container: ContainerInfo | None, obj: str) -> str | None:
        """What X-Object-Sharing gives `user` on `obj` ("read"/"write"; None: nothing).  A
        container known to hold no sharing entry is not searched."""
        if info is None or container is None or container.has_sharing is False:
            return None
        catalog = self.services.catalog
        found = catalog.sharing_for(container.id, obj)
        if found is None:
            return None
        return sharing_right(found[1], found[2], user, account, catalog.groups(info.id))

    def owns(self, user: UserInfo | None, account: AccountInfo | None) -> bool:
        """The owner (or an account admin): only they change sharing, publish, or set
        groups."""
        return account is not None and decide(user, account.name, account.acl,
                                              Action.ACCOUNT_ADMIN).allowed


class SwiftSink:
    """falcon sink for /v1/..."""

    def __init__(self, services: Services) -> None:

        self.services = services
        self.authz = Authz(services)
        self.objects = ObjectHandlers(services, self.authz)

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        raw = path_info(req.env)
        if raw != "/v1" and not raw.startswith("/v1/"):
            raise HTTPStatusError(404)
        txid = "tx" + secrets.token_hex(12)
        resp.set_header("X-Trans-Id", txid)
        resp.set_header("X-Openstack-Request-Id", txid)
        parts: list[str | None] = [*decode_path(raw), None, None, None]
        account, container, obj = parts[0], parts[1] or None, parts[2] or None
        if not account:
            if req.method == "GET":
                self.sharing_accounts(req, resp)
                return
            raise HTTPStatusError(400, "no account in the path")
        raw_uri = req.env.get("RAW_URI") or req.env.get("REQUEST_URI") or ""
        if container is not None and encoded_slash_in_container(raw_uri):
            raise HTTPStatusError(400, "container names cannot contain '/'")
        target = Target(account_name(account), container, obj)
        check_names(self.services.limits, target.account, target.container, target.obj)
        method = req.method
        if obj is not None and container is not None:
            handler = getattr(self.objects, f"on_{method.lower()}", None)
        elif container is not None:
            handler = getattr(self, f"container_{method.lower()}", None)
        else:
            handler = getattr(self, f"account_{method.lower()}", None)
        if handler is None:
            raise HTTPStatusError(405, f"{method} is not allowed here")
        handler(req, resp, target)

    # -- account -------------------------------------------------------------------------------

    def _account_headers(self, resp: falcon.Response, info: AccountInfo,
                         user: UserInfo | None) -> None:
        resp.set_header("X-Account-Container-Count", str(info.containers))
        resp.set_header("X-Account-Object-Count", str(info.objects))
        resp.set_header("X-Account-Bytes-Used", str(info.bytes))
        resp.set_header("X-Timestamp", x_timestamp(info.created))
        resp.set_header("X-Put-Timestamp", x_timestamp(info.created))
        for k, v in meta_headers("X-Account-Meta-", info.meta).items():
            resp.set_header(k, v)
        # Every account admin sees the ACL (the owner, and those the ACL makes admins).
        if info.acl and decide(user, info.name, info.acl, Action.ACCOUNT_ADMIN).allowed:
            resp.set_header("X-Account-Access-Control", info.acl)
        if self.authz.owns(user, info):
            for name, members in self.services.catalog.groups(info.id).items():
                resp.set_header(f"X-Account-Group-{name}", ",".join(members))
            resp.set_header("X-Account-Policy-Quota", str(info.quota_bytes or 0))

    def account_head(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        info = self.authz.account(req.context.user, t.account, Action.ACCOUNT_READ)
        self._account_headers(resp, info, req.context.user)
        resp.status = falcon.HTTP_204

    def account_get(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        info = self.authz.account(req.context.user, t.account, Action.ACCOUNT_READ)
        params = listing.listing_params(req, self.services.limits.account_listing_limit)
        fmt = listing.listing_format(req)
        rows = self.services.catalog.list_containers(
            info.id, until=parse_until(req), **params)  # type: ignore[arg-type]
        if "shared" in req.params:
            shared = {c for owner, c, _, _ in self.services.catalog.all_sharing()
                      if owner == info.name}
            rows = [r for r in rows if r[0] in shared]
        self._account_headers(resp, info, req.context.user)
        listing.send_containers(resp, fmt, RESELLER_PREFIX + t.account, rows)

    def account_post(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        if req.get_param("bulk-delete") is not None:
            bulk.bulk_delete(self.services, self.authz, req, resp, t.account)
            return
        user = req.context.user
        info = self.authz.account(user, t.account, Action.ACCOUNT_WRITE)
        meta = meta_from_headers(req.headers, "X-ACCOUNT-META-", self.services.limits)
        acl = req.get_header("X-Account-Access-Control")
        if acl is not None:
            self.authz.require(user, t.account, info.acl, Action.ACCOUNT_ADMIN)
            try:
                parse_account_acl(acl)
            except InvalidArgument as exc:
                raise HTTPStatusError(400, str(exc)) from None
        groups = {k[len("X-Account-Group-"):].lower(): v for k, v in req.headers.items()
                  if k.upper().startswith("X-ACCOUNT-GROUP-")}
        if groups:
            self.authz.require(user, t.account, info.acl, Action.ACCOUNT_ADMIN)
            for name, members in groups.items():
                if not name or len(name) > 128:
                    raise HTTPStatusError(400, "bad group name")
                self.services.catalog.set_group(
                    info.id, name, [m.strip() for m in members.split(",") if m.strip()])
        self.services.catalog.update_account(info.id, meta, acl=acl, set_acl=acl is not None)
        resp.status = falcon.HTTP_204

    def sharing_accounts(self, req: falcon.Request, resp: falcon.Response) -> None:
        """GET /v1: the accounts that share something with me (as Pithos)."""
        user = req.context.user
        if user is None:
            raise HTTPStatusError(401, "authentication required")
        catalog = self.services.catalog
        owners = []
        groups_of: dict[str, dict[str, list[str]]] = {}
        for owner, _, read, write in catalog.all_sharing():
            if owner == user.account or owner in owners:
                continue
            if owner not in groups_of:
                info = catalog.account(owner)
                groups_of[owner] = catalog.groups(info.id) if info else {}
            if sharing_right(read, write, user, owner, groups_of[owner]):
                owners.append(owner)
        owners.sort()
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
        bulk.bulk_delete(self.services, self.authz, req, resp, t.account)

    # -- container -----------------------------------------------------------------------------

    def _container_policy(self, req: falcon.Request, user: UserInfo | None, t: Target,
                          account: AccountInfo) -> dict[str, object]:
        policy: dict[str, object] = {}
        versioning = req.get_header("X-Container-Policy-Versioning")
        if versioning is not None:
            if versioning.lower() not in ("auto", "none"):
                raise HTTPStatusError(400, "X-Container-Policy-Versioning is auto or none")
            policy["versioning"] = versioning.lower()
        quota = req.get_header("X-Container-Policy-Quota")
        if quota is not None:
            try:
                policy["quota_bytes"] = int(quota) or None
                if int(quota) < 0:
                    raise ValueError
            except ValueError:
                raise HTTPStatusError(400, "X-Container-Policy-Quota is a number of bytes "
                                           "(0: none)") from None
        for header, column, for_read in (("X-Container-Read", "read_acl", True),
                                         ("X-Container-Write", "write_acl", False)):
            value = req.get_header(header)
            if req.get_header("X-Remove-" + header[2:]) is not None:
                value = ""
            if value is not None:
                # Only the account's owner (or an account admin) changes who may get in.
                self.authz.require(user, t.account, account.acl, Action.ACCOUNT_ADMIN)
                try:
                    policy[column] = validate_container_acl(value, for_read) or None
                except InvalidArgument as exc:
                    raise HTTPStatusError(400, str(exc)) from None
        return policy

    def container_put(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        if "/" in t.container:
            raise HTTPStatusError(400, "container names cannot contain '/'")
        user = req.context.user
        info = self.authz.account(user, t.account, Action.CONTAINER_WRITE)
        meta = meta_from_headers(req.headers, "X-CONTAINER-META-", self.services.limits)
        policy = self._container_policy(req, user, t, info)
        created = self.services.catalog.create_container(info.id, t.container, meta, **policy)
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
        policy = self._container_policy(req, user, t, info)
        self.services.catalog.update_container(container.id, meta, **policy)
        resp.status = falcon.HTTP_204

    def _blocks(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        """POST ?blocks: raw blocks in the body (cut at the block size, or at the lengths in
        X-Block-Lengths), answered with their hashes.  POST ?missing: a JSON list of hashes,
        answered with those the client must send.  Both only for who may write here, and
        both answer for the caller's own account only (dedup without leaking)."""
        assert t.container is not None
        user = req.context.user
        self.authz.container(user, t.account, t.container, Action.OBJECT_WRITE)
        if user is None:
            raise HTTPStatusError(401, "log in to upload blocks")
        account_id = self.services.catalog.ensure_account(user.account)
        hashmaps = self.services.hashmaps
        if "missing" in req.params:
            try:
                wanted = [from_hex(h) for h in json.loads(req.stream.read(16 * 1024 * 1024))]
            except (ValueError, TypeError):
                raise HTTPStatusError(400, "expected a JSON list of hex hashes") from None
            missing = hashmaps.missing(account_id, wanted)
        else:
            lengths_text = req.get_header("X-Block-Lengths")
            try:
                lengths = ([int(n) for n in lengths_text.split(",")] if lengths_text
                           else None)
            except ValueError:
                raise HTTPStatusError(400, "X-Block-Lengths is a comma-separated list") \
                    from None
            if req.content_length is None and "chunked" not in (
                    req.get_header("Transfer-Encoding") or "").lower():
                raise HTTPStatusError(411, "Length Required")
            with self.services.objects.upload_lease():
                missing = hashmaps.store_blocks(account_id, req.stream, req.content_length,
                                                lengths)
        resp.status = falcon.HTTP_200
        resp.content_type = "application/json; charset=utf-8"
        resp.text = json.dumps([to_hex(h) for h in missing])

    def container_delete(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        _, container = self.authz.container(req.context.user, t.account, t.container,
                                            Action.CONTAINER_WRITE)
        until = parse_until(req)
        if until is not None:
            # Pithos: DELETE ?until= purges the history of every object in the container.
            self.services.catalog.purge_history(container.id, None, until)
            resp.status = falcon.HTTP_204
            return
        try:
            self.services.catalog.delete_container(container.id)
        except Conflict:
            raise HTTPStatusError(409, "There was a conflict when trying to complete your "
                                       "request: the container is not empty.") from None
        resp.status = falcon.HTTP_204

    def _container_headers(self, resp: falcon.Response, account: AccountInfo | None,
                           c: ContainerInfo, user: UserInfo | None) -> None:
        c = self.services.catalog.container(c.account_id, c.name) or c  # with its counters
        resp.set_header("X-Container-Object-Count", str(c.objects))
        resp.set_header("X-Container-Bytes-Used", str(c.bytes))
        resp.set_header("X-Timestamp", x_timestamp(c.created))
        resp.set_header("X-Put-Timestamp", x_timestamp(c.created))
        resp.set_header("X-Storage-Policy", "default")
        resp.set_header("X-Container-Block-Size", str(self.services.block_size))
        resp.set_header("X-Container-Block-Hash", "blake3")
        resp.set_header("X-Container-Policy-Versioning", c.versioning or "auto")
        resp.set_header("X-Container-Policy-Quota", str(c.quota_bytes or 0))
        for k, v in meta_headers("X-Container-Meta-", c.meta).items():
            resp.set_header(k, v)
        if account is not None and decide(user, account.name, account.acl,
                                          Action.ACCOUNT_ADMIN).allowed:
            if c.read_acl:
                resp.set_header("X-Container-Read", c.read_acl)
            if c.write_acl:
                resp.set_header("X-Container-Write", c.write_acl)

    def container_head(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        user = req.context.user
        account, c = self.authz.container(user, t.account, t.container, Action.LISTING)
        self._container_headers(resp, account, c, user)
        resp.status = falcon.HTTP_204

    def container_get(self, req: falcon.Request, resp: falcon.Response, t: Target) -> None:
        assert t.container is not None
        user = req.context.user
        visible = None  # a filter, for who sees only what is shared with them
        try:
            account, c = self.authz.container(user, t.account, t.container, Action.LISTING)
            if "shared" in req.params:
                visible = self._shared_filter(account, c, None)
        except HTTPStatusError as refused:
            if user is None or refused.status != 403:
                raise
            account, c, visible = self._shared_listing(user, t, refused)
        params = listing.listing_params(req, self.services.limits.container_listing_limit)
        delimiter = req.get_param("delimiter") or ""
        path = req.get_param("path")
        if len(delimiter) > 1:
            raise HTTPStatusError(412, "Bad delimiter")
        if path is not None:
            entries = self.services.objects.list_path(
                c.id, path, **params)  # type: ignore[arg-type]
        else:
            entries = self.services.catalog.list_objects(
                c.id, delimiter=delimiter, until=parse_until(req),
                **params)  # type: ignore[arg-type]
        if visible is not None:
            entries = [e for e in entries if visible(e.name, e.subdir)]
        self._container_headers(resp, account, c, user)
        listing.send_objects(resp, listing.listing_format(req), t.container, entries)

    def _shared_listing(self, user: UserInfo, t: Target, refused: HTTPStatusError
                        ) -> tuple[AccountInfo, ContainerInfo, Callable[[str, bool], bool]]:
        """A container listing for someone objects of it are shared with: those objects."""
        assert t.container is not None
        catalog = self.services.catalog
        account = catalog.account(t.account)
        c = catalog.container(account.id, t.container) if account else None
        if account is None or c is None:
            raise refused
        groups = catalog.groups(account.id)
        paths = [p for p, r, w in catalog.container_sharing(c.id)
                 if sharing_right(r, w, user, account.name, groups)]
        if not paths:
            raise refused
        return account, c, self._shared_filter(account, c, user)

    def _shared_filter(self, account: AccountInfo | None, c: ContainerInfo,
                       user: UserInfo | None) -> Callable[[str, bool], bool]:
        """Keep objects with sharing that applies (to `user`, or for the owner's ?shared: to
        anyone) and the pseudo-directories that lead to them."""
        catalog = self.services.catalog
        assert account is not None
        groups = catalog.groups(account.id)
        entries = catalog.container_sharing(c.id)

        def keep(name: str, subdir: bool) -> bool:
            if subdir:
                return any(p.startswith(name) or name.startswith(p) for p, _, _ in entries)
            found = catalog.sharing_for(c.id, name)
            if found is None:
                return False
            return user is None or sharing_right(found[1], found[2], user, account.name,
                                                 groups) is not None

        return keep

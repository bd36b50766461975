"""Authentication endpoints (Swift v1.0 and a Keystone-v3-style password token) and the
middleware that puts the authenticated user (or None) on every request."""

from __future__ import annotations

import time
from typing import Any

import falcon

from pithos.api import (
    bulk_upload,
    formpost,
    object_versioning,
    quotas,
    slo,
    symlink,
    tempurl,
    versioned_writes,
)
from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.paths import base_url, storage_url
from pithos.api.ui import cookie_user
from pithos.core.errors import InvalidArgument
from pithos.identity import split_user
from pithos.objects import bulk

# The paths whose requests carry a token: the Swift API, and the OpenStack APIs listed in
# the Keystone catalog (image, compute).  Auth endpoints, /info and public links take none.
TOKEN_PREFIXES = ("/v1", "/image/", "/compute/")
# Where the web UI's session cookie is read too (pithos.api.ui): its own endpoints, and
# Astakos' quota view (pithos.api.keystone), which the UI shows.
COOKIE_PREFIXES = (*TOKEN_PREFIXES, "/ui/api/", "/account/v1.0/")


class TokenMiddleware:
    """Resolves X-Auth-Token / X-Storage-Token to a user on `req.context.user`.  A request
    without a token goes on anonymously (the resource decides: only public reads pass); a
    request with a bad or expired token is refused with 401 here."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.user = None
        if not req.path.startswith(COOKIE_PREFIXES):
            return  # auth endpoints, /info and public links take no token
        token = req.get_header("X-Auth-Token") or req.get_header("X-Storage-Token")
        if token and req.path.startswith(TOKEN_PREFIXES):
            user = self.services.identity.authenticate(token)
            if user is None:
                raise HTTPStatusError(401, "invalid or expired token")
            req.context.user = user
        elif not token and not (req.path == "/ui/api/session" and req.method == "POST"):
            # No token: the web UI's session cookie, with its CSRF header (signing in is
            # the one request that needs neither).  A token, when sent, decides alone.
            req.context.user = cookie_user(self.services, req)


class AuthV1:
    """GET /auth/v1.0 with X-Auth-User: account:user and X-Auth-Key (tempauth)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = req.get_header("X-Auth-User") or req.get_header("X-Storage-User")
        key = req.get_header("X-Auth-Key") or req.get_header("X-Storage-Pass")
        if not spec or key is None:
            raise HTTPStatusError(401, "X-Auth-User and X-Auth-Key are required")
        try:
            account, user = split_user(spec)
        except InvalidArgument:
            raise HTTPStatusError(401, "X-Auth-User must be account:user") from None
        found = self.services.identity.login(account, user, key)
        if found is None:
            raise HTTPStatusError(401, "bad credentials")
        _, token, expires = found
        resp.status = falcon.HTTP_200
        resp.set_header("X-Auth-Token", token)
        resp.set_header("X-Storage-Token", token)
        resp.set_header("X-Auth-Token-Expires", str(int(expires - time.time())))
        resp.set_header("X-Storage-Url", storage_url(self.services, req, account))
        resp.content_type = "text/plain"
        resp.text = ""

    on_head = on_get


class KeystoneVersion:
    """GET /v3: version discovery, for clients that ask before logging in."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": {
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{base_url(self.services, req)}/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}}


def info_document(services: Services) -> dict[str, Any]:
    limits = services.limits
    return {
        "swift": {
            "version": "2.33.0-pithos",
            "max_file_size": limits.max_file_size,
            "max_object_name_length": limits.max_object_name_length,
            "max_container_name_length": limits.max_container_name_length,
            "max_account_name_length": limits.max_account_name_length,
            "max_meta_name_length": limits.max_meta_name_length,
            "max_meta_value_length": limits.max_meta_value_length,
            "max_meta_count": limits.max_meta_count,
            "max_meta_overall_size": limits.max_meta_overall_size,
            "container_listing_limit": limits.container_listing_limit,
            "account_listing_limit": limits.account_listing_limit,
            "max_header_size": limits.max_header_size,
            "extra_header_count": 0,
            "strict_cors_mode": True,
            "policies": [{"name": "default", "default": True}],
            "allow_account_management": False,
            "account_autocreate": True,
        },
        "slo": {
            "max_manifest_segments": limits.max_manifest_segments,
            "max_manifest_size": limits.max_manifest_size,
            "min_segment_size": limits.min_segment_size,
            "yield_frequency": slo.YIELD_FREQUENCY_S,  # ?heartbeat=on of a manifest PUT
        },
        "tempauth": {"account_acls": True},
        "bulk_delete": bulk.limits_info(),
        "bulk_upload": bulk_upload.info(),
        "tempurl": tempurl.info(),
        "formpost": formpost.info(),
        "staticweb": {},
        **quotas.info(),
        "symlink": symlink.info(),
        "versioned_writes": versioned_writes.info(),
        "object_versioning": object_versioning.info(),
        "pithos": {"block_size": services.block_size, "block_hash": "blake3"},
    }


class Info:
    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = info_document(self.services)

    on_head = on_get

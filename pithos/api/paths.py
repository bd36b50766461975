"""What the API's resources share about paths and URLs: the parsed /v1 path (`Target`), the
reseller prefix of account names, and the URLs we hand out (storage URLs, public links)."""

from __future__ import annotations

from dataclasses import dataclass

import falcon

from pithos.api.context import Services

RESELLER_PREFIX = "AUTH_"


@dataclass
class Target:
    """The account, container and object a /v1 request names (None: not in the path)."""
    account: str
    container: str | None
    obj: str | None


def account_name(segment: str) -> str:
    """The account of a path segment or header: "AUTH_name" or "name"."""
    return segment[len(RESELLER_PREFIX):] if segment.startswith(RESELLER_PREFIX) else segment


def base_url(services: Services, req: falcon.Request) -> str:
    """Where clients reach us: the configured public URL, else the request's own."""
    return (services.public_url or req.prefix).rstrip("/")


def storage_url(services: Services, req: falcon.Request, account: str) -> str:
    return f"{base_url(services, req)}/v1/{RESELLER_PREFIX}{account}"


def public_url(services: Services, req: falcon.Request, token: str) -> str:
    """The link of a published object."""
    return f"{base_url(services, req)}/public/{token}"

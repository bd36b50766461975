"""What every resource needs, built once per worker process by the entry point."""

from __future__ import annotations

from dataclasses import dataclass

from pithos.identity import Identity
from pithos.objects.hashmaps import Hashmaps
from pithos.objects.names import Limits
from pithos.objects.service import ObjectService
from pithos.projects import Projects


@dataclass
class Services:
    # The object service is the API's only door to accounts, containers and objects; the
    # API never touches the catalog.
    identity: Identity
    objects: ObjectService
    limits: Limits
    block_size: int
    hashmaps: Hashmaps
    # Where clients reach us, when a load balancer in front changes it (else from the request).
    public_url: str | None = None
    # The longest a request body's read waits for the client's next bytes (ClientTimeout,
    # 408, past it); None: forever.
    client_timeout_s: float | None = None
    # The services listed in a Keystone token's catalog beside object-store, as (type, name,
    # path below the base URL): the image API always, compute when the server runs it
    # (`pithos serve --compute`).
    endpoints: tuple[tuple[str, str, str], ...] = (("image", "glance", "/image"),)
    # The web UI's cookies always get the Secure flag (else only over TLS): for a server
    # behind a TLS proxy that does not say so (PITHOS_UI_SECURE_COOKIES=1).
    ui_secure_cookies: bool = False
    # Projects, passwords and quotas (pithos.projects); None: made over the identity's
    # catalog when first needed (Services built by hand, in tests).
    projects: Projects | None = None

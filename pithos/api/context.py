"""What every resource needs, built once per worker process by the entry point."""

from __future__ import annotations

from dataclasses import dataclass

from pithos.catalog import Catalog
from pithos.identity import Identity
from pithos.objects.hashmaps import Hashmaps
from pithos.objects.service import Limits, ObjectService


@dataclass
class Services:
    catalog: Catalog
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

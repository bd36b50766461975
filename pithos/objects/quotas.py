"""Swift's container quotas (the `container_quotas` middleware of a Swift proxy) on top of
the Pithos ones: X-Container-Meta-Quota-Bytes and X-Container-Meta-Quota-Count live in the
container's metadata, as Swift keeps them, and an upload is refused (413, "Upload exceeds
quota.") when the container's bytes plus the upload's length, or its object count plus one,
would pass them (Swift's rule: a replaced object is not subtracted).

A byte quota is also the container's Pithos quota (X-Container-Policy-Quota), enforced
atomically at commit; a container with only a count quota, or a byte quota of 0 (nothing may
be written, which the Pithos quota cannot say: 0 is none there), has the Pithos quota
`MARKER` (no byte limit).  Either way the container's `quota_bytes` is set, which every
request already reads with the container: a container without one costs nothing more.
"""

from __future__ import annotations

from pithos.catalog import Catalog, ContainerInfo
from pithos.core.errors import QuotaExceeded

BYTES, COUNT = "quota-bytes", "quota-count"
# The Pithos quota of a container whose Swift quotas its bytes cannot express.
MARKER = 2**63 - 1


def pithos_quota(swift_bytes: str | None, swift_count: str | None) -> int | None:
    """The Pithos quota that goes with Swift's quotas (None or "": not set)."""
    if swift_bytes and int(swift_bytes) > 0:
        return int(swift_bytes)
    if swift_bytes or swift_count:
        return MARKER
    return None


class SwiftQuotas:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def meta(self, account: str, container: str) -> dict[str, str]:
        """The metadata of a container (empty when there is none), for the quotas it has
        (and the CORS settings, pithos.api.cors)."""
        info = self.catalog.account(account, detail=False)
        found = self.catalog.container(info.id, container) if info is not None else None
        return found.meta if found is not None else {}

    def check(self, container: ContainerInfo, length: int) -> None:
        """QuotaExceeded if `length` more bytes, or one more object, pass the container's
        Swift quotas.  Asked only of a container with a quota (`quota_bytes` set)."""
        if container.quota_bytes is None:
            return
        found = self.catalog.container(container.account_id, container.name)
        if found is None:
            return
        quota_bytes, quota_count = found.meta.get(BYTES, ""), found.meta.get(COUNT, "")
        if _number(quota_bytes) and found.bytes + length > int(quota_bytes):
            raise QuotaExceeded("Upload exceeds quota.")
        if _number(quota_count) and found.objects + 1 > int(quota_count):
            raise QuotaExceeded("Upload exceeds quota.")


def _number(text: str) -> bool:
    """Whether `text` is a whole number int() reads (str.isdigit() takes "\u00b2" too)."""
    return text.isascii() and text.isdigit()

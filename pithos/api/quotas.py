"""Swift's quota headers: container quotas (X-Container-Meta-Quota-Bytes, -Quota-Count;
pithos.objects.quotas enforces them) and account quotas, which only a reseller admin sets in
Swift (X-Account-Meta-Quota-Bytes, X-Account-Quota-Bytes, -Quota-Count and their per-policy
forms): an account's own admin is refused (403), as Swift's account_quotas refuses it.  The
Pithos account quota (X-Account-Policy-Quota) is the operator's, set with the CLI."""

from __future__ import annotations

import falcon

from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import decode_path, path_info
from pithos.api.paths import account_name
from pithos.objects.quotas import BYTES, COUNT, pithos_quota

ACCOUNT_QUOTA_PREFIXES = ("X-ACCOUNT-META-QUOTA-BYTES", "X-ACCOUNT-QUOTA-",
                          "X-REMOVE-ACCOUNT-META-QUOTA-BYTES", "X-REMOVE-ACCOUNT-QUOTA-")


def info() -> dict[str, dict[str, object]]:
    return {"container_quotas": {}, "account_quotas": {}}


def refuse_account_quotas(req: falcon.Request) -> None:
    """403 for an account POST that would set or remove an account quota."""
    if any(k.upper().startswith(ACCOUNT_QUOTA_PREFIXES) for k in req.headers):
        raise HTTPStatusError(403, "Only a reseller admin sets account quotas.")


def _swift_value(req: falcon.Request, name: str, what: str) -> str | None:
    """Swift's quota header `name` ("" when removed, None when not given); 400 unless a
    number."""
    if req.get_header("X-Remove-Container-Meta-" + name) is not None:
        return ""
    value = req.get_header("X-Container-Meta-" + name)
    if value and not (value.isascii() and value.isdigit()):
        raise HTTPStatusError(400, f"Invalid {what} quota.")
    return value


def container_quota(req: falcon.Request, services: Services) -> str | None:
    """The Pithos quota (X-Container-Policy-Quota's value) a container PUT/POST sets: its
    own header's, else the one that goes with the Swift quotas it sets (None: unchanged)."""
    swift_bytes = _swift_value(req, "Quota-Bytes", "bytes")
    swift_count = _swift_value(req, "Quota-Count", "count")
    given = req.get_header("X-Container-Policy-Quota")
    if given is not None or (swift_bytes is None and swift_count is None):
        return given
    if swift_bytes is None or swift_count is None:
        # One of the two changes: the other stays as the container has it.
        segments = decode_path(path_info(req.env))
        meta = services.objects.swift_quotas.meta(account_name(segments[0]),
                                                  segments[1])
        swift_bytes = meta.get(BYTES, "") if swift_bytes is None else swift_bytes
        swift_count = meta.get(COUNT, "") if swift_count is None else swift_count
    return str(pithos_quota(swift_bytes, swift_count) or 0)

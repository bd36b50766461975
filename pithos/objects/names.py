"""Swift's limits on names, metadata and large objects (as /info reports them), and the checks
of what a request names or sets: account, container and object names, an expiry time, a
dynamic large object's manifest."""

from __future__ import annotations

from dataclasses import dataclass

from pithos.catalog.catalog import MAX_CONTENT_TYPE
from pithos.core.errors import InvalidArgument

__all__ = ["MAX_CONTENT_TYPE", "Limits", "check_names", "delete_at", "dlo_manifest"]


@dataclass(frozen=True)
class Limits:
    """Swift's constraints, as /info reports them."""
    max_file_size: int = 5 * 1024**3
    max_object_name_length: int = 1024
    max_container_name_length: int = 256
    max_account_name_length: int = 256
    max_meta_name_length: int = 128
    max_meta_value_length: int = 256
    max_meta_count: int = 90
    max_meta_overall_size: int = 4096
    container_listing_limit: int = 10000
    account_listing_limit: int = 10000
    max_header_size: int = 8192
    max_manifest_segments: int = 1000
    max_manifest_size: int = 8 * 1024 * 1024
    min_segment_size: int = 1


def check_names(limits: Limits, account: str, container: str | None,
                obj: str | None) -> None:
    """InvalidArgument for an empty account or container name, or one over its limit (in
    UTF-8 bytes); `container` and `obj` None: not part of the path."""
    if not account:
        raise InvalidArgument("no account in the path")
    if len(account.encode()) > limits.max_account_name_length:
        raise InvalidArgument("Account name length exceeds the maximum")
    if container is not None:
        if not container:
            raise InvalidArgument("empty container name")
        if len(container.encode()) > limits.max_container_name_length:
            raise InvalidArgument(f"Container name length of {len(container.encode())} "
                                  f"longer than {limits.max_container_name_length}")
    if obj is not None and len(obj.encode()) > limits.max_object_name_length:
        raise InvalidArgument(f"Object name length of {len(obj.encode())} longer than "
                              f"{limits.max_object_name_length}")


# Swift's largest delete-at timestamp (year 2286): later is never.
MAX_DELETE_AT = 9999999999


def delete_at(at: str | None, after: str | None, now: float) -> float | None:
    """When an object expires, from X-Delete-At (a UNIX time) or X-Delete-After (seconds from
    `now`, which wins); None: never.  InvalidArgument for a non-integer or a past time."""
    if after is not None:
        try:
            seconds = int(after)
        except ValueError:
            raise InvalidArgument("Non-integer X-Delete-After") from None
        if seconds < 0:
            raise InvalidArgument("X-Delete-After in past")
        return float(min(int(now) + seconds, MAX_DELETE_AT))
    if at is not None:
        try:
            when = int(float(at))
        except (ValueError, OverflowError):  # "nan", "inf"
            raise InvalidArgument("Non-integer X-Delete-At") from None
        if when <= now:
            raise InvalidArgument("X-Delete-At in past")
        return float(min(when, MAX_DELETE_AT))
    return None


def dlo_manifest(text: str) -> str:
    """A dynamic large object's manifest, "container/prefix" (a leading "/" is dropped);
    InvalidArgument for anything else."""
    manifest = text.lstrip("/")
    if "/" not in manifest or manifest.startswith("/"):
        raise InvalidArgument("X-Object-Manifest must be in the format container/prefix")
    return manifest

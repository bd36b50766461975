"""The seed disk of the test guest (scripts/guest-image): what a NoCloud seed is to
cloud-init, in the smallest form its busybox /init can read with dd.

A seed is a raw file given to the guest as a second virtio disk (`FileDisk(path)` after the
data disk). Its first bytes are "PITHOS-SEED\\n", then "key=value" lines (marker, after, net:
the kernel command line's pithos.* keys without the prefix; the seed wins over the command
line), then "public-key: KEY" lines (the server's SSH keys; this guest has no SSH and skips
them, a real guest's init would install them), then optionally a line "user-data:" and a shell
script the guest runs as root before it writes the marker (its exit status is printed as
"PITHOS-USER-DATA-EXIT: N"). The guest reads the first 64 KiB and drops NUL bytes; the rest of
the file is zeros.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

SIGNATURE = b"PITHOS-SEED\n"
MAX_BYTES = 64 << 10
KEYS = ("marker", "after", "net")


def seed_bytes(values: dict[str, str], user_data: str | None = None,
               public_keys: Iterable[str] = ()) -> bytes:
    """The seed's content. ValueError for an unknown key, a value with whitespace or NUL, a
    public key over one line, or a seed over MAX_BYTES."""
    out = bytearray(SIGNATURE)
    for key, value in values.items():
        if key not in KEYS:
            raise ValueError(f"unknown seed key {key!r} (known: {', '.join(KEYS)})")
        if not value or any(c.isspace() or c == "\0" for c in value):
            raise ValueError(f"seed value for {key} must be non-empty, without whitespace")
        out += f"{key}={value}\n".encode()
    for key in public_keys:
        if not key.strip() or any(c in key for c in "\n\r\0"):
            raise ValueError("a public key is one non-empty line")
        out += f"public-key: {key.strip()}\n".encode()
    if user_data is not None:
        if "\0" in user_data:
            raise ValueError("user-data must not contain NUL bytes")
        out += b"user-data:\n" + user_data.encode()
        if not user_data.endswith("\n"):
            out += b"\n"
    if len(out) > MAX_BYTES:
        raise ValueError(f"a seed holds at most {MAX_BYTES} bytes, not {len(out)}")
    return bytes(out)


def write_seed(path: str, values: dict[str, str], user_data: str | None = None,
               size_bytes: int = 1 << 20, public_keys: Iterable[str] = ()) -> str:
    """Write a seed disk image of `size_bytes` (sparse past its content) at `path`, replacing
    any file there atomically; returns `path`."""
    data = seed_bytes(values, user_data, public_keys)
    if size_bytes < len(data) or size_bytes % 512:
        raise ValueError("a seed disk is a whole number of 512-byte sectors holding its data")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.truncate(size_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path

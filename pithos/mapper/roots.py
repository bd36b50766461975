"""Map roots kept outside the catalog, by name: what the garbage collector must mark and what
fsck and scrub name when a map is damaged.

Volumes and snapshots (archipelago), and later images of compute and the sync client's state,
keep maps of their own.  Each such part offers a `RootProvider`; the entry point's composition
root (pithos/cli/roots.py) lists the providers, so the collector gathers every root without
knowing who keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class NamedRoot:
    """A map root and what keeps it, for people (e.g. "volume disk", "snapshot disk@1")."""

    root: bytes
    name: str


# (data directory, block store URL or None) -> the roots kept there.  Must not write (a
# collector runs on a full disk) and must list every root it keeps: a root left out is a map
# the collector may sweep.
RootProvider = Callable[[str, "str | None"], Iterable[NamedRoot]]

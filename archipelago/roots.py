"""The map roots volumes and snapshots keep, for the garbage collector and for fsck and scrub
(a `pithos.mapper.roots.RootProvider`)."""

from __future__ import annotations

from archipelago.volumes import root_heads
from pithos.core.hashing import from_hex
from pithos.mapper.roots import NamedRoot


def named_roots(data_dir: str, blocks_url: str | None = None) -> list[NamedRoot]:
    """Every map root the volumes and snapshots of a data directory name (with a rados://
    `blocks_url`, those of the cluster), as "volume NAME" or "snapshot NAME"."""
    return [NamedRoot(from_hex(head.root), f"{head.kind} {head.name}")
            for head in root_heads(data_dir, blocks_url) if head.root]

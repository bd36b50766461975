"""Checking a store: every block against its hash, every map from its root.

Lives with the mapper because it needs both layers: the blocker verifies blocks, and only the
mapper knows which blocks are map pages and what they name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pithos.blocker.blocker import Blocker
from pithos.core.errors import NotFound
from pithos.core.hashing import to_hex
from pithos.mapper import codec

_BATCH = 64


@dataclass
class FsckReport:
    blocks: int = 0
    bytes_checked: int = 0
    maps: int = 0
    pages: int = 0
    corrupt: list[bytes] = field(default_factory=list)
    # (missing hash, root of the map that names it)
    missing: list[tuple[bytes, bytes]] = field(default_factory=list)
    not_maps: list[bytes] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.corrupt or self.missing or self.not_maps)

    def as_dict(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "blocks_checked": self.blocks,
            "bytes_checked": self.bytes_checked,
            "maps_checked": self.maps,
            "pages_checked": self.pages,
            "corrupt": [to_hex(h) for h in self.corrupt],
            "missing": [{"hash": to_hex(h), "root": to_hex(r)} for h, r in self.missing],
            "not_maps": [to_hex(h) for h in self.not_maps],
        }


def fsck(blocker: Blocker, roots: Iterable[bytes]) -> FsckReport:
    """Verify every stored block, then walk every map from `roots`: each page must be present,
    intact and well-formed, and each block it names present.  Reports, never raises for
    damage."""
    report = FsckReport()
    batch: list[bytes] = []

    def check_batch() -> None:
        corrupt, _ = blocker.check(batch)
        report.corrupt.extend(corrupt)
        batch.clear()

    for hash_, size in blocker.iterate():
        report.blocks += 1
        report.bytes_checked += size
        batch.append(hash_)
        if len(batch) >= _BATCH:
            check_batch()
    check_batch()
    corrupt = set(report.corrupt)
    for root in dict.fromkeys(roots):
        report.maps += 1
        _walk(blocker, root, corrupt, report)
    return report


def _walk(blocker: Blocker, root: bytes, corrupt: set[bytes], report: FsckReport) -> None:
    frontier = [root]
    while frontier:
        absent = set(blocker.missing(frontier))
        report.missing.extend((h, root) for h in frontier if h in absent)
        readable = [h for h in frontier if h not in absent and h not in corrupt]
        frontier = []
        for i in range(0, len(readable), _BATCH):
            chunk = readable[i:i + _BATCH]
            try:
                blobs = blocker.store.get_many(chunk)
            except NotFound as exc:  # deleted while we walked
                report.missing.extend((h, root) for h in exc.hashes)
                continue
            for h, blob in zip(chunk, blobs, strict=True):
                try:
                    level, hashes, _, _ = codec.decode_page(blob)
                except ValueError:
                    report.not_maps.append(h)
                    continue
                report.pages += 1
                if level > 0:
                    frontier.extend(hashes)
                else:
                    gone = set(blocker.missing(hashes))
                    report.missing.extend((b, root) for b in dict.fromkeys(hashes) if b in gone)

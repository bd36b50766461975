"""Checking a store: every block against its hash, every map from its root.

Lives with the mapper because it needs both layers: the blocker verifies blocks, and only the
mapper knows which blocks are map pages and what they name.

A block held in quarantine (moved aside by a read or a scrub that found it damaged) and not
stored afresh since is damage when a map names it: it counts as corrupt, with the maps that
name it.  Once a put stores it afresh it is healed; one no map names is garbage.  Neither
counts as damage, and both are listed.
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
    # Every hash held in quarantine; those stored afresh since; the roots naming the others.
    quarantined: list[bytes] = field(default_factory=list)
    healed: set[bytes] = field(default_factory=set)
    named_by: dict[bytes, list[bytes]] = field(default_factory=dict)
    # Temporary data of writers that died (`BlockStore.leftovers`): not damage, garbage.
    leftovers: list[str] = field(default_factory=list)

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
            "quarantined": [{"hash": to_hex(h), "healed": h in self.healed,
                             "roots": [to_hex(r) for r in self.named_by.get(h, [])]}
                            for h in self.quarantined],
            "stale_tmp_files": self.leftovers,
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
    report.leftovers = blocker.leftovers()
    walk_maps(blocker, roots, report)
    found = set(report.corrupt)
    report.corrupt.extend(h for h in report.quarantined
                          if report.named_by.get(h) and h not in found)
    return report


def walk_maps(blocker: Blocker, roots: Iterable[bytes], report: FsckReport) -> None:
    """Walk every map from `roots` (each once) into `report`: pages absent, or not map pages,
    blocks absent, and the maps naming each block held in quarantine (and not healed)."""
    report.quarantined = blocker.quarantined()
    if report.quarantined:
        report.healed = set(report.quarantined) - set(blocker.missing(report.quarantined))
    held = {h for h in report.quarantined if h not in report.healed}
    corrupt = set(report.corrupt)
    for root in dict.fromkeys(roots):
        report.maps += 1
        _walk(blocker, root, corrupt, held, report)


def _absent(root: bytes, hashes: Iterable[bytes], held: set[bytes], report: FsckReport) -> None:
    for h in hashes:
        if h in held:
            named = report.named_by.setdefault(h, [])
            if root not in named:
                named.append(root)
        else:
            report.missing.append((h, root))


def _walk(blocker: Blocker, root: bytes, corrupt: set[bytes], held: set[bytes],
          report: FsckReport) -> None:
    frontier = [root]
    while frontier:
        absent = set(blocker.missing(frontier))
        _absent(root, (h for h in frontier if h in absent), held, report)
        readable = [h for h in frontier if h not in absent and h not in corrupt]
        frontier = []
        for i in range(0, len(readable), _BATCH):
            chunk = readable[i:i + _BATCH]
            try:
                blobs = blocker.raw_get_many(chunk)
            except NotFound as exc:  # deleted (or quarantined) while we walked
                _absent(root, exc.hashes, held, report)
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
                    _absent(root, (b for b in dict.fromkeys(hashes) if b in gone), held, report)

"""Scrubbing the block store: every block verified at a bounded rate, damage quarantined.

As Ceph's deep scrub reads every object and compares checksums, a scrub reads every stored
block and checks it against its name, so that damage is found before a reader meets it; a
damaged block is quarantined (`Blocker.scrub_many`, `BlockStore.quarantine_many`), so that the
next put of the same content stores it afresh and every map naming it heals.  The read rate is
bounded (`rate_bytes_s`): the scrub sleeps between batches so that its average rate since it
began stays at or under the bound, and the store's real clients keep their share of the disk.

Then, only when the quarantine holds a block not stored afresh since (a cost of one read of
every map page), every map from the roots is walked to name the maps that still need it: those
objects, volumes or recorded maps read as damaged until the content is put again.

Lives with the mapper, as fsck does, because naming the maps needs both layers.  The job keeps
no state: an interrupted scrub starts again from the first block (or from `start_after`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pithos.blocker.blocker import Blocker
from pithos.core.hashing import to_hex
from pithos.mapper.fsck import FsckReport, walk_maps

# A batch is read at once: at most this many blocks, or bytes.
_BATCH_BLOCKS = 64
_BATCH_BYTES = 32 << 20


@dataclass
class ScrubReport:
    blocks: int = 0
    bytes_checked: int = 0
    rate_bytes_s: float | None = None
    # Found damaged by this scrub, and of those the ones it moved to quarantine (a block
    # stored afresh between its read and its move is left in place, healthy).
    corrupt: list[bytes] = field(default_factory=list)
    quarantined: list[bytes] = field(default_factory=list)
    # Every hash held in quarantine, from this scrub or before; those stored afresh since;
    # the roots of the maps naming each of the others.
    held: list[bytes] = field(default_factory=list)
    healed: set[bytes] = field(default_factory=set)
    named_by: dict[bytes, list[bytes]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Nothing found damaged, and no map names a block held in quarantine."""
        return not self.corrupt and not any(self.named_by.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "blocks_checked": self.blocks,
            "bytes_checked": self.bytes_checked,
            "rate_bytes_s": self.rate_bytes_s,
            "corrupt": [to_hex(h) for h in self.corrupt],
            "quarantined_now": [to_hex(h) for h in self.quarantined],
            "quarantined": [{"hash": to_hex(h), "healed": h in self.healed,
                             "roots": [to_hex(r) for r in self.named_by.get(h, [])]}
                            for h in self.held],
            "seconds": round(self.seconds, 3),
        }


class Pacer:
    """Keeps an average rate since the start at or under `rate_bytes_s` (None: no bound) by
    sleeping once the work done is ahead of it."""

    def __init__(self, rate_bytes_s: float | None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate_bytes_s = rate_bytes_s
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._done = 0

    def account(self, size: int) -> None:
        """`size` more bytes were read: wait until the rate allows them."""
        self._done += size
        if not self.rate_bytes_s:
            return
        ahead = self._done / self.rate_bytes_s - (self._clock() - self._start)
        if ahead > 0:
            self._sleep(ahead)


def scrub(blocker: Blocker, roots: Iterable[bytes], rate_bytes_s: float | None = None, *,
          start_after: bytes | None = None, pacer: Pacer | None = None) -> ScrubReport:
    """Verify every stored block (after `start_after`), quarantining the damaged ones, at
    most `rate_bytes_s` on average; then, if the quarantine holds blocks not stored afresh,
    name the maps from `roots` that need them.  Reports; raises only for the store's own
    failures (`BackendError`)."""
    started = time.monotonic()
    report = ScrubReport(rate_bytes_s=rate_bytes_s)
    pacer = pacer or Pacer(rate_bytes_s)
    batch: list[bytes] = []
    batch_bytes = 0

    def check() -> None:
        nonlocal batch_bytes
        found = blocker.scrub_many(batch)
        report.corrupt.extend(found.corrupt)
        report.quarantined.extend(found.quarantined)
        pacer.account(batch_bytes)
        batch.clear()
        batch_bytes = 0

    for hash_, size in blocker.iterate(start_after):
        report.blocks += 1
        report.bytes_checked += size
        batch.append(hash_)
        batch_bytes += size
        if len(batch) >= _BATCH_BLOCKS or batch_bytes >= _BATCH_BYTES:
            check()
    if batch:
        check()
    maps = FsckReport()
    report.held = blocker.quarantined()
    if report.held:
        report.healed = set(report.held) - set(blocker.missing(report.held))
        if len(report.healed) < len(report.held):
            walk_maps(blocker, roots, maps)
            report.named_by = maps.named_by
    report.seconds = time.monotonic() - started
    return report

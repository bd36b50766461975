"""Garbage collection of the block store: an online mark and sweep.

Mark: walk every map from the roots (retained versions, volumes and snapshots, recorded roots)
and collect every page and block they name.  Sweep: remove each stored block that is not marked
AND was last put before the cutoff, the earlier of the mark's start and the start of the oldest
upload in flight.  So a block written (or re-put, or touched by a hashmap upload) while the
collector runs is never removed: a put refreshes a block's age, and the delete itself compares
the age, atomically per block against a concurrent put (`delete_if_put_before`): a writer that
re-puts an old unreferenced block and commits a version naming it between the collector's scan
and its delete keeps the block.

Safety over progress: if a map cannot be walked completely (a page missing or corrupt), its
children are unknown, so nothing is swept unless the caller forces it.  The job holds no state
between runs: an interrupted run is simply run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from pithos.blocker.blocker import Blocker
from pithos.core.errors import NotFound, PithosError
from pithos.core.hashing import to_hex
from pithos.mapper import codec

_BATCH = 256
# Block ages come from file or object timestamps, taken from a coarser (or another host's)
# clock than ours: a block is swept only if it is older than the cutoff by this much more.
CLOCK_MARGIN_S = 2.0


@dataclass
class GcReport:
    dry_run: bool
    roots: int = 0
    reachable_blocks: int = 0
    scanned_blocks: int = 0
    garbage_blocks: int = 0
    garbage_bytes: int = 0
    reclaimed_blocks: int = 0
    reclaimed_bytes: int = 0
    spared_young_blocks: int = 0
    unwalkable_roots: list[str] = field(default_factory=list)
    swept: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class UnsafeToSweep(PithosError):
    """Some maps could not be walked; sweeping could remove blocks they name."""


def mark(blocker: Blocker, roots: Iterable[bytes], report: GcReport) -> set[bytes]:
    """Every page and block reachable from `roots`.  Pages shared between maps (versions of one
    object, clones) are walked once."""
    reachable: set[bytes] = set()
    for root in roots:
        report.roots += 1
        if root in reachable:
            continue
        frontier = [root]
        while frontier:
            todo = [h for h in dict.fromkeys(frontier) if h not in reachable]
            frontier = []
            for i in range(0, len(todo), _BATCH):
                chunk = todo[i:i + _BATCH]
                try:
                    pages = blocker.get_many(chunk)
                except PithosError as exc:
                    report.unwalkable_roots.append(f"{to_hex(root)}: {exc}")
                    reachable.update(chunk)
                    continue
                reachable.update(chunk)
                for page in pages:
                    try:
                        level, hashes, _, _ = codec.decode_page(page)
                    except ValueError:
                        report.unwalkable_roots.append(f"{to_hex(root)}: not a map page")
                        continue
                    if level > 0:
                        frontier.extend(hashes)
                    else:
                        reachable.update(hashes)
    report.reachable_blocks = len(reachable)
    return reachable


def refresh_map(blocker: Blocker, root: bytes) -> None:
    """Refresh every page and block of map `root`, for a writer about to name a map it did
    not put (a clone, an image over a snapshot): a collector that did not take the map among
    its roots then spares them, their age being newer than the writer's start.  NotFound if
    the map is not whole."""
    report = GcReport(dry_run=True)
    named = mark(blocker, [root], report)
    if report.unwalkable_roots or blocker.touch_many(sorted(named)):
        raise NotFound(f"the map {to_hex(root)} is not whole")


class Collection:
    """One run of the collector, step by step: `mark` from the roots, then `sweep` batches of
    candidates (`collect` runs every step; the protocol's model test interleaves them with
    writers).  The cutoff is fixed at the start: min(`started`, `oldest_upload`) less the
    clock margin, where `started` (the mark start) was taken before `oldest_upload` was
    read (pithos.catalog.leases.oldest_live_writer), so that no writer falls between."""

    def __init__(self, blocker: Blocker, *, started: float, oldest_upload: float | None,
                 dry_run: bool = False,
                 late_roots: Callable[[], Iterable[bytes]] | None = None,
                 clock_margin_s: float = CLOCK_MARGIN_S) -> None:
        self.blocker = blocker
        self.started = started
        self.cutoff = (started if oldest_upload is None
                       else min(started, oldest_upload)) - clock_margin_s
        self.late_roots = late_roots
        self.report = GcReport(dry_run=dry_run)
        self.reachable: set[bytes] = set()

    def mark(self, roots: Iterable[bytes], force: bool = False) -> None:
        """Mark every page and block the roots reach.  Raises UnsafeToSweep if a map could
        not be walked (unless `force`)."""
        self.reachable |= mark(self.blocker, roots, self.report)
        if self.report.unwalkable_roots and not force:
            self.report.seconds = time.time() - self.started
            raise UnsafeToSweep(
                f"{len(self.report.unwalkable_roots)} map(s) could not be walked; nothing was "
                f"swept (run fsck; first: {self.report.unwalkable_roots[0]})")

    def candidates(self) -> Iterator[list[tuple[bytes, int]]]:
        """Batches of stored blocks the mark did not reach, as (hash, size)."""
        batch: list[tuple[bytes, int]] = []
        for hash_, size in self.blocker.iterate():
            self.report.scanned_blocks += 1
            if hash_ not in self.reachable:
                batch.append((hash_, size))
                if len(batch) >= _BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def sweep(self, batch: list[tuple[bytes, int]]) -> None:
        """Remove (or, in a dry run, count) the blocks of `batch` that no root committed
        since the mark names and that were last put before the cutoff."""
        report = self.report
        if self.late_roots is not None:
            self.reachable |= mark(self.blocker, self.late_roots(), GcReport(dry_run=True))
            batch = [(h, n) for h, n in batch if h not in self.reachable]
        if report.dry_run:
            ages = self.blocker.age_s([h for h, _ in batch])
            now = time.time()
            old = [(h, n) for (h, n), age in zip(batch, ages, strict=True)
                   if age is not None and now - age < self.cutoff]
        else:
            # Never "read the ages, then delete the old": a writer may re-put an old block in
            # between and commit a version naming it.  The store compares and deletes as one
            # step per block; a block re-put since the scan is young and stays.  (Blocks a
            # concurrent collector removed first are not counted here.)
            removed = set(self.blocker.delete_if_put_before([h for h, _ in batch], self.cutoff))
            old = [(h, n) for h, n in batch if h in removed]
            report.reclaimed_blocks += len(old)
            report.reclaimed_bytes += sum(n for _, n in old)
        report.spared_young_blocks += len(batch) - len(old)
        report.garbage_blocks += len(old)
        report.garbage_bytes += sum(n for _, n in old)

    def finish(self) -> GcReport:
        self.report.swept = not self.report.dry_run
        self.report.seconds = time.time() - self.started
        return self.report


def collect(blocker: Blocker, roots: Iterable[bytes], *, dry_run: bool = False,
            oldest_upload: float | None = None, force: bool = False,
            late_roots: Callable[[], Iterable[bytes]] | None = None,
            clock_margin_s: float = CLOCK_MARGIN_S, started: float | None = None) -> GcReport:
    """Mark from `roots`, then sweep (or, with `dry_run`, only count) unreachable blocks put
    before min(mark start, `oldest_upload`).  Before each sweep batch, `late_roots()` gives
    the roots committed since the last call (e.g. copies of old maps made while the collector
    ran); they are marked too.  Raises UnsafeToSweep if a map could not be walked (unless
    `force`).  `started` is the mark start (default: now), which the caller takes before it
    reads `oldest_upload` (see Collection)."""
    run = Collection(blocker, started=time.time() if started is None else started,
                     oldest_upload=oldest_upload, dry_run=dry_run, late_roots=late_roots,
                     clock_margin_s=clock_margin_s)
    run.mark(roots, force)
    for batch in run.candidates():
        run.sweep(batch)
    return run.finish()

"""ETags declared by hashmap uploads, confirmed by the server after the upload.

A `PUT ?hashmap` names blocks the server already holds, each verified by its BLAKE3 when it
was received; the object's ETag, the MD5 of the whole content, is what those blocks cannot
tell without reading them all again.  Reading them back for it took as much of the server as
receiving them (a first sync's hashmap uploads: ~6 ms a MB, for an MD5 the client had
computed already).  So a hashmap upload that sends an ETag declares it: the version is
committed with that ETag and a mark (pithos.catalog.declared_etags), and `EtagConfirmer`
reads the content later, when its worker has no upload in flight, and confirms it: the
mark is dropped, and a false declaration is replaced by the MD5 found (a change in the
feed, so a sync client sees it) and logged.

Why it is safe: the content a version names is its blocks, each verified; a declaration can
only make the label false, and the writer who could declare a false label could as well
have stored other content.  Until confirmed, the label is the writer's word (as a Swift
SLO's ETag is not the MD5 of its content either).  The mark lives in the version's row
set: it survives a kill -9 (a new worker confirms what an old one left), goes with its
version (nothing to confirm), is carried by a copy or move of the version (the copy's ETag
is the same declaration), and the content it reads is that of a committed version, which
a collector never sweeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

from pithos.catalog.declared_etags import DOMAIN, KEY, DeclaredEtag
from pithos.core import md5 as md5_impl
from pithos.core.errors import PithosError
from pithos.objects.service import ObjectService

log = logging.getLogger("pithos.objects.declared_etags")

# Versions confirmed side by side, their MD5s in vector lanes (pithos.core.md5).
LANES = 8
# Uploads of the worker must have rested this long before it confirms (seconds).
IDLE_S = 1.0


def declared(etag: str) -> dict[str, dict[str, str]]:
    """The version metadata that marks `etag` as declared, not yet confirmed."""
    return {DOMAIN: {KEY: etag}}


class EtagConfirmer:
    """Reads the content of versions whose ETag was declared and settles them: `run` in a
    server worker, off the uploads' path; `confirm_pending` anywhere."""

    def __init__(self, objects: ObjectService, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.objects = objects
        self.catalog = objects.catalog
        self.clock = clock
        self.last_upload = -1e9
        # Whether there may be marks to settle: at first (a worker killed before confirming
        # left some), then after each declared upload of this process.
        self.pending = True

    def uploading(self, declared: bool = False) -> None:
        """An upload of this process is under way (a hashmap PUT, `declared` if it declared
        its ETag, or a POST ?blocks): confirmations wait until uploads rest."""
        self.last_upload = self.clock()
        if declared:
            self.pending = True

    def run(self, sleep: Callable[[float], None], idle_s: float = IDLE_S) -> None:
        """Forever: once this process's uploads have rested `idle_s`, confirm what is
        pending, a batch at a time, stepping aside as soon as uploads resume.  The reading
        and hashing are the work the uploads no longer do on their path: done here, when
        the worker has nothing else to do (a busy server confirms at its next pause)."""
        while True:
            sleep(idle_s / 2)
            if not self.pending or self.clock() - self.last_upload < idle_s:
                continue
            try:
                self.pending = False
                after = 0
                while self.clock() - self.last_upload >= idle_s:
                    batch = self.catalog.declared_etags(LANES, after)
                    if not batch:
                        break
                    after = batch[-1].version_id
                    self.confirm(batch)
                else:
                    self.pending = True  # stepped aside: the rest after the next pause
            except Exception:
                self.pending = True
                log.exception("confirming declared ETags failed (will try again)")

    def confirm_pending(self, limit: int = 10_000) -> int:
        """Confirm up to `limit` declared ETags (oldest versions first); returns how many
        were settled.  A version whose content cannot be read now (damaged, a backend
        failing) keeps its mark and is logged: the next run tries again."""
        settled = 0
        after = 0
        while settled < limit:
            batch = self.catalog.declared_etags(min(LANES, limit - settled), after)
            if not batch:
                break
            after = batch[-1].version_id
            settled += self.confirm(batch)
        return settled

    def confirm(self, batch: Sequence[DeclaredEtag]) -> int:
        """Read each version's content (side by side) and settle its ETag."""
        found = self._md5s(batch)
        n = 0
        for d in batch:
            md5 = found.get(d.version_id)
            if md5 is None:
                continue
            if self.catalog.settle_etag(d.version_id, md5):
                log.warning("version %d: its declared ETag %s was not the MD5 of its "
                            "content; now %s", d.version_id, d.etag, md5)
            n += 1
        return n

    def _md5s(self, batch: Sequence[DeclaredEtag]) -> dict[int, str]:
        digests = {d.version_id: md5_impl.new() for d in batch}
        readers: dict[int, Iterator[bytes]] = {}
        for d in batch:
            if d.root is None:
                digests.pop(d.version_id)
                continue
            readers[d.version_id] = self.objects.read([(d.root, d.size)], 0, d.size)
        failed: set[int] = set()
        while readers:
            pieces: dict[int, bytes] = {}
            for vid, reader in list(readers.items()):
                try:
                    piece = next(reader, None)
                except PithosError as exc:
                    # Gone since it was listed (its mark with it), or damaged: left as is.
                    log.info("version %d: content unreadable for now: %s", vid, exc)
                    failed.add(vid)
                    piece = None
                if piece is None:
                    del readers[vid]
                else:
                    pieces[vid] = piece
            if pieces:
                self._update([digests[v] for v in pieces], list(pieces.values()))
        return {vid: d.hexdigest() for vid, d in digests.items() if vid not in failed}

    def _update(self, digests: list[md5_impl.Md5], pieces: list[bytes]) -> None:
        offload = self.objects.offload
        if offload is not None:
            offload.run(md5_impl.update_many, digests, pieces)
        else:
            md5_impl.update_many(digests, pieces)

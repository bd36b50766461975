"""The packs index's rows a process has read or written, kept to answer look-ups again.

A block is looked up in the packs index (pithos.blocker.packs) several times within moments:
a sync client's `?blocks` batch is stored, then each file's hashmap upload touches the same
chunks and checks their lengths, then the declared ETags' confirmation reads them back.  Each
look-up went to SQLite through the thread's own connection, and in WAL mode a connection
drops its whole page cache whenever any other connection has committed: on a first sync of
1 GB (~40,000 chunks) the server read ~280,000 index pages of 1 KiB by pread(2) again, most of
them from the WAL, for rows it had itself just written or read.

So a process keeps the rows it found or wrote (hash -> pack, offset, length, stamp), and the
rows it does not keep are read through one connection per process (the page cache of 16 per
thread connections was lost 16 times as often).  Absent rows are never kept: another process
may write one at any moment, so an absence is always asked of the index.

Why a kept row stays true enough:
- A row is written once and then only moved (compaction: the same bytes in another pack, the
  old pack unlinked; packs are named by 63 random bits, never reused), restamped (touches:
  the stamp only grows) or removed.  A kept location that a compaction emptied is found gone
  as its pack is opened (FileNotFoundError), and the reader asks the index again
  (`Packs._read_record`); the bytes read are verified against the hash anyway.
- Removals (a collector's sweep, a quarantine) change the packs directory's shared stamp
  (pithos/core/stamp.py) before and after their commit; a row is used only while the stamp
  still holds the value read before it was looked up or written, so no process answers from
  a row removed since.  (A remover killed between its commit and the second change leaves
  kept only the rows looked up during its own transaction.)
- A hashmap upload's touch that finds a kept row stamped since the upload's `fresh_since`
  does not rewrite it: no sweep can remove such a row while the upload's lease holds (each
  sweep's cutoff is before the lease), kept or read.  An older kept stamp is rewritten in
  the index as before (the write reads the row again).
Memory is bounded: past ROWS_MAX rows everything kept goes at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pithos.core.locks import native_lock
from pithos.core.stamp import SharedStamp

# ~250-300 bytes a row kept (a 32-byte hash as bytes, a tuple of four numbers, the dict's
# slot): ~20 MB a process at most.  A first sync of 1 GB of 16 KiB chunks has ~40,000.
ROWS_MAX = 65_536

Row = tuple[int, int, int, float]  # (pack, offset, length, stamp)


class KeptRows:
    """Rows by hash, valid while the stamp at `stamp_path` holds the tag they were kept
    under: `tag()` before asking the index or writing it, then `known` and `keep`."""

    def __init__(self, stamp_path: str) -> None:
        self._stamp = SharedStamp(stamp_path)
        self._rows: dict[bytes, Row] = {}
        self._tag: int | None = None
        # (Plain dict work under it, never a yield: pool threads and greenlets take it.)
        self._lock = native_lock()

    def tag(self) -> int:
        return self._stamp.read()

    def _valid_for(self, tag: int) -> None:
        if tag != self._tag:
            self._rows.clear()
            self._tag = tag

    def known(self, hashes: Iterable[bytes], tag: int) -> dict[bytes, Row]:
        """The rows kept for `hashes` (`tag` read just now)."""
        with self._lock:
            self._valid_for(tag)
            rows = self._rows
            if not rows:
                return {}
            return {h: row for h in hashes if (row := rows.get(h)) is not None}

    def keep(self, rows: dict[bytes, Row], tag: int) -> None:
        """Rows read from the index or committed to it, `tag` read before either (a removal
        meanwhile moved the stamp on: the next `known` drops them)."""
        if not rows:
            return
        with self._lock:
            self._valid_for(tag)
            if len(self._rows) + len(rows) > ROWS_MAX:
                self._rows.clear()
            self._rows.update(rows)

    def restamp(self, hashes: Iterable[bytes], stamp: float, tag: int) -> None:
        """The kept ones among `hashes` were stamped `stamp` (a touch committed; `tag` read
        before it)."""
        with self._lock:
            self._valid_for(tag)
            rows = self._rows
            for h in hashes:
                row = rows.get(h)
                if row is not None:
                    rows[h] = (row[0], row[1], row[2], stamp)

    def forget(self, hashes: Sequence[bytes]) -> None:
        """Drop these rows (found stale: their pack is gone)."""
        with self._lock:
            for h in hashes:
                self._rows.pop(h, None)

    def removing(self) -> None:
        """Around a commit that removes rows (before and after it): every process drops
        what it kept."""
        self._stamp.bump()

    def reset(self) -> None:
        """After a fork: the child starts with nothing kept (the stamp's mapping is shared
        and stays)."""
        self._lock = native_lock()
        self._rows = {}
        self._tag = None

    def close(self) -> None:
        self._stamp.close()

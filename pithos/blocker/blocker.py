"""The Blocker: the only user of a BlockStore.

It names blocks (hashes them on put), caps their size, verifies every block it reads (a
content-addressed store checks itself: a mismatch is corruption, reported and never served) and
works in batches, hashing on a thread pool because blake3 releases the GIL.

A block found damaged by a read is quarantined (moved aside in the store, see
`BlockStore.quarantine_many`): the reader still gets `IntegrityError`, and the next put of the
same content stores it afresh, so the objects that name it heal.  A later read of a block held
in quarantine (and not yet stored afresh) gets `IntegrityError` too, not `NotFound`: the block
was stored, and is damaged.

A block streamed in is hashed as a BLAKE3 tree whose outboard the store may keep
(pithos.core.treehash); such a block can be read back part by part, each part verified before
it is handed out (`read_parts`), so a reader starts on its first bytes before the rest is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any, NamedTuple, cast

import blake3

from pithos.blocker.ranges import VerifiedRanges
from pithos.blocker.store import BlockStore, BlockWriter, PartReader, PartsStore, PartsWriter
from pithos.core import treehash
from pithos.core.errors import IntegrityError, InvalidArgument, NotFound, PithosError
from pithos.core.hashing import block_hash, hash_many, to_hex
from pithos.core.locks import native_lock
from pithos.core.offload import Offload

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
# A batch is split into store puts of at most this many blocks.
MAX_BATCH_BLOCKS = 256
# ... or of this many when none is over SMALL_BLOCK bytes (at most 64 MiB a put).
MAX_BATCH_SMALL = 1024
SMALL_BLOCK = 64 * 1024

log = logging.getLogger("pithos.blocker")


class ScrubResult(NamedTuple):
    """What `Blocker.scrub_many` found: the damaged blocks (each found damaged by this
    check, or held in quarantine from before and not stored afresh since), those of them it
    moved to quarantine now, and the absent ones."""
    corrupt: list[bytes]
    quarantined: list[bytes]
    missing: list[bytes]


class StagedBlock(NamedTuple):
    """A block named by the Blocker (see `Blocker.stage`), not yet stored, with its tree
    outboard when it is larger than a part (see pithos.core.treehash)."""
    hash: bytes
    data: bytes | memoryview
    outboard: bytes = b""


class Blocker:
    """Content addressing over a `BlockStore`.

    `block_size` is the largest block accepted; `hash_threads` the size of the hashing pool
    (default: one per core).
    """

    def __init__(self, store: BlockStore, block_size: int = DEFAULT_BLOCK_SIZE,
                 hash_threads: int | None = None, offload: Offload | None = None) -> None:
        if block_size <= 0:
            raise InvalidArgument(f"block size must be positive, not {block_size}")
        self.store = store
        # Verified part reads, where the store offers them (pithos.blocker.store.PartsStore).
        self._parts = store if isinstance(store, PartsStore) else None
        self.block_size = block_size
        # Hashing fans out to the offload context's pool (pithos.core.offload); without one
        # given, to threads of the Blocker's own.
        self._own_offload = offload is None
        self._offload = offload or Offload.threads(hash_threads or os.cpu_count() or 2,
                                                   name="blockhash")
        self._pool = self._offload.pool
        # Made at the first range read (volumes), with its piece-hash cache.
        self._ranges: VerifiedRanges | None = None
        self._ranges_lock = native_lock()  # (greenlets and pool threads: pithos/core/locks.py)

    def stage(self, data: bytes) -> StagedBlock:
        """Name one block now (hash it on this thread) to store it later with `put_staged`.
        Raises InvalidArgument for a block larger than the block size."""
        self._check_size(data)
        if treehash.AVAILABLE and len(data) > treehash.PART:
            return StagedBlock(*_named(data))
        return StagedBlock(block_hash(data), data)

    def stage_many(self, blocks: Sequence[bytes | memoryview]) -> list[StagedBlock]:
        """Name many blocks, hashing on the pool.  A block larger than a part is hashed as
        its tree, which gives its outboard for the same work (one such block alone: half
        its parts on the pool beside this thread)."""
        for data in blocks:
            self._check_size(data)
        if not treehash.AVAILABLE or all(len(d) <= treehash.PART for d in blocks):
            return [StagedBlock(h, d)
                    for h, d in zip(hash_many(blocks, self._pool), blocks, strict=True)]
        if len(blocks) == 1:
            hash_, outboard = treehash.name(blocks[0], self._pool)
            return [StagedBlock(hash_, blocks[0], outboard)]
        return [StagedBlock(*named) for named in self._pool.map(_named, blocks)]

    def open_stream(self) -> BlockStream:
        """A block that arrives in pieces: each piece is hashed and handed to the store on the
        pool while the caller fetches the next (see `BlockStream`)."""
        return BlockStream(self.store.open_writer(), self._pool, self.block_size)

    def put_staged(self, staged: Sequence[StagedBlock]) -> None:
        """Store blocks named by `stage`/`stage_many`.  Durable on return, repeat-safe.

        A batch may hold blocks and the map pages that name them: nothing can reach a page
        before the caller records its root, which it does only after this returns."""
        unique = list({b.hash: (b.hash, b.data) for b in staged}.items())
        # (A block may be a view of the caller's buffer: every store takes any buffer, as
        # it takes an upload's bytearrays; the stores' signatures name bytes.)
        items = cast(list[tuple[bytes, bytes]], [pair for _, pair in unique])
        outboards = {b.hash: b.outboard for b in staged if b.outboard}
        # Small blocks (content-defined chunks) go in batches of more: a store's put costs
        # a sync or two however many blocks it holds.
        step = MAX_BATCH_BLOCKS if any(len(d) > SMALL_BLOCK for _, d in items) else \
            MAX_BATCH_SMALL
        for i in range(0, len(items), step):
            if self._parts is not None and outboards:
                self._parts.put_many(items[i:i + step], outboards)
            else:
                self.store.put_many(items[i:i + step])

    def put_many(self, blocks: Sequence[bytes | memoryview]) -> list[bytes]:
        """Store blocks (bytes, or views of a buffer the caller keeps unchanged until this
        returns); returns their hashes, in order.  Durable on return (the store's
        contract), repeat-safe (a known block is not written again).  Raises InvalidArgument for
        a block larger than the block size, before storing anything."""
        staged = self.stage_many(blocks)
        self.put_staged(staged)
        return [b.hash for b in staged]

    def put(self, data: bytes) -> bytes:
        """Store one block; returns its hash."""
        return self.put_many([data])[0]

    def _check_size(self, data: bytes | memoryview) -> None:
        if len(data) > self.block_size:
            raise InvalidArgument(
                f"block of {len(data)} bytes exceeds the block size {self.block_size}")

    def _verify(self, hashes: Sequence[bytes], blocks: Sequence[bytes]) -> None:
        actual = hash_many(blocks, self._pool)
        bad = {h: data for h, data, a in zip(hashes, blocks, actual, strict=True) if h != a}
        if bad:
            moved = self._quarantine(list(bad.items()))
            raise IntegrityError(
                "corrupt block(s), hash mismatch: " + ", ".join(to_hex(h) for h in list(bad)[:8])
                + (" (moved to quarantine)" if moved else ""), list(bad))

    def _quarantine(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Move blocks found damaged (with the bytes found) aside; the ones moved.  A store
        that fails to is logged, never raised: the caller's error is the damage."""
        try:
            moved = self.store.quarantine_many(items)
        except PithosError as exc:
            log.error("cannot quarantine %d damaged block(s): %s", len(items), exc)
            return []
        return moved

    def _absent(self, exc: NotFound) -> PithosError:
        """The error for blocks the store lacks: IntegrityError for those held in quarantine
        (they were stored, and are damaged), else `exc` itself."""
        held = self.store.quarantined(exc.hashes) if exc.hashes else []
        if not held:
            return exc
        return IntegrityError("corrupt block(s), quarantined: "
                              + ", ".join(to_hex(h) for h in held[:8]), held)

    def get_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The verified data of each block, in order.  Raises NotFound (listing every absent
        hash) or IntegrityError (listing every corrupt one); a corrupt block is never
        returned, and is quarantined (see the module's docstring)."""
        try:
            blocks = self.store.get_many(hashes)
        except NotFound as exc:
            raise self._absent(exc) from None
        self._verify(hashes, blocks)
        return blocks

    def get(self, hash_: bytes) -> bytes:
        return self.get_many([hash_])[0]

    @staticmethod
    def reads_in_parts(block_length: int) -> bool:
        """Whether `read_parts` may hand out a block of this size in more than one part."""
        return treehash.AVAILABLE and block_length > treehash.PART

    def read_parts(self, hash_: bytes) -> Iterator[bytes]:
        """The verified bytes of one block, in parts, in order.  A block the store keeps with
        its tree outboard is read in `treehash.PART` pieces side by side on the pool (a disk
        serves parallel requests sooner than one after another), each piece hashed as it is
        read; a piece is handed out once the part of the tree it belongs to is verified (the
        first piece against the block's name, then each sibling of the spine).  Any other
        block comes whole, as from `get`.  Raises NotFound, or IntegrityError when a part
        fails its check: the pieces handed out before it were verified, and nothing after
        (and the block is quarantined once a whole read confirms the damage)."""
        try:
            reader = self._offload.run(self._parts.open_parts, hash_) \
                if treehash.AVAILABLE and self._parts is not None else None
        except NotFound as exc:
            raise self._absent(exc) from None
        if reader is None:
            yield self.get(hash_)
            return
        reads = [self._pool.submit(self._read_piece, reader, start, end)
                 for start, end in treehash.pieces(reader.size)]
        try:
            data, value = reads[0].result()
            matched = value is not None and treehash.first_value_matches(
                hash_, reader.size, value, reader.outboard)
            if matched:
                yield data
                next_piece = 1
                for index, (start, end) in enumerate(treehash.spine(reader.size)):
                    count = -(-(end - start) // treehash.PART)
                    group = [read.result() for read in reads[next_piece:next_piece + count]]
                    next_piece += count
                    values = [v for _, v in group if v is not None]
                    if len(values) != count or not treehash.sibling_values_match(
                            reader.outboard, index, values):
                        self._confirm_damage(hash_)
                        raise IntegrityError(f"corrupt block, bytes {start}-{end} do not match "
                                             f"its hash {to_hex(hash_)}", [hash_])
                    for data, _ in group:
                        yield data
        finally:
            for read in reads:  # a reader that left early: the reads must end before close
                read.cancel()
            for read in reads:
                with contextlib.suppress(BaseException):
                    read.result()
            reader.close()
        if not matched:  # no harm in a wrong outboard: the block is verified whole instead
            yield self.get(hash_)

    def _confirm_damage(self, hash_: bytes) -> None:
        """A part of the block failed its check: read it whole, and quarantine it if that
        fails too (the whole bytes are what the store compares before moving it)."""
        with contextlib.suppress(PithosError):
            self.get(hash_)

    @staticmethod
    def _read_piece(reader: PartReader, start: int, end: int) -> tuple[bytes, bytes | None]:
        """Bytes [start, end) of the block and their subtree value (None when short)."""
        data = reader.read(start, end - start)
        if len(data) != end - start:
            return data, None
        return data, treehash.subtree_value(data, start)

    def read(self, hash_: bytes, offset: int, length: int) -> bytes:
        """Bytes `[offset, offset + length)` of one block, short at its end.  The whole block
        is read and verified first: a range is never served from an unverified block."""
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        return self.get(hash_)[offset:offset + length]

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Which of these blocks are absent (each once, in the order given)."""
        return self.store.missing(hashes)

    def touch_many(self, hashes: Sequence[bytes], fresh_since: float | None = None
                   ) -> list[bytes]:
        """Refresh blocks referenced without their bytes; returns the absent ones.  Blocks
        put at or after `fresh_since` may be only found present (BlockStore.touch_many)."""
        return self.store.touch_many(hashes, fresh_since)

    def touch_sizes(self, hashes: Sequence[bytes], fresh_since: float | None = None
                    ) -> list[int | None]:
        """Refresh blocks referenced without their bytes, as `touch_many`; the size of each,
        None for an absent one (see BlockStore.touch_sizes)."""
        return self.store.touch_sizes(hashes, fresh_since)

    def delete_many(self, hashes: Sequence[bytes]) -> int:
        """Remove blocks; absent ones are ignored.  Callers delete references first."""
        return self.store.delete_many(hashes)

    def delete_if_put_before(self, hashes: Sequence[bytes], cutoff: float) -> list[bytes]:
        """Remove the blocks last put before `cutoff` (`time.time()` clock), atomically per
        block against a concurrent put or touch; returns the removed ones.  The garbage
        collector's delete (see `BlockStore.delete_if_put_before`)."""
        return self.store.delete_if_put_before(hashes, cutoff)

    def iterate(self, start_after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """Every block as (hash, size), sorted, resumable after a hash."""
        return self.store.iterate(start_after)

    def check(self, hashes: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Verify blocks without serving them or moving any: returns (corrupt, missing)
        hashes; a block held in quarantine and not stored afresh counts as corrupt."""
        result = self._check(hashes, quarantine=False)
        return result.corrupt, result.missing

    def scrub_many(self, hashes: Sequence[bytes]) -> ScrubResult:
        """Verify blocks as `check` does, and quarantine the damaged ones."""
        return self._check(hashes, quarantine=True)

    def _check(self, hashes: Sequence[bytes], quarantine: bool) -> ScrubResult:
        absent = self.store.missing(hashes)
        gone = set(absent)
        present = [h for h in dict.fromkeys(hashes) if h not in gone]
        try:
            blocks = self.store.get_many(present)
        except NotFound as exc:  # deleted between the two calls
            absent.extend(exc.hashes)
            gone.update(exc.hashes)
            present = [h for h in present if h not in gone]
            blocks = self.store.get_many(present)
        actual = hash_many(blocks, self._pool)
        bad = [(h, data) for h, data, a in zip(present, blocks, actual, strict=True) if h != a]
        moved = self._quarantine(bad) if quarantine and bad else []
        held = set(self.store.quarantined(absent)) if absent else set()
        corrupt = [h for h, _ in bad] + [h for h in absent if h in held]
        return ScrubResult(corrupt, moved, [h for h in absent if h not in held])

    # -- what the collector, fsck and volumes need of the store (nothing else touches it) --

    def age_s(self, hashes: Sequence[bytes]) -> list[float | None]:
        """Seconds since each block was last put or touched (None: absent); for counting
        only (a dry run): sweeps delete with `delete_if_put_before`."""
        return self.store.age_s(hashes)

    def raw_get_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Blocks as stored, neither verified nor quarantined if damaged: for a caller that
        checks them itself and must move nothing (fsck).  Raises NotFound as `get_many`."""
        return self.store.get_many(hashes)

    def read_range_into(self, hash_: bytes, offset: int, buf: memoryview) -> None:
        """Fill `buf` with verified bytes `[offset, offset + len(buf))` of a block (zeros
        past its end), verifying the block whole at its first range read and later ranges
        piece by piece (pithos.blocker.ranges).  Raises NotFound or IntegrityError."""
        ranges = self._ranges
        if ranges is None:
            with self._ranges_lock:
                if self._ranges is None:
                    self._ranges = VerifiedRanges(self.get, self.store.read)
                ranges = self._ranges
        ranges.read_into(hash_, offset, buf)

    def sizes(self, hashes: Sequence[bytes]) -> list[int | None]:
        """The size of each block, None if absent (see BlockStore.sizes)."""
        return self.store.sizes(hashes)

    def quarantined(self, hashes: Sequence[bytes] | None = None) -> list[bytes]:
        """Blocks whose damaged bytes are held in quarantine (see BlockStore.quarantined)."""
        return self.store.quarantined(hashes)

    def leftovers(self) -> list[str]:
        """Temporary data of dead writers (see BlockStore.leftovers)."""
        return self.store.leftovers()

    def remove_leftovers(self) -> list[str]:
        """Remove the temporary data of dead writers; returns what was removed."""
        return self.store.remove_leftovers()

    def close(self) -> None:
        if self._own_offload:
            self._offload.close()
        self.store.close()


class BlockStream:
    """One block written as its pieces arrive.

    `write` returns as soon as the previous piece is absorbed: the hashing (BLAKE3 releases
    the GIL) and the store's write of a piece run on the pool while the caller reads the
    next one.  `finish` names the block and stores it durably; `abort` drops it."""

    def __init__(self, writer: BlockWriter, pool: Executor, block_size: int) -> None:
        self._writer = writer
        self._pool = pool
        self._max = block_size
        # The tree hasher also gives the outboard, for the same work.
        self._hasher: Any = treehash.TreeHasher() if treehash.AVAILABLE else blake3.blake3()
        self._pending: Future[Any] | None = None
        self.size = 0
        self.hash: bytes | None = None  # known once finished

    def _absorb(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        self._writer.write(data)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def write(self, data: bytes | memoryview) -> None:
        if self.size + len(data) > self._max:
            raise InvalidArgument(f"block exceeds the block size {self._max}")
        self.size += len(data)
        try:
            self._wait()
        except BaseException:
            self.abort()
            raise
        if self._writer.blocking_io:
            self._pending = self._pool.submit(self._absorb, data)
        else:  # hashing alone is worth a thread only for large pieces; the write is a copy
            self._pending = self._pool.submit(self._hasher.update, data)
            self._writer.write(data)

    def finish(self) -> bytes:
        """Store the block (durable on return); returns its hash."""
        return self.finish_async().result()

    def finish_async(self) -> Future[bytes]:
        """Name the block now (`hash` is set on return) and store it on the pool: the future
        gives the hash once the block is durable; meanwhile the caller may read the next
        block or store the map that names this one."""
        try:
            self._wait()
        except BaseException:
            self.abort()
            raise
        hash_: bytes
        if treehash.AVAILABLE:
            hash_, outboard = self._hasher.finish()
            if outboard and isinstance(self._writer, PartsWriter):
                self._writer.keep_outboard(outboard)
        else:
            hash_ = self._hasher.digest()
        self.hash = hash_

        def commit() -> bytes:
            try:
                self._writer.commit(hash_)
            except BaseException:
                self._writer.abort()
                raise
            return hash_

        if self._writer.blocking_io:
            return self._pool.submit(commit)
        # The store offloads its own I/O (e.g. RADOS under a server): commit from here.
        done: Future[bytes] = Future()
        try:
            done.set_result(commit())
        except BaseException as exc:
            done.set_exception(exc)
        return done

    def abort(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            # A piece being written must be done before its file is removed.
            with contextlib.suppress(BaseException):
                self._pending.result()
            self._pending = None
        self._writer.abort()


def _named(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(hash, data, outboard) of one block (the outboard empty up to a part)."""
    hash_, outboard = treehash.name(data) if treehash.AVAILABLE else (block_hash(data), b"")
    return hash_, data, outboard

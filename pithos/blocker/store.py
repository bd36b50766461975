"""The BlockStore interface: a dumb, batched store of immutable blobs named by their hash.

A BlockStore never hashes and never validates content: the `Blocker` above it does. That keeps
backends (memory, local directory, Ceph RADOS) small and makes them interchangeable; every one of
them passes the same contract suite (tests/blocker_contract.py).

Hashes are raw 32-byte `bytes`.  Every method takes a batch so that no hot path pays a round trip
per block; backends are free to serve a batch in parallel.

Reading a block in verified parts is an optional capability (`PartsStore`): a store that offers
it keeps each block's tree outboard (pithos.core.treehash) beside it and opens blocks for ranged
reads; the Blocker uses it where the store offers it and reads blocks whole elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence

from pithos.core.errors import NotFound


class BlockStore(ABC):
    """Immutable blobs by hash.  Thread-safe: any method may be called from several threads."""

    @abstractmethod
    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store each `(hash, data)` pair (`data`: bytes or another bytes-like object).

        - Durable: returns only when every blob is on stable storage (a crash after the return
          loses none of them).
        - Atomic per blob: a blob is either absent or complete under its name, never partial,
          even if the process is killed mid-call.  A batch is not atomic as a whole.
        - Repeat-safe: putting a hash that is present is a no-op (the stored bytes are kept; the
          caller vouches that `hash` names `data`).  It refreshes the blob's age, so a sweep
          that only removes blobs older than its start never removes a blob just re-put.
        - Cheaply checked: a present blob whose size differs from `data`'s is damaged (the
          caller vouches for `data`), so it is quarantined (see `quarantine_many`) and `data`
          stored in its place.  Its content is not compared: a damaged blob of the right size
          is found by the read that fails on it, or by a scrub, and quarantined then.
        - Raises `NoSpace` when out of space, `BackendError` on other failures (`transient`
          says whether a retry may help).  After an error some blobs of the batch may be stored.
        """

    @abstractmethod
    def get_many(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The data of each hash, in order.

        Raises `NotFound` (its `hashes` lists every absent one) if any is absent.  The bytes are
        returned as stored: verifying them is the Blocker's job.
        """

    @abstractmethod
    def read(self, hash_: bytes, offset: int, length: int) -> bytes:
        """Up to `length` bytes of one blob from `offset`.

        Short only at the end of the blob (an offset at or past the end gives b"").  Raises
        `NotFound` if absent, `InvalidArgument` for a negative offset or length.
        """

    @abstractmethod
    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The hashes of the batch that are absent, in the order given (duplicates once)."""

    @abstractmethod
    def touch_many(self, hashes: Sequence[bytes], fresh_since: float | None = None
                   ) -> list[bytes]:
        """Refresh the age of each present blob, as a repeat put would, without its bytes;
        returns the absent hashes (in the order given, each once).  A writer that references
        blocks it did not send (a hashmap upload) touches them first, so that a concurrent
        sweep, which removes only blobs older than its mark, spares them.

        `fresh_since` (`time.time()`'s clock): a blob last put at or after it may be left
        as it is, only found present (no write).  A writer passes the time its lease pins
        (pithos.catalog.leases.WriterLeases.pin): no sweep removes such a blob before the
        writer ends.  A store may refresh every blob anyway."""

    @abstractmethod
    def delete_many(self, hashes: Sequence[bytes]) -> int:
        """Remove each blob, whatever its age; durable on return.  Absent hashes are ignored
        (repeat-safe).  Returns how many blobs were removed.  Not for a sweep of unreferenced
        blobs, which races with writers re-putting them: see `delete_if_put_before`."""

    @abstractmethod
    def delete_if_put_before(self, hashes: Sequence[bytes], cutoff: float) -> list[bytes]:
        """Remove each blob last put (written or refreshed by `put_many`, `touch_many` or a
        writer's `commit`) before `cutoff`, in seconds since the epoch (`time.time()`'s
        clock); durable on return.  Returns the removed hashes (each once, in the order
        given); absent and younger blobs are left alone.

        Atomic per blob against a concurrent put or touch of it: either the put or touch
        comes first, refreshes the age, and the blob is kept; or the removal comes first, and
        the put stores the blob anew, the touch reports it absent.  So a writer that put or
        touched a blob, and then recorded a reference to it, never finds it removed by a
        sweep with an earlier cutoff.  (Checking `age_s` and then calling `delete_many` does
        not give this: a put between the two is lost.)  A blob whose age cannot be told (not
        put through this store) is never removed."""

    @abstractmethod
    def iterate(self, start_after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """Every stored blob as `(hash, size)` in ascending hash order, starting after
        `start_after` (so an interrupted scan resumes from the last hash it saw).  Blobs put or
        deleted during the scan may or may not appear."""

    def touch_sizes(self, hashes: Sequence[bytes], fresh_since: float | None = None
                    ) -> list[int | None]:
        """`touch_many` that also gives the size of each blob it refreshed: None for an
        absent one (in the order given).  A hashmap upload touches the blocks it names and
        holds its entries' lengths to their sizes; a store that finds both in one look-up
        overrides this (LocalBlockStore: one pass over its packs' index, not three)."""
        absent = set(self.touch_many(hashes, fresh_since))
        present = [h for h in dict.fromkeys(hashes) if h not in absent]
        found = dict(zip(present, self.sizes(present), strict=True))
        return [found.get(h) for h in hashes]

    def sizes(self, hashes: Sequence[bytes]) -> list[int | None]:
        """The size of each blob in bytes, None if absent (in the order given).  A hashmap
        upload holds the lengths its entries claim to this.  The default reads the blobs;
        stores override it with a cheaper look-up."""
        absent = set(self.missing(hashes))
        present = [h for h in dict.fromkeys(hashes) if h not in absent]
        try:
            found = dict(zip(present, (len(b) for b in self.get_many(present)), strict=True))
        except NotFound as exc:  # removed between the two calls
            gone = set(exc.hashes)
            rest = [h for h in present if h not in gone]
            found = dict(zip(rest, (len(b) for b in self.get_many(rest)), strict=True))
        return [found.get(h) for h in hashes]

    @abstractmethod
    def age_s(self, hashes: Sequence[bytes]) -> list[float | None]:
        """Seconds since each blob was last put (written or refreshed), None if absent.  The
        garbage collector sweeps only blobs older than the start of its mark (with
        `delete_if_put_before`; ages alone only serve to count, as in a dry run)."""

    @abstractmethod
    def quarantine_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Move aside each blob `(hash, seen)` whose stored bytes are still `seen`: the bytes a
        read returned and the caller found damaged (they do not match the hash).  A blob moved
        aside is absent afterwards (`missing` lists it, `get_many` raises `NotFound`), so the
        next put of the hash stores it afresh; its damaged bytes are kept apart, where
        `quarantined` finds them (one entry per hash: a later quarantine of the same hash
        replaces it).  Returns the hashes moved aside (each once, in the order given).

        - Atomic per blob: the blob is moved whole or not at all, and only if its bytes are
          `seen`: a blob that is absent, or was stored afresh since it was read (a healthy
          copy, or another damaged one), is left in place and not returned.  So two readers
          that found the same damage never move a copy stored in between.
        - Repeat-safe: a second call finds the blob absent (or healthy) and does nothing.
        - Durable on return.  Raises `BackendError` on failures."""

    @abstractmethod
    def quarantined(self, hashes: Sequence[bytes] | None = None) -> list[bytes]:
        """The hashes that have damaged bytes held in quarantine: among `hashes` (in the order
        given, each once), or all of them (sorted) when None.  A hash may also be present
        again, stored afresh by a later put: it is then healed, and its quarantined copy is
        kept for the operator."""

    def leftovers(self) -> list[str]:
        """Temporary data of writers that died (killed mid-put), by name; never that of a
        writer still alive, however slow.  A store whose writes leave nothing behind (the
        default) returns []."""
        return []

    def remove_leftovers(self) -> list[str]:
        """Remove `leftovers()` and return their names; a live writer's data is never
        touched.  Repeat-safe."""
        return []

    def open_writer(self) -> BlockWriter:
        """A writer for one blob whose bytes arrive in pieces before its name is known (an
        upload streamed from the network).  Backends that can place bytes before naming them
        (a temporary file renamed at the end) override this, so the blob is written while
        it arrives; the default keeps the pieces in memory and puts them at `commit`."""
        return BufferedBlockWriter(self)

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release resources.  The store must not be used afterwards."""

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockWriter(ABC):
    """One blob being written piece by piece; it gets its name at `commit`.

    Not thread-safe: one caller writes, in order.  Until `commit` returns nothing is visible
    under any name; `abort` (or a crash) leaves nothing but, at worst, temporary data the
    backend removes later."""

    # True: `write` and `commit` do blocking I/O on the calling thread, so a caller under an
    # event loop runs them on its pool of threads.  False: they may hand I/O to the store's
    # own executor, which must then be done from the loop's thread, not from that pool.
    blocking_io = False

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append `data` to the blob."""

    @abstractmethod
    def commit(self, hash_: bytes) -> None:
        """Store everything written under `hash_`, with `put_many`'s guarantees: durable and
        complete on return, and a no-op that refreshes the age if `hash_` is already
        present (with the same size; one of another size is quarantined and replaced).  The
        writer is finished afterwards."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written.  Safe to call after `commit` or twice."""



class PartsStore(BlockStore):
    """The optional capability of reading a blob in verified parts: the store keeps a
    blob's tree outboard (pithos.core.treehash) beside it when given one, and opens the blob
    for ranged reads with it.  The outboard is an aid to reading, never needed to read: a
    store may drop it (e.g. a filesystem that refuses extended attributes), and then reads
    that blob whole."""

    @abstractmethod
    def put_many(self, items: Sequence[tuple[bytes, bytes]],
                 outboards: Mapping[bytes, bytes] | None = None) -> None:
        """`BlockStore.put_many`, keeping beside each blob the outboard `outboards` gives
        for its hash, if any."""

    @abstractmethod
    def open_parts(self, hash_: bytes) -> PartReader | None:
        """A reader of the blob's byte ranges, with the outboard kept beside it, so that it
        can be verified and served part by part; None when the store keeps no outboard for
        it.  Blocking: call it from a thread that may block.  Raises `NotFound` when the blob
        is absent."""

    @abstractmethod
    def open_writer(self) -> PartsWriter:
        """`BlockStore.open_writer`, whose writer can keep the blob's outboard."""


class PartsWriter(BlockWriter):
    """A `PartsStore`'s writer."""

    @abstractmethod
    def keep_outboard(self, outboard: bytes) -> None:
        """Before `commit`: the blob's tree outboard, to keep beside it for `open_parts`."""


class PartReader(ABC):
    """One blob opened for reading ranges (`PartsStore.open_parts`).  Blocking, and safe to
    read from two threads at once; `close` once no read is running."""

    size: int
    outboard: bytes

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Bytes `[offset, offset + length)`, short only at the blob's end."""

    @abstractmethod
    def close(self) -> None:
        """Release the blob.  Safe to call twice."""


class BufferedBlockWriter(BlockWriter):
    """The pieces in memory until `commit` puts them as one blob."""

    def __init__(self, store: BlockStore) -> None:
        self._store = store
        self._pieces: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self._pieces.append(bytes(data))

    def commit(self, hash_: bytes) -> None:
        data = b"".join(self._pieces)
        self._pieces = []
        self._store.put_many([(hash_, data)])

    def abort(self) -> None:
        self._pieces = []

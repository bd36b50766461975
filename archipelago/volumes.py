"""The volume manager: create, clone, snapshot, resize, delete, list and open volumes.

Write ordering (MUST), as for the rest of the system:
1. Blocks of a snapshot are durable before the map pages naming them (Mapper.store_entries).
2. The snapshot's head is durable before the volume's head moves onto the snapshot's root.
3. The volume's head (new base root, next delta generation) is committed before the old
   generation's delta is removed.
A crash between any two steps leaves every head readable with its old or new content.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator

from archipelago.base import BaseView, VerifiedBlocks
from archipelago.delta import DeltaStore, LocalDeltaStore
from archipelago.heads import SECTOR_SIZE, Head, HeadStore, LocalHeadStore, check_name, new_head
from archipelago.volume import Volume
from pithos.blocker import DEFAULT_BLOCK_SIZE, Blocker
from pithos.blocker.urls import open_block_store
from pithos.catalog.leases import WriterLeases
from pithos.core.errors import Conflict, IntegrityError, InvalidArgument, NotFound
from pithos.core.hashing import from_hex, to_hex
from pithos.mapper import Mapper
from pithos.mapper import codec as mapcodec
from pithos.mapper.gc import refresh_map

# Blocks folded and stored per batch at snapshot time (bounds memory to ~64 MiB).
FOLD_BATCH_BYTES = 64 * 1024 * 1024
MIN_SIZE_ALIGN = 512


def _check_size(size: int) -> int:
    if size <= 0 or size % MIN_SIZE_ALIGN:
        raise InvalidArgument(f"volume size must be a positive multiple of {MIN_SIZE_ALIGN} "
                              f"bytes, not {size}")
    return size


class Volumes:
    """Volumes and snapshots over one block store.  `heads` and `deltas` are the mutable
    stores (local directory now, RADOS later); `blocker` the shared block store."""

    def __init__(self, blocker: Blocker, heads: HeadStore, deltas: DeltaStore,
                 lease_wait_s: float = 0.0, writers: WriterLeases | None = None) -> None:
        """`writers`: the process's writer leases (pithos.catalog.leases), so that a
        collector running meanwhile spares the blocks a snapshot or clone stores or names;
        the entry point gives them (without, nothing protects those blocks from a
        concurrent `pithos gc`)."""
        self.blocker = blocker
        self.writers = writers
        # How long administrative calls (snapshot, resize, delete, open) wait for a writer
        # that is finishing (an NBD client that just disconnected) to release its lease.
        self.lease_wait_s = lease_wait_s
        self.heads = heads
        self.deltas = deltas
        self.blocks = VerifiedBlocks(blocker)
        self._mappers: dict[int, Mapper] = {}

    @classmethod
    def local(cls, data_dir: str, lease_wait_s: float = 0.0) -> Volumes:
        """The embedded layout: blocks in `<data_dir>/blocks` (shared with `pithos store`),
        volumes in `<data_dir>/volumes`."""
        os.makedirs(data_dir, exist_ok=True)
        blocker = Blocker(open_block_store(os.path.join(data_dir, "blocks")),
                          block_size=DEFAULT_BLOCK_SIZE)
        vdir = os.path.join(data_dir, "volumes")
        return cls(blocker, LocalHeadStore(vdir), LocalDeltaStore(vdir), lease_wait_s)

    @classmethod
    def at(cls, data_dir: str, blocks_url: str, lease_wait_s: float = 0.0) -> Volumes:
        """Volumes of a data directory over the block store at `blocks_url` (file:// or
        rados://; see pithos.blocker.urls).  With file://, heads and deltas stay in
        `<data_dir>/volumes`; with rados://, they live in the same pool, in the namespace
        `<namespace>.volumes` (archipelago.rados), so every host of the cluster shares them."""
        os.makedirs(data_dir, exist_ok=True)
        heads, deltas = _mutable_stores(data_dir, blocks_url)
        try:
            blocker = Blocker(open_block_store(blocks_url), block_size=DEFAULT_BLOCK_SIZE)
        except BaseException:
            _close_stores(deltas, heads)
            raise
        return cls(blocker, heads, deltas, lease_wait_s)

    def mapper(self, block_size: int) -> Mapper:
        m = self._mappers.get(block_size)
        if m is None:
            m = self._mappers[block_size] = Mapper(self.blocker, block_size=block_size)
        return m

    # -- queries -----------------------------------------------------------------------------

    def get(self, name: str) -> Head:
        return self.heads.get(check_name(name))

    def list(self) -> list[Head]:
        return list(self.heads.heads())

    def info(self, name: str) -> dict[str, object]:
        head = self.get(name)
        out: dict[str, object] = head.to_json()
        out["delta_bytes"] = (0 if head.readonly else
                              self.deltas.allocated_bytes(head.name, head.generation))
        return out

    def gc_roots(self) -> Iterator[bytes]:
        """Every map root a volume or snapshot references (the GC must keep them and all they
        name).  Blocks a snapshot in progress has stored but not yet committed are not
        listed: its writer lease protects them (pithos.catalog.leases)."""
        for head in self.heads.heads():
            if head.root:
                yield from_hex(head.root)

    # -- writers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[contextlib.AbstractContextManager[None]]:
        """Be a writer while blocks are stored or touched; yields the guard to commit in."""
        if self.writers is None:
            yield contextlib.nullcontext()
            return
        with self.writers.held() as ticket:
            yield self.writers.commit_guard(ticket)

    # -- lifecycle ---------------------------------------------------------------------------

    def create(self, name: str, size: int, block_size: int = DEFAULT_BLOCK_SIZE) -> Head:
        """A new, empty volume (reads zeros, takes no space)."""
        _check_size(size)
        if block_size % SECTOR_SIZE or not 0 < block_size <= self.blocker.block_size:
            raise InvalidArgument(f"block size must be a multiple of {SECTOR_SIZE} up to "
                                  f"{self.blocker.block_size}, not {block_size}")
        return self.heads.put(new_head(name, "volume", size, block_size, None, 0), None)

    def clone(self, source: str, name: str, size: int | None = None) -> Head:
        """A new volume over a snapshot's map: O(1), no data copied."""
        snap = self.get(source)
        if not snap.readonly:
            raise InvalidArgument(f"{source!r} is a volume: snapshot it first, then clone the "
                                  "snapshot")
        assert snap.root is not None
        return self._clone(from_hex(snap.root), snap.base_size, snap.block_size, name, size,
                           origin=f"snapshot {source}")

    def clone_root(self, root: bytes, name: str, size: int | None = None,
                   content: bytes | None = None) -> Head:
        """A new volume over any map (an image stored with `pithos store put`): O(1).  With
        `content` (a small object's, kept inline in its version row, whose root names
        nothing stored), the clone stores it as one block and its map first, as a writer."""
        if content is not None:
            block_size = DEFAULT_BLOCK_SIZE
            if content and len(content) % SECTOR_SIZE == 0 \
                    and len(content) <= self.blocker.block_size:
                block_size = len(content)
            return self._clone(root, len(content), block_size, name, size,
                               origin=f"map {to_hex(root)}", content=content)
        m = self.mapper(DEFAULT_BLOCK_SIZE)
        try:
            stat = m.stat(root)
        except NotFound:
            raise NotFound(f"no map with root {to_hex(root)}") from None
        block_size = DEFAULT_BLOCK_SIZE
        if stat.entries:
            first = next(iter(m.entries(root, 0, 1)))[1]
            if first % SECTOR_SIZE == 0 and first <= self.blocker.block_size:
                block_size = first
        return self._clone(root, stat.size, block_size, name, size, origin=f"map {to_hex(root)}")

    def _clone(self, root: bytes, base_size: int, block_size: int, name: str,
               size: int | None, origin: str, content: bytes | None = None) -> Head:
        natural = max(-(-base_size // MIN_SIZE_ALIGN) * MIN_SIZE_ALIGN, MIN_SIZE_ALIGN)
        size = natural if size is None else _check_size(size)
        if size < base_size:
            raise InvalidArgument(f"a clone cannot be smaller than its source ({base_size})")
        head = new_head(name, "volume", size, block_size, to_hex(root), base_size, origin)
        with self._writing() as commit:
            # The source may stop naming the map meanwhile (an object deleted, a snapshot
            # removed): as a writer, the clone refreshes what it names.  (Metadata only: a
            # touch per page and block, no data read or copied.)
            if content is not None:
                stored, _ = self.mapper(DEFAULT_BLOCK_SIZE).build(io.BytesIO(content))
                if stored != root:
                    raise IntegrityError(f"content stored as {to_hex(stored)} is not map "
                                         f"{to_hex(root)}", [root])
            else:
                refresh_map(self.blocker, root)
            with commit:
                return self.heads.put(head, None)

    def resize(self, name: str, size: int) -> Head:
        """Grow a volume (shrinking is refused: it would drop data)."""
        _check_size(size)
        head = self.get(name)
        if head.readonly:
            raise InvalidArgument(f"{name!r} is a snapshot: snapshots never change")
        if size < head.size:
            raise InvalidArgument(f"{name!r} can only grow ({head.size} -> {size} refused)")
        with contextlib.closing(self.open(name)) as vol:
            assert vol.delta is not None and vol.lease is not None
            vol.delta.resize(size)
            vol.lease.check()
            head = self.heads.put(vol.head.replace(size=size), vol.head.version)
        return head

    def delete(self, name: str) -> None:
        """Remove a volume (taking its lease: not while it is served) or a snapshot.  Clones
        of a snapshot keep working: they name its map, not its head."""
        head = self.get(name)
        if head.readonly:
            self.heads.delete(name, head.version)
            return
        lease = self.heads.acquire(name, self.lease_wait_s)
        try:
            head = self.get(name)
            self.heads.delete(name, head.version)  # the reference goes first
        finally:
            lease.release()
        self.deltas.remove(name)

    # -- opening -----------------------------------------------------------------------------

    def base_view(self, head: Head) -> BaseView:
        if head.root is None:
            return BaseView(self.blocks, [], 0)
        m = self.mapper(head.block_size)
        entries = list(m.entries(from_hex(head.root)))
        for length in {n for _, n in entries}:
            self.blocks.note_zero(length)
        return BaseView(self.blocks, entries, head.base_size)

    def open(self, name: str, readonly: bool = False) -> Volume:
        """Open a volume for writing (taking its lease: Conflict if held) or, with
        `readonly` or for a snapshot, for reading only."""
        head = self.get(name)
        if readonly or head.readonly:
            return Volume(head, self.base_view(head))
        lease = self.heads.acquire(name, self.lease_wait_s)
        try:
            head = self.get(name)
            self.deltas.remove(name, keep=head.generation)  # leftovers of a crashed snapshot
            delta = self.deltas.open(name, head.generation, head.size)
            try:
                return Volume(head, self.base_view(head), delta, lease)
            except BaseException:
                delta.close()
                raise
        except BaseException:
            lease.release()
            raise

    def snapshot(self, volume: str, name: str) -> Head:
        """Freeze a volume's content as snapshot `name`; the volume goes on over it."""
        check_name(name)
        with contextlib.suppress(NotFound):
            self.get(name)
            raise Conflict(f"{name!r} already exists")
        with contextlib.closing(self.open(volume)) as vol:
            return self.snapshot_open(vol, name)

    def snapshot_open(self, vol: Volume, name: str) -> Head:
        """Snapshot a volume this process holds open for writing."""
        if vol.delta is None or vol.lease is None:
            raise InvalidArgument(f"{vol.name!r} is not open for writing")
        with self._writing() as commit:
            return self._snapshot(vol, name, commit)

    def _snapshot(self, vol: Volume, name: str,
                  commit: contextlib.AbstractContextManager[None]) -> Head:
        assert vol.delta is not None and vol.lease is not None
        vol.flush()
        head = vol.head
        m = self.mapper(head.block_size)
        hashes: list[bytes] = []
        lengths: list[int] = []
        batch: list[tuple[int, bytes]] = []  # (entry index, data)
        batch_bytes = 0

        def store() -> None:
            nonlocal batch, batch_bytes
            if batch:
                stored = self.blocker.put_many([data for _, data in batch])
                for (i, _), h in zip(batch, stored, strict=True):
                    hashes[i] = h
                batch, batch_bytes = [], 0

        for start, n, base_hash in vol.touched_spans(head.block_size):
            lengths.append(n)
            if base_hash:
                hashes.append(base_hash)
                continue
            data = vol.read(start, n) if base_hash is None else b""
            if base_hash == b"" or mapcodec.is_zero(data):
                hashes.append(m.zero_block(n))
                self.blocks.note_zero(n)
                continue
            hashes.append(b"")
            batch.append((len(hashes) - 1, bytes(data)))
            batch_bytes += n
            if batch_bytes >= FOLD_BATCH_BYTES:
                store()
        store()
        root = m.store_entries(hashes, lengths)  # blocks, then pages: durable
        snap = new_head(name, "snapshot", head.size, head.block_size, to_hex(root), head.size,
                        origin=f"volume {head.name}")
        # The volume goes on over the snapshot with an empty delta of the next generation.
        new_delta = self.deltas.open(head.name, head.generation + 1, head.size)
        try:
            with commit:  # a writer that lost its lease commits neither head
                snap = self.heads.put(snap, None)
                vol.lease.check()
                moved = self.heads.put(head.replace(root=to_hex(root), base_size=head.size,
                                                    generation=head.generation + 1,
                                                    origin=head.origin), head.version)
        except BaseException:
            new_delta.close()
            raise
        old = vol.delta
        with vol._lock:
            vol.head, vol.delta = moved, new_delta
            vol.base = BaseView(self.blocks, list(zip(hashes, lengths, strict=True)), head.size)
        old.close()
        self.deltas.remove(head.name, keep=moved.generation)
        return snap

    def close(self) -> None:
        try:
            # Deltas first: their writes in flight land before the leases are let go.
            _close_stores(self.deltas, self.heads)
        finally:
            self.blocker.close()


def _mutable_stores(data_dir: str, blocks_url: str) -> tuple[HeadStore, DeltaStore]:
    if blocks_url.startswith("rados:"):
        from archipelago.rados import open_rados_stores

        return open_rados_stores(blocks_url)
    vdir = os.path.join(data_dir, "volumes")
    return LocalHeadStore(vdir), LocalDeltaStore(vdir)


def _close_stores(*stores: object) -> None:
    """Stores with a connection (RADOS) have a close(); local ones need none."""
    for store in stores:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def gc_roots(data_dir: str, blocks_url: str | None = None) -> Iterator[bytes]:
    """Every map root referenced by the volumes and snapshots of a data directory (for the
    garbage collector's mark phase).  With a rados:// `blocks_url`, the volumes are those of
    the cluster (see `Volumes.at`), not of the directory."""
    for head in root_heads(data_dir, blocks_url):
        assert head.root is not None
        yield from_hex(head.root)


def root_heads(data_dir: str, blocks_url: str | None = None) -> list[Head]:
    """The volumes and snapshots that name a map (as `gc_roots`), with their names."""
    if blocks_url is not None and blocks_url.startswith("rados:"):
        heads, deltas = _mutable_stores(data_dir, blocks_url)
        try:
            return [head for head in heads.heads() if head.root]
        finally:
            _close_stores(deltas, heads)
    vdir = os.path.join(data_dir, "volumes")
    if not os.path.isdir(vdir):
        return []  # no volume was ever made (and a reader makes no directory: the disk may be full)
    return [head for head in LocalHeadStore(vdir).heads() if head.root]

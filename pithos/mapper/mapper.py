"""The mapper: builds, reads and updates maps.

A map is the ordered list of entries (block hash, length) of one object version, volume or image,
plus its size.  It is stored as a tree of map pages, themselves blocks in the same block store
(see codec.py for their layout): leaves hold up to `fanout` entries, interior pages up to `fanout`
children with their byte and entry counts.  The hash of the top page, the **root**, names the map.

The tree is canonical: leaves are filled left to right with `fanout` entries each, so its shape
depends only on the entry list.  An update rewrites only the leaves it touches plus the pages
above them; every other page and block is shared with the old map, and the old root keeps
reading the old content.

Write ordering: blocks are durable before any page naming them is written, pages before the root
is returned to the caller (who then commits it to the catalog or a volume head).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import BinaryIO, NamedTuple

from pithos.blocker.blocker import Blocker, BlockStream, StagedBlock
from pithos.core.cdc import Chunker
from pithos.core.errors import IntegrityError, InvalidArgument, NotFound
from pithos.core.hashing import block_hash, merkle_root, to_hex
from pithos.core.locks import native_lock
from pithos.mapper import codec
from pithos.mapper.streams import concat_chunks, exactly, read_chunks, read_exactly, rechunk, zeros

DEFAULT_FANOUT = 1024
DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
# The decoded pages a mapper keeps, bounded by their entries: a page counts its entries and
# PAGE_UNITS more (its own objects weigh about that many entries' worth).  The bound is 256
# full pages (~30 MB of Python objects), as many pages as the cache once held whatever their
# size, so a cache of small maps' pages (a 4 MiB object's map is one page of one entry)
# holds ~50,000 of them instead of 256: on RADOS each page not kept costs a GET a read from
# the OSD.  (Pages are named by their hash: a kept one is never stale.)
PAGE_UNITS = 4
PAGE_CACHE_UNITS = 256 * (DEFAULT_FANOUT + PAGE_UNITS)
# Batches in the write pipeline at once; with the one being filled, bounds a build's memory
# to (MAX_INFLIGHT + 1) * batch_bytes.
MAX_INFLIGHT = 2
# An upload's blocks are hashed and written in pieces of this size while the next is read.
# Each piece costs the event loop and the pool a round of hand-offs (a pool task, its wake-up,
# an MD5 queue entry): 1 MiB pieces took 20% less server CPU per 4 MiB PUT at 16 clients than
# 512 KiB ones, and PUT at one client was no slower (its MD5 starts a piece later, but the
# hand-offs it competed with for the two cores are halved).
STREAM_PIECE = 1024 * 1024
# The bytes of content-defined chunks an upload hashes and stores at once (_build_chunked).
CHUNKED_BATCH = 4 * 1024 * 1024
# Blocks of one upload being synced at once.
STREAM_INFLIGHT = 4
# A read's batch after its first holds as many blocks as fit `batch_blocks` full blocks'
# bytes, up to this many: a batch of two content-defined chunks (32 KiB) cost the round trips
# of one of two 4 MiB blocks (a read-ahead task, a pool task for the store's read, a look-up
# of the packs index, a pack opened), and confirming a 1 GB first sync's declared ETags took
# the server ~16 s of CPU, three times the sync's own.
READ_BATCH_MAX = 1024


class MapStat(NamedTuple):
    size: int
    entries: int


class Piece(NamedTuple):
    """Part of one block: `length` bytes from `offset` of the block `hash` (of
    `block_length` bytes)."""
    hash: bytes
    offset: int
    length: int
    block_length: int


class _Ref(NamedTuple):
    """A page as seen from its parent: hash, bytes and entries below it."""
    hash: bytes
    size: int
    entries: int


class _Page(NamedTuple):
    level: int
    hashes: list[bytes]
    sizes: list[int]
    counts: list[int]  # (empty for a leaf)


def _units(page: _Page) -> int:
    """A page's weight in the page cache (PAGE_CACHE_UNITS)."""
    return len(page.hashes) + PAGE_UNITS


class _NewLeaf(NamedTuple):
    """A leaf page about to be stored: its encoding, bytes and entries below it, and itself
    decoded."""
    page: bytes
    size: int
    entries: int
    decoded: _Page


class Mapper:
    """Maps over a `Blocker`.

    `block_size` (default: the blocker's) is the fixed chunk size used for new data; `fanout`
    the most entries per map page; `batch_bytes` how much data a build hands to the block store
    at once; `page_cache` the bound of the decoded pages kept, in entries (PAGE_CACHE_UNITS).
    """

    def __init__(self, blocker: Blocker, block_size: int | None = None,
                 fanout: int = DEFAULT_FANOUT, batch_bytes: int = DEFAULT_BATCH_BYTES,
                 page_cache: int = PAGE_CACHE_UNITS) -> None:
        self.blocker = blocker
        self.block_size = block_size or blocker.block_size
        if not 0 < self.block_size <= blocker.block_size:
            raise InvalidArgument(f"block size {self.block_size} not in (0, "
                                  f"{blocker.block_size}]")
        if fanout < 2:
            raise InvalidArgument("fanout must be at least 2")
        if codec.page_size(fanout) > blocker.block_size:
            raise InvalidArgument(f"map pages of {fanout} entries would exceed the block size")
        self.fanout = fanout
        self.batch_bytes = max(batch_bytes, self.block_size)
        self._cache: OrderedDict[bytes, _Page] = OrderedDict()
        self._cache_max = page_cache  # in units: see PAGE_CACHE_UNITS
        self._cache_units = 0
        self._lock = native_lock()  # (dict moves only; greenlets and pool threads take it)
        # Zero blocks are recognised without hashing and served without reading.
        self._zero_hashes: dict[bytes, int] = {}
        self._zero_by_length: dict[int, bytes] = {}

    # -- pages -----------------------------------------------------------------------------

    def _pages(self, hashes: Sequence[bytes]) -> list[_Page]:
        """Decoded pages, from the cache or verified from the store."""
        with self._lock:
            cache = self._cache
            found = {h: cache[h] for h in hashes if h in cache}
            for h in found:  # (least recently used first out: a hot map's pages stay)
                cache.move_to_end(h)
        wanted = [h for h in dict.fromkeys(hashes) if h not in found]
        if wanted:
            try:
                blobs = self.blocker.get_many(wanted)
            except NotFound as exc:
                raise NotFound("map page(s) not found: "
                               + ", ".join(to_hex(h) for h in exc.hashes[:4]),
                               exc.hashes) from None
            for h, blob in zip(wanted, blobs, strict=True):
                try:
                    found[h] = _Page(*codec.decode_page(blob))
                except ValueError as exc:
                    raise IntegrityError(f"{to_hex(h)} is not a map page: {exc}", [h]) from None
            self._remember([(h, found[h]) for h in wanted])
        return [found[h] for h in hashes]

    def _leaves(self, root: bytes) -> list[_Ref]:
        """The leaf pages of a map, in order."""
        (top,) = self._pages([root])
        if top.level == 0:
            return [_Ref(root, sum(top.sizes), len(top.hashes))]
        refs = [_Ref(*r) for r in zip(top.hashes, top.sizes, top.counts, strict=True)]
        level = top.level
        while level > 1:
            pages = self._pages([r.hash for r in refs])
            refs = []
            for page in pages:
                if page.level != level - 1:
                    raise IntegrityError(f"map {to_hex(root)} has a page at the wrong level")
                refs.extend(_Ref(*r) for r in zip(page.hashes, page.sizes, page.counts,
                                                  strict=True))
            level -= 1
        return refs

    def _tree(self, leaves: list[_NewLeaf], kept: Sequence[_Ref] = (), at: int = 0
              ) -> tuple[bytes, list[StagedBlock], list[tuple[bytes, _Page]]]:
        """Name the pages of a map: new `leaves` inserted among the `kept` leaf refs at index
        `at`, and the nodes above.  Returns the root, the staged pages, to be stored (in any
        order, one batch) before the root is used, and the new pages decoded (for the cache,
        once stored).  Unchanged nodes encode the same, so storing them again costs only a
        refresh."""
        staged = [self.blocker.stage(leaf.page) for leaf in leaves]
        built = [(st.hash, leaf.decoded) for st, leaf in zip(staged, leaves, strict=True)]
        refs = [*kept[:at],
                *(_Ref(st.hash, leaf.size, leaf.entries)
                  for st, leaf in zip(staged, leaves, strict=True)),
                *kept[at:]]
        if not refs:
            empty = self.blocker.stage(codec.encode_leaf([], []))
            return empty.hash, [empty], [(empty.hash, _Page(0, [], [], []))]
        level = 1
        while len(refs) > 1:
            groups = [refs[i:i + self.fanout] for i in range(0, len(refs), self.fanout)]
            decoded = [_Page(level, [r.hash for r in g], [r.size for r in g],
                             [r.entries for r in g]) for g in groups]
            nodes = [self.blocker.stage(codec.encode_node(*page)) for page in decoded]
            staged.extend(nodes)
            built.extend((st.hash, page) for st, page in zip(nodes, decoded, strict=True))
            refs = [_Ref(st.hash, sum(r.size for r in g), sum(r.entries for r in g))
                    for st, g in zip(nodes, groups, strict=True)]
            level += 1
        return refs[0].hash, staged, built

    def _store_tree(self, leaves: list[_NewLeaf], kept: Sequence[_Ref] = (),
                    at: int = 0) -> bytes:
        root, staged, built = self._tree(leaves, kept, at)
        self.blocker.put_staged(staged)
        self._remember(built)
        return root

    def _remember(self, pages: list[tuple[bytes, _Page]]) -> None:
        """Cache decoded pages: read and verified from the store, or just stored durably by a
        build (whose caller usually reads the map straight back: the catalog grant lists its
        blocks, a GET follows a PUT)."""
        with self._lock:
            cache = self._cache
            for h, page in pages:
                if h not in cache:
                    self._cache_units += _units(page)
                cache[h] = page
                cache.move_to_end(h)
            while self._cache_units > self._cache_max and cache:
                self._cache_units -= _units(cache.popitem(last=False)[1])

    def _leaf_pages(self, hashes: list[bytes], lengths: list[int]) -> list[_NewLeaf]:
        f = self.fanout
        out = []
        for i in range(0, len(hashes), f):
            hs, ls = hashes[i:i + f], lengths[i:i + f]
            out.append(_NewLeaf(codec.encode_leaf(hs, ls), sum(ls), len(ls),
                                _Page(0, hs, ls, [])))
        return out

    # -- zero blocks -------------------------------------------------------------------------

    def _zero_hash(self, length: int) -> bytes:
        h = self._zero_by_length.get(length)
        if h is None:
            h = block_hash(bytes(length))
            with self._lock:
                self._zero_by_length[length] = h
                self._zero_hashes[h] = length
        return h

    def _store_zero(self, length: int) -> bytes:
        """The hash of `length` zero bytes, refreshed (or stored) at each use, so that maps
        never name an absent block: a collector may have removed it since the last use, when
        no map named it, and it spares only blocks a writer in flight put or touched."""
        h = self._zero_hash(length)
        if self.blocker.touch_many([h]):
            self.blocker.put(bytes(length))
        return h

    def zero_block(self, length: int) -> bytes:
        """The hash of `length` zero bytes, stored once per mapper (so a map built with
        `store_entries` never names an absent block).  Repeat-safe."""
        if not 0 < length <= self.blocker.block_size:
            raise InvalidArgument(f"zero block of {length} bytes")
        return self._store_zero(length)

    def store_entries(self, hashes: Sequence[bytes], lengths: Sequence[int]) -> bytes:
        """Store the map whose entries are exactly `(hashes[i], lengths[i])`; returns its root.

        The caller vouches that every named block is already durable (write ordering rule 1);
        the pages are durable on return.  The tree is the canonical one, so the root equals
        what `build` gives for the same content cut at the same boundaries, and pages shared
        with other maps are only refreshed.  Cost: proportional to the number of entries."""
        if len(hashes) != len(lengths):
            raise InvalidArgument("hashes and lengths differ in count")
        if any(n <= 0 for n in lengths):
            raise InvalidArgument("map entries must not be empty")
        return self._store_tree(self._leaf_pages(list(hashes), list(lengths)))

    # -- building ----------------------------------------------------------------------------

    def build(self, stream: BinaryIO) -> tuple[bytes, int]:
        """Store a stream as a new map; returns (root, size)."""
        return next(iter(self.build_many([stream])))

    def build_many(self, streams: Iterable[BinaryIO],
                   batch_bytes: int | None = None) -> Iterator[tuple[bytes, int]]:
        """Store each stream as a map; yields (root, size) for each, in order, as soon as its
        blocks and pages are durable.

        Blocks are hashed as they are read; blocks and the map pages of finished streams fill
        shared batches (about `batch_bytes`) that a background thread stores while the next
        batch is read.  So many small files share a few syncs, reading overlaps writing, and
        memory stays bounded by a few batches whatever the streams' sizes.  (A server's
        uploads use `build_stream`.)
        """
        limit = max(batch_bytes or self.batch_bytes, self.block_size)
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapbuild")
        inflight: deque[tuple[int, Future[None]]] = deque()
        ready: deque[tuple[int, bytes, int]] = deque()  # (batch it waits for, root, size)
        batch: list[StagedBlock] = []
        batch_no = 0
        batch_size = 0
        done_upto = -1  # every batch up to this one is durable

        def submit() -> None:
            nonlocal batch, batch_no, batch_size
            # One writer thread: batches are stored one after another, in order (a batch's
            # pages name blocks of earlier batches, which must be durable first).
            inflight.append((batch_no, writer.submit(self.blocker.put_staged, batch)))
            batch, batch_no, batch_size = [], batch_no + 1, 0

        def collect(wait_for: int) -> None:
            """Take finished batches in order; wait until batch `wait_for` is done."""
            nonlocal done_upto
            while inflight and (inflight[0][0] <= wait_for or inflight[0][1].done()):
                no, fut = inflight.popleft()
                fut.result()
                done_upto = no

        try:
            for stream in streams:
                hashes: list[bytes] = []
                lengths: list[int] = []
                for chunk in read_chunks(stream, self.block_size):
                    if codec.is_zero(chunk):
                        hashes.append(self._store_zero(len(chunk)))
                    else:
                        staged = self.blocker.stage(chunk)
                        hashes.append(staged.hash)
                        batch.append(staged)
                        batch_size += len(chunk)
                        if batch_size >= limit:
                            submit()
                            if len(inflight) > MAX_INFLIGHT:
                                collect(inflight[0][0])
                    lengths.append(len(chunk))
                root, pages, _ = self._tree(self._leaf_pages(hashes, lengths))
                batch.extend(pages)
                ready.append((batch_no, root, sum(lengths)))
                collect(-1)
                while ready and ready[0][0] <= done_upto:
                    yield ready.popleft()[1:]
            if batch:
                submit()
            collect(batch_no)
            while ready:
                yield ready.popleft()[1:]
        finally:
            for _, fut in inflight:
                fut.cancel()
            writer.shutdown(wait=True)

    def build_stream(self, stream: BinaryIO, piece_size: int = STREAM_PIECE,
                     chunker: Chunker | None = None) -> tuple[bytes, int]:
        """Store one stream as a new map, each block written while it arrives; returns
        (root, size) once blocks and pages are durable.  With a `chunker` (a fresh
        pithos.core.cdc.Chunker), blocks are its content-defined chunks instead of fixed
        blocks (`_build_chunked`).

        For uploads from the network: a block of several pieces is hashed and written piece
        by piece on the blocker's pool while the next piece is read (`Blocker.open_stream`),
        so the last byte of an upload is followed by a sync, not by hashing and writing the
        whole block.  A block that fits in one piece (a small object, a short last block)
        is stored with the map pages in one batch, as `build_many` does.  Zero blocks are
        recognised as ever (nothing written)."""
        if chunker is not None:
            return self._build_chunked(stream, piece_size, chunker)
        piece_size = min(piece_size, self.block_size)
        hashes: list[bytes] = []
        lengths: list[int] = []
        batch: list[StagedBlock] = []
        current: BlockStream | None = None
        storing: deque[Future[bytes]] = deque()  # streamed blocks still being synced
        try:
            while True:
                first = read_exactly(stream, piece_size)
                if not first:
                    break
                if len(first) < piece_size or piece_size == self.block_size:
                    hashes.append(self._zero_or_staged(first, batch))
                    lengths.append(len(first))
                    if len(first) < piece_size:
                        break
                    continue
                length, zeros, piece = 0, 0, first
                while piece:
                    if current is None and codec.is_zero(piece):
                        zeros += len(piece)  # written only if data follows in this block
                    else:
                        if current is None:
                            current = self.blocker.open_stream()
                            if zeros:
                                current.write(bytes(zeros))
                        current.write(piece)
                    length += len(piece)
                    if length == self.block_size:
                        break
                    piece = read_exactly(stream, min(piece_size, self.block_size - length))
                if current is None:
                    hashes.append(self._store_zero(length))
                else:
                    storing.append(current.finish_async())
                    assert current.hash is not None
                    hashes.append(current.hash)
                    current = None
                    if len(storing) > STREAM_INFLIGHT:  # bounds a long upload's open files
                        storing.popleft().result()
                lengths.append(length)
                if length < self.block_size:
                    break
            # The pages are stored while the last blocks are synced: nothing names the root
            # before both are durable (the caller records it only after this returns).
            root, pages, built = self._tree(self._leaf_pages(hashes, lengths))
            self.blocker.put_staged([*batch, *pages])
            while storing:
                storing.popleft().result()
            self._remember(built)
        except BaseException:
            if current is not None:
                current.abort()
            for pending in storing:  # let stores in flight end before the error goes up
                with contextlib.suppress(BaseException):
                    pending.result()
            raise
        return root, sum(lengths)

    def _build_chunked(self, stream: BinaryIO, piece_size: int, chunker: Chunker
                       ) -> tuple[bytes, int]:
        """build_stream with content-defined chunks: each chunk is a block of its own length
        (so the same content at any offset, in any object, is the same blocks).  Chunks are
        hashed on the blocker's pool and stored in batches of about CHUNKED_BATCH bytes,
        which bound the memory an upload holds; blocks already stored are not written
        again (a refresh is enough: the collector spares what a writer touched)."""
        if chunker.max_size > self.block_size:
            raise InvalidArgument(f"chunks of up to {chunker.max_size} bytes exceed the "
                                  f"block size {self.block_size}")
        hashes: list[bytes] = []
        lengths: list[int] = []
        pending: list[bytes] = []
        pending_bytes = 0
        zeros: dict[int, bytes] = {}  # length -> zero block hash, stored once per build

        def flush() -> None:
            nonlocal pending_bytes
            data = [c for c in pending if not codec.is_zero(c)]
            named = iter(self.blocker.stage_many(data) if data else [])
            staged: dict[bytes, StagedBlock] = {}
            for chunk in pending:
                if codec.is_zero(chunk):
                    if len(chunk) not in zeros:
                        zeros[len(chunk)] = self._store_zero(len(chunk))
                    hashes.append(zeros[len(chunk)])
                else:
                    block = next(named)
                    staged[block.hash] = block
                    hashes.append(block.hash)
                lengths.append(len(chunk))
            if staged:
                # touch_many refreshes the blocks already stored and names those absent.
                absent = set(self.blocker.touch_many(list(staged)))
                self.blocker.put_staged([b for h, b in staged.items() if h in absent])
            pending.clear()
            pending_bytes = 0

        while True:
            piece = read_exactly(stream, piece_size)
            chunks = chunker.update(piece) if piece else chunker.finish()
            for chunk in chunks:
                pending.append(chunk)
                pending_bytes += len(chunk)
            if pending_bytes >= CHUNKED_BATCH:
                flush()
            if not piece:
                break
        flush()
        root, pages, built = self._tree(self._leaf_pages(hashes, lengths))
        self.blocker.put_staged(pages)
        self._remember(built)
        return root, sum(lengths)

    def _zero_or_staged(self, data: bytes, batch: list[StagedBlock]) -> bytes:
        if codec.is_zero(data):
            return self._store_zero(len(data))
        staged = self.blocker.stage(data)
        batch.append(staged)
        return staged.hash

    # -- reading -----------------------------------------------------------------------------

    def stat(self, root: bytes) -> MapStat:
        """Size and entry count of a map, from its top page alone."""
        (top,) = self._pages([root])
        count = len(top.hashes) if top.level == 0 else sum(top.counts)
        return MapStat(sum(top.sizes), count)

    def entries(self, root: bytes, start: int = 0,
                stop: int | None = None) -> Iterator[tuple[bytes, int]]:
        """The (hash, length) entries `[start, stop)` of a map."""
        leaves = self._leaves(root)
        first = 0
        for ref in leaves:
            last = first + ref.entries
            if last > start and (stop is None or first < stop):
                (page,) = self._pages([ref.hash])
                lo = max(start - first, 0)
                hi = ref.entries if stop is None else min(stop - first, ref.entries)
                yield from zip(page.hashes[lo:hi], page.sizes[lo:hi], strict=True)
            first = last

    def object_hash(self, root: bytes) -> bytes:
        """The Merkle root of the map's block hashes (Pithos' X-Object-Hash)."""
        return merkle_root([h for h, _ in self.entries(root)])

    def page_hashes(self, root: bytes) -> list[bytes]:
        """Every map page of the map, top first."""
        out = [root]
        frontier = [root]
        while frontier:
            pages = self._pages(frontier)
            frontier = [h for p in pages if p.level > 0 for h in p.hashes]
            out.extend(frontier)
        return out

    def pieces(self, root: bytes, offset: int = 0, length: int | None = None
               ) -> Iterator[Piece]:
        """The pieces `(block hash, offset in block, length, block length)` that make up bytes
        `[offset, offset + length)` of a map (to its end when length is None).  Raises
        NotFound / IntegrityError for a bad root at once, not when first iterated."""
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        leaves = self._leaves(root)
        if length is None:
            length = max(sum(r.size for r in leaves) - offset, 0)
        return self._pieces(leaves, offset, length)

    def _pieces(self, leaves: list[_Ref], offset: int, length: int) -> Iterator[Piece]:
        for li, off, n in codec.locate([r.size for r in leaves], offset, length):
            (page,) = self._pages([leaves[li].hash])
            for ei, eo, en in codec.locate(page.sizes, off, n):
                yield Piece(page.hashes[ei], eo, en, page.sizes[ei])

    def read(self, root: bytes, offset: int = 0, length: int | None = None,
             batch_blocks: int = 8, prefetch: Executor | None = None) -> Iterator[bytes]:
        """The bytes `[offset, offset + length)` of a map (to its end when length is None),
        in pieces, each block verified before any of it is served.  Short at the end.  A bad
        root or range raises at once."""
        return self.read_pieces(self.pieces(root, offset, length), batch_blocks, prefetch)

    def read_pieces(self, pieces: Iterable[Piece], batch_blocks: int = 8,
                    prefetch: Executor | None = None) -> Iterator[bytes]:
        """The bytes of `pieces` (from `pieces()`, possibly of several maps), fetched in
        batches of `batch_blocks` full blocks' bytes (that many blocks of the block size, or
        more smaller ones); with `prefetch`, the next batch is fetched on it while the
        current one is consumed (read-ahead, at most two batches in memory)."""
        it = iter(pieces)
        budget = batch_blocks * self.block_size
        carried: list[Piece] = []  # the piece that did not fit the batch before

        def next_batch() -> list[Piece]:
            # The bytes of at most `batch_blocks` full blocks, however many blocks that is
            # (READ_BATCH_MAX at most): a map of small chunks reads them hundreds at a time.
            batch, size = carried[:], sum(p.block_length for p in carried)
            carried.clear()
            for piece in it:
                if batch and (size + piece.block_length > budget or
                              len(batch) >= READ_BATCH_MAX):
                    carried.append(piece)
                    break
                batch.append(piece)
                size += piece.block_length
            return batch

        if prefetch is None:
            while batch := next_batch():
                yield from self._fetch(batch)
            return
        # The reader waits for the first batch: it holds `batch_blocks` blocks, as large as
        # they are (its first bytes as soon as a few small ones are read); the next ones are
        # read ahead.
        batch = list(itertools.islice(it, batch_blocks))
        first = batch[0] if batch else None
        if first is not None and first.offset == 0 and first.length == first.block_length \
                and first.hash not in self._zero_hashes \
                and self.blocker.reads_in_parts(first.block_length):
            # The reader waits for the first block alone: hand it out in verified parts as
            # they are read, while the rest is fetched (later blocks are read ahead anyway).
            batch = batch[1:] or next_batch()
            ahead = prefetch.submit(self._fetch, batch) if batch else None
            yield from self.blocker.read_parts(first.hash)
        else:
            ahead = prefetch.submit(self._fetch, batch) if batch else None
        while ahead is not None:
            batch = next_batch()
            current, ahead = ahead, (prefetch.submit(self._fetch, batch) if batch else None)
            yield from current.result()

    def _fetch(self, pieces: Sequence[Piece]) -> list[bytes]:
        wanted = [p.hash for p in pieces if p.hash not in self._zero_hashes]
        blocks = dict(zip(wanted, self.blocker.get_many(wanted), strict=True)) if wanted else {}
        out = []
        for h, off, n, _ in pieces:
            data = blocks.get(h)
            if data is None:
                out.append(bytes(n))
            elif off == 0 and n == len(data):
                out.append(data)
            else:
                out.append(data[off:off + n])
        return out

    def concat(self, parts: Sequence[tuple[bytes, int, int | None]]) -> tuple[bytes, int]:
        """A new map made of byte ranges `(root, offset, length or None for the rest)` of other
        maps, in order; returns (root, size).  Whole blocks are shared, not copied: only a
        block cut by a range boundary is stored again, as the part inside the range."""
        hashes: list[bytes] = []
        lengths: list[int] = []
        cut: list[tuple[int, Piece]] = []
        for root, offset, length in parts:
            for piece in self.pieces(root, offset, length):
                if piece.offset == 0 and piece.length == piece.block_length:
                    hashes.append(piece.hash)
                else:
                    cut.append((len(hashes), piece))
                    hashes.append(b"")
                lengths.append(piece.length)
                if len(cut) >= 64:
                    self._store_cut(cut, hashes)
        self._store_cut(cut, hashes)
        return self.store_entries(hashes, lengths), sum(lengths)

    def _store_cut(self, cut: list[tuple[int, Piece]], hashes: list[bytes]) -> None:
        if not cut:
            return
        datas = self._fetch([p for _, p in cut])
        for (slot, _), h in zip(cut, self.blocker.put_many(datas), strict=True):
            hashes[slot] = h
        cut.clear()

    def read_all(self, root: bytes, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join(self.read(root, offset, length))

    # -- copy-on-write updates ---------------------------------------------------------------

    def empty(self) -> bytes:
        """The root of the empty map."""
        return self._store_tree([])

    def write(self, root: bytes, offset: int, data: bytes) -> bytes:
        """Overwrite `[offset, offset + len(data))`; a write past the end extends the map,
        the gap reading as zeros.  Returns the new root; `root` still reads the old content."""
        if offset < 0:
            raise InvalidArgument(f"bad offset {offset}")
        size = self.stat(root).size
        if offset > size:
            gap = offset - size
            return self._splice(root, size, 0, concat_chunks([zeros(gap), [data]]))
        remove = min(len(data), size - offset)
        return self._splice(root, offset, remove, iter([data]))

    def write_stream(self, root: bytes, offset: int, chunks: Iterable[bytes],
                     length: int) -> bytes:
        """Overwrite `[offset, offset + length)` with the bytes of `chunks` (exactly `length`
        of them), streaming; past the end the gap reads as zeros.  Returns the new root."""
        if offset < 0 or length < 0:
            raise InvalidArgument(f"bad range: offset {offset}, length {length}")
        size = self.stat(root).size
        checked = exactly(iter(chunks), length)
        if offset > size:
            return self._splice(root, size, 0, concat_chunks([zeros(offset - size), checked]))
        return self._splice(root, offset, min(length, size - offset), checked)

    def append(self, root: bytes, stream: BinaryIO | bytes) -> bytes:
        """Add data at the end; returns the new root."""
        size = self.stat(root).size
        if isinstance(stream, bytes | bytearray):
            return self._splice(root, size, 0, iter([bytes(stream)]))
        return self._splice(root, size, 0, read_chunks(stream, self.block_size))

    def truncate(self, root: bytes, new_size: int) -> bytes:
        """Cut the map to `new_size` bytes, or extend it with zeros; returns the new root."""
        if new_size < 0:
            raise InvalidArgument(f"bad size {new_size}")
        size = self.stat(root).size
        if new_size >= size:
            return self._splice(root, size, 0, zeros(new_size - size))
        return self._splice(root, new_size, size - new_size, iter(()))

    def _splice(self, root: bytes, offset: int, remove: int, content: Iterator[bytes]) -> bytes:
        """Replace bytes `[offset, offset + remove)` with `content`.  Only the entries that
        overlap the range are rewritten (plus, when the length changes, those after it)."""
        leaves = self._leaves(root)
        size = sum(r.size for r in leaves)
        count = sum(r.entries for r in leaves)
        if not (0 <= offset <= size and offset + remove <= size):
            raise InvalidArgument(f"range {offset}+{remove} outside a map of {size} bytes")
        # The entries [i, j) that overlap the range, and their bytes [region_start, region_end).
        i, region_start = self._entry_at(leaves, offset, size, count)
        end = offset + remove
        j, region_end = i, region_start
        region: list[tuple[bytes, int]] = []
        if i < count:
            for entry in self.entries(root, i):
                region.append(entry)
                j += 1
                region_end += entry[1]
                if region_end >= end:
                    break
        head = tail = b""
        if offset > region_start:
            head = self._block(region[0][0])[:offset - region_start]
        if region_end > end:
            tail_block = self._block(region[-1][0])
            tail = tail_block[len(tail_block) - (region_end - end):]
        new_hashes: list[bytes] = []
        new_lengths: list[int] = []
        batch: list[bytes] = []
        slots: list[int] = []  # where each block of the batch goes in new_hashes
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, slots, batch_bytes
            if batch:
                for k, h in zip(slots, self.blocker.put_many(batch), strict=True):
                    new_hashes[k] = h
                batch, slots, batch_bytes = [], [], 0

        for chunk in rechunk(concat_chunks([[head], content, [tail]]), self.block_size):
            if codec.is_zero(chunk):
                new_hashes.append(self._store_zero(len(chunk)))
            else:
                slots.append(len(new_hashes))
                new_hashes.append(b"")
                batch.append(chunk)
                batch_bytes += len(chunk)
                if batch_bytes >= self.batch_bytes:
                    flush()
            new_lengths.append(len(chunk))
        flush()
        return self._replace_entries(leaves, i, j, new_hashes, new_lengths)

    def _block(self, hash_: bytes) -> bytes:
        if hash_ in self._zero_hashes:
            return bytes(self._zero_hashes[hash_])
        return self.blocker.get(hash_)

    def _entry_at(self, leaves: list[_Ref], offset: int, size: int,
                  count: int) -> tuple[int, int]:
        """(index, start byte) of the entry holding byte `offset`.  At the end of the map it is
        the last entry when that is shorter than a block (so an append fills it), else
        `count`."""
        if count == 0:
            return 0, 0
        if offset >= size:
            (last_page,) = self._pages([leaves[-1].hash])
            last = last_page.sizes[-1]
            if last < self.block_size:
                return count - 1, size - last
            return count, size
        cum = list(itertools.accumulate(r.size for r in leaves))
        li = bisect.bisect_right(cum, offset)
        first_entry = sum(r.entries for r in leaves[:li])
        leaf_start = cum[li - 1] if li else 0
        (page,) = self._pages([leaves[li].hash])
        pos = leaf_start
        for k, n in enumerate(page.sizes):
            if pos + n > offset:
                return first_entry + k, pos
            pos += n
        raise IntegrityError("map page sizes disagree with their parent")

    def _replace_entries(self, leaves: list[_Ref], i: int, j: int, hashes: list[bytes],
                         lengths: list[int]) -> bytes:
        """Store the map whose entries are the old ones with `[i, j)` replaced."""
        cum_counts = list(itertools.accumulate(r.entries for r in leaves))
        # First leaf touched; when the entry count changes, every later leaf shifts too.
        a = min(bisect.bisect_right(cum_counts, i), len(leaves) - 1)
        if len(hashes) == j - i:
            b = min(bisect.bisect_right(cum_counts, max(j - 1, i)), len(leaves) - 1)
        else:
            b = len(leaves) - 1
        base = cum_counts[a - 1] if a else 0
        old_hashes: list[bytes] = []
        old_lengths: list[int] = []
        for page in self._pages([r.hash for r in leaves[a:b + 1]]):
            old_hashes.extend(page.hashes)
            old_lengths.extend(page.sizes)
        lo, hi = i - base, j - base
        all_hashes = old_hashes[:lo] + hashes + old_hashes[hi:]
        all_lengths = old_lengths[:lo] + lengths + old_lengths[hi:]
        kept = leaves[:a] + leaves[b + 1:]
        return self._store_tree(self._leaf_pages(all_hashes, all_lengths), kept, at=a)

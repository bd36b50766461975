"""Uploads of the sync client: a small file by one plain PUT, a larger one by `POST
?missing`, `POST ?blocks` of the chunks the server lacks (read back from the file and
checked against the scan's hashes), then the hashmap `PUT`.  A mixin of
`pithos.sync.engine.Engine`, whose state it uses; the requests of an upload run on one of the
engine's upload workers, its journal and base rows are written by the engine's thread."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pithos.sync import plan as P
from pithos.sync.download import Skip
from pithos.sync.remote import (
    DEFLATE_MAX,
    FileRanges,
    FileShrank,
    MissingBlocks,
    Remote,
    RemoteError,
)
from pithos.sync.scan import READ_SIZE, SMALL_FILE_BYTES, same_stat
from pithos.sync.state import BaseEntry, Chunk, LocalFile, RemoteEntry, State, chunk_hashes

BLOCKS_BATCH_BYTES = 8 << 20  # chunks per POST ?blocks
SENT_KEPT = 1 << 15  # chunks remembered as sent by this run (Claims), twice that at most


class UploadsMixin:
    state: State
    remote: Remote
    folder: str
    stats: Any
    progress: Any
    say: Callable[[str], None]
    _stats_lock: threading.Lock
    _claims: Claims

    def _count_sent(self, n: int) -> None:
        with self._stats_lock:  # (upload workers add at once)
            self.stats.sent_bytes += n

    def _full(self, lf: LocalFile) -> LocalFile:
        """`lf` with its chunk list, from the files cache (a scan keeps none in memory)."""
        full = self.state.cached(lf.path)
        if full is None or (full.size, full.mtime_ns, full.inode, full.md5) != (
                lf.size, lf.mtime_ns, lf.inode, lf.md5):
            raise Skip(f"{lf.path} changed meanwhile")
        return full

    def do_upload(self, a: P.Action) -> None:
        self._uploaded(a.path, *self._send_upload(self._prepare_upload(a)))

    def _prepare_upload(self, a: P.Action, full: LocalFile | None = None) -> UploadJob:
        """Journal the upload and read what it needs from the state; `_send_upload` does
        the rest (reading the file, the requests: no state database) and gives the file as
        sent and its new ETag, for `_uploaded`.  `full`: the file with its chunk list, as
        the scan just hashed it (else read from the files cache)."""
        assert a.local is not None
        lf = a.local
        if_match = a.remote.md5 if a.remote is not None else None
        content_type = mimetypes.guess_type(a.path)[0]
        self.state.intend(a.path, "upload", lf.md5)
        if lf.size <= SMALL_FILE_BYTES:
            return UploadJob(a, lf, None, if_match, content_type, frozenset())
        if full is None or not full.chunks:
            full = self._full(lf)
        # The chunks of the version last synced are on the server already: ask only about
        # the others (an edit's ?missing names a few hashes, not the whole file).
        known = frozenset(chunk_hashes(self.state.base_chunks(a.path)))
        return UploadJob(a, lf, full, if_match, content_type, known)

    def _send_group(self, jobs: list[UploadJob]) -> list[tuple[LocalFile, str] | Exception]:
        """Send several uploads (on an upload worker) and give each one's outcome, in
        order: the small files by a plain PUT each; the others with one `?missing` for all
        their chunks and the chunks wanted sent in shared batches (a ?missing and a ?blocks
        per file were half of a first sync's requests, each costing the server its fixed
        share, a ?blocks its syncs and its commit too), then each one's hashmap PUT.  After
        a failure that stops the pass (the server unreachable or refusing us) the rest are
        not tried: they fail the same."""
        out: dict[int, tuple[LocalFile, str] | Exception] = {}
        chunked: list[tuple[int, UploadJob, LocalFile]] = []
        try:
            for i, j in enumerate(jobs):
                if j.full is None:
                    try:
                        out[i] = self._put_small(j)
                    except Exception as exc:  # (each file's outcome is the engine's)
                        if stops_pass(exc):
                            raise
                        out[i] = exc
                else:
                    chunked.append((i, j, j.full))
            if chunked:
                self._send_chunked(chunked, out)
        except Exception as exc:
            if not stops_pass(exc):
                raise
            for i in range(len(jobs)):
                out.setdefault(i, exc)
        return [out[i] for i in range(len(jobs))]

    def _put_small(self, job: UploadJob) -> tuple[LocalFile, str]:
        # One request: sending a small file costs less than asking what the server has.
        lf = job.local
        data = self._read_small(lf)
        etag = self.remote.put_object(job.action.path, data, lf.md5, job.if_match,
                                      job.content_type)
        self._count_sent(len(data))
        self.progress.advance(len(data))
        return lf, etag

    def _send_chunked(self, chunked: list[tuple[int, UploadJob, LocalFile]],
                      out: dict[int, tuple[LocalFile, str] | Exception]) -> None:
        """The uploads of a group that go by hashmap: their outcomes into `out`.  Failures
        that stop the pass go up."""
        asked = {h for _, j, full in chunked for h in chunk_hashes(full.chunks)
                 if h not in j.known}
        try:
            wanted = self.remote.missing(list(asked)) if asked else set()
        except Exception as exc:
            if stops_pass(exc):
                raise
            for i, _, _ in chunked:
                out[i] = exc
            return
        # Only what the server lacks and no other upload in flight is sending or has sent
        # (Claims), then each hashmap with the MD5 the scan found as its ETag, which the
        # server takes as declared and confirms later: it neither cuts nor hashes the
        # content again (a streamed PUT made it do both, and a hashmap PUT read it all
        # back for the MD5).
        claims = self._claims
        others: dict[int, set[bytes]] = {}
        sender = _Sender(self)
        try:
            for i, _, full in chunked:
                mine = wanted & set(chunk_hashes(full.chunks))
                wanted -= mine  # (sent now, by this group or another upload in flight)
                others[i] = claims.claim(mine)
                try:
                    sender.add_file(full, mine - others[i])
                except Exception as exc:
                    if stops_pass(exc):
                        raise
                    sender.failed.setdefault(full.path, exc)
            sender.finish()
        finally:
            sender.close()
            claims.release_all()
        for i, j, full in chunked:
            failed = sender.failed.get(full.path)
            if failed is not None:
                out[i] = failed
                continue
            try:
                # (Sent by the others, or not if one failed: the PUT names them missing.)
                claims.wait(others[i])
                out[i] = full, self._put_hashmap(j, full)
            except Exception as exc:
                if stops_pass(exc):
                    raise
                out[i] = exc

    def _put_hashmap(self, job: UploadJob, full: LocalFile) -> str:
        try:
            return self.remote.put_hashmap(job.action.path, full.size, full.chunks, full.md5,
                                           job.if_match, job.content_type)
        except MissingBlocks as exc:
            # A collector removed a block between ?missing and the PUT (or an upload that
            # was to send it failed): send it again.
            self._send_missing(full, set(exc.hashes))
            return self.remote.put_hashmap(job.action.path, full.size, full.chunks,
                                           full.md5, job.if_match, job.content_type)

    def _send_upload(self, job: UploadJob) -> tuple[LocalFile, str]:
        """Send one prepared upload: the file as sent and its new ETag."""
        (outcome,) = self._send_group([job])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _uploaded(self, rel: str, lf: LocalFile, etag: str) -> None:
        with self.state.transaction():
            self.state.put_remote(RemoteEntry(rel, lf.size, etag))
            self.state.set_base(BaseEntry(rel, lf.size, lf.md5, lf.mtime_ns, lf.inode),
                                lf.chunks)
            self.state.done(rel)
        self.stats.uploaded += 1
        self.say(f"uploaded {rel}")

    def _read_small(self, lf: LocalFile) -> bytes:
        try:
            with open(os.path.join(self.folder, lf.path), "rb") as f:
                data = f.read(lf.size + 1)
        except FileNotFoundError:
            raise Skip(f"{lf.path} vanished before its upload") from None
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != lf.md5:
            raise Skip(f"{lf.path} changed while being uploaded")
        return data

    def _send_missing(self, lf: LocalFile, wanted: set[bytes] | None) -> None:
        """Send the chunks of one file the server lacks (`wanted`; None: ask it)."""
        if wanted is None:
            wanted = self.remote.missing(chunk_hashes(lf.chunks)) if lf.chunks else set()
        sender = _Sender(self)
        try:
            sender.add_file(lf, wanted)
            sender.finish()
        finally:
            sender.close()
        failed = sender.failed.get(lf.path)
        if failed is not None:
            raise failed


class _Sender:
    """Chunks of one or more files sent in shared batches of POST ?blocks.  Two kinds:
    chunks that look compressible (text, zeros) go deflated, from a buffer (at most
    DEFLATE_MAX: a larger body is not deflated), the others (random, compressed media) as
    they are, sent from the files by the kernel (sendfile: never read into this process),
    so no CPU is spent deflating those.  When more than twice DEFLATE_MAX of a file is
    wanted (a new file's chunks), or the link carries uncompressed batches faster than
    deflating would pay for (Remote.fast_link: a LAN, loopback), its chunks are not
    classified (~5 us each: 13% of the client's time holding the GIL on the sync bench's
    first sync): all go as they are.  Each batch keeps the hashes the scan found for its
    chunks and the file each came from: the server answers with the hashes of what it
    stored, and a chunk whose bytes are no longer those the scan hashed (its file changed
    since) is found there, without hashing it here again; that file fails (`failed`), the
    others of the batch do not.  The files stay open until `close`."""

    def __init__(self, up: UploadsMixin) -> None:
        self.up = up
        self.plain = _Batch(BLOCKS_BATCH_BYTES, False)
        self.packed = _Batch(DEFLATE_MAX, True)
        self.fds: list[int] = []
        self.failed: dict[str, Exception] = {}

    def add_file(self, lf: LocalFile, wanted: set[bytes]) -> None:
        """Add the chunks of `lf` in `wanted` (taken out of it) to the batches, posting
        those that fill.  Skip if the file is not the one scanned (nothing of it added)."""
        progress = self.up.progress
        if not wanted:
            progress.advance(lf.size)
            return
        wanted_bytes = sum(c.length for c in lf.chunks if c.hash in wanted)
        classify = wanted_bytes <= 2 * DEFLATE_MAX and not self.up.remote.fast_link()
        try:
            fd = os.open(os.path.join(self.up.folder, lf.path),
                         os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise Skip(f"{lf.path} vanished before its upload") from None
        self.fds.append(fd)
        if not same_stat(os.fstat(fd), lf.size, lf.mtime_ns, lf.inode, lf.ctime_ns or None):
            raise Skip(f"{lf.path} changed before its upload")
        path = lf.path

        def read_run(run: list[Chunk], start: int, n: int) -> None:
            if not classify:
                self._room(self.plain, n)
                self.plain.add_range(fd, start, n, run, path)
                progress.advance(n)
                return
            data = os.pread(fd, n, start)
            if len(data) != n:
                raise Skip(f"{path} changed while being uploaded")
            view = memoryview(data)
            at = 0
            for c in run:
                chunk = view[at:at + c.length]
                if compressible(chunk):
                    self._room(self.packed, c.length)
                    self.packed.add(chunk, c, path)
                else:
                    self._room(self.plain, c.length)
                    self.plain.add_range(fd, start + at, c.length, [c], path)
                at += c.length
                progress.advance(c.length)

        # Runs of consecutive wanted chunks, up to READ_SIZE, are read with one pread
        # each (a new file's chunks are all wanted: a read per MiB, not per chunk).
        offset = 0
        run: list[Chunk] = []
        run_start = 0
        run_bytes = 0
        for c in lf.chunks:
            if c.hash in wanted:
                wanted.discard(c.hash)
                if (run and run_start + run_bytes != offset) or \
                        run_bytes + c.length > READ_SIZE:
                    read_run(run, run_start, run_bytes)
                    run, run_bytes = [], 0
                if not run:
                    run_start = offset
                run.append(c)
                run_bytes += c.length
            else:
                progress.advance(c.length)
            offset += c.length
        if run:
            read_run(run, run_start, run_bytes)

    def _room(self, batch: _Batch, n: int) -> None:
        if batch.fill + n > batch.capacity:
            self.post(batch)

    def finish(self) -> None:
        self.post(self.plain)
        self.post(self.packed)

    def post(self, batch: _Batch) -> None:
        """Send a batch; its files fail if it fails (failures that stop the pass go up)."""
        if not batch.lengths:
            return
        hashes, paths = batch.hashes, batch.paths
        stored: list[bytes] | None = None
        try:
            stored = self.up.remote.put_blocks(batch.body(), batch.lengths, batch.kind)
        except FileShrank:
            for p in set(paths):
                self.failed.setdefault(p, Skip(f"{p} changed while being uploaded"))
        except Exception as exc:
            if stops_pass(exc):
                raise
            for p in set(paths):
                self.failed.setdefault(p, exc)
        finally:
            # (Stored or not, no longer this upload's to send.)
            self.up._claims.release(hashes, stored == hashes)
            sent = batch.fill
            batch.clear()
        if stored is None:
            return
        self.up._count_sent(sent)
        if stored != hashes:
            # Stored under their own hashes (unnamed: garbage for the collector); the file
            # is sent again once the next pass has hashed it as it is now.
            bad = {p for p, h, s in zip(paths, hashes, stored, strict=False) if h != s}
            for p in bad if len(stored) == len(hashes) else set(paths):
                self.failed.setdefault(p, Skip(f"{p} changed while being uploaded"))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


# Each thread's batch buffer (for the compressible chunks, deflated), kept from batch to
# batch: a fresh bytearray per file was zeroed and page-faulted in (when every batch went
# through one: a first sync's every byte sent, ~0.2 s of the client's CPU a GB, a good part
# of it holding the GIL).
_buffers = threading.local()


def _thread_buffer(kind: bool, capacity: int) -> bytearray:
    """This thread's buffer for batches of `kind`, of at least `capacity` bytes (made
    larger only when a larger one is wanted: at most DEFLATE_MAX, _Sender's)."""
    mine: dict[bool, bytearray] | None = getattr(_buffers, "by_kind", None)
    if mine is None:
        mine = _buffers.by_kind = {}
    buf = mine.get(kind)
    if buf is None or len(buf) < capacity:
        buf = mine[kind] = bytearray(capacity)
    return buf


class _Batch:
    """Chunks for one POST ?blocks (up to `capacity` bytes), with their lengths, the hashes
    the scan found for them and the files they are from: either ranges of the files, which
    the kernel sends (`add_range`), or chunks back to back in one buffer (`add`: this
    thread's buffer for `kind`, taken on first use, batch after batch).  One _Batch per
    kind per thread at a time (a group's batches are sent before the next group's)."""

    def __init__(self, capacity: int = BLOCKS_BATCH_BYTES, kind: bool = False) -> None:
        self.capacity = capacity
        self.kind = kind
        self.buf = bytearray()
        self.ranges: list[tuple[int, int, int]] = []  # (fd, offset, length)
        self.fill = 0
        self.lengths: list[int] = []
        self.hashes: list[bytes] = []
        self.paths: list[str] = []

    def add_range(self, fd: int, offset: int, n: int, run: list[Chunk], path: str) -> None:
        """The chunks `run`, n bytes of the file `fd` (`path`) at `offset`; not read here."""
        assert not self.buf and self.fill + n <= self.capacity
        last = self.ranges[-1] if self.ranges else None
        if last is not None and last[0] == fd and last[1] + last[2] == offset:
            self.ranges[-1] = (fd, last[1], last[2] + n)
        else:
            self.ranges.append((fd, offset, n))
        self.fill += n
        for c in run:
            self.lengths.append(c.length)
            self.hashes.append(c.hash)
            self.paths.append(path)

    def _room(self, n: int) -> memoryview:
        if not self.buf:
            self.buf = _thread_buffer(self.kind, self.capacity)
        assert self.fill + n <= self.capacity
        return memoryview(self.buf)[self.fill:self.fill + n]

    def add(self, chunk: memoryview, c: Chunk, path: str) -> None:
        with self._room(c.length) as room:
            room[:] = chunk
        self.fill += c.length
        self.lengths.append(c.length)
        self.hashes.append(c.hash)
        self.paths.append(path)

    def body(self) -> memoryview | tuple[FileRanges, ...]:
        if not self.ranges:
            return memoryview(self.buf)[:self.fill]
        parts: list[FileRanges] = []
        fd = -1
        ranges: list[tuple[int, int]] = []
        for f, offset, n in self.ranges:  # (each file's ranges, in the order added)
            if f != fd and ranges:
                parts.append(FileRanges(fd, ranges))
                ranges = []
            fd = f
            ranges.append((offset, n))
        parts.append(FileRanges(fd, ranges))
        return tuple(parts)

    def clear(self) -> None:
        self.fill = 0
        self.lengths, self.hashes, self.paths, self.ranges = [], [], [], []


def compressible(data: bytes | memoryview) -> bool:
    """Whether a chunk looks worth deflating: few distinct byte values in 256 bytes from its
    middle (text ~40-70, zeros 1; random or compressed data ~160).  A few microseconds a
    chunk, where deflating a random one to learn it costs more than sending it."""
    mid = len(data) // 2
    return len(set(data[mid:mid + 256])) < 100


@dataclass(frozen=True)
class UploadJob:
    """An upload prepared by the engine's thread, to be sent on a worker: `full` is the
    file with its chunk list (None: a small file, sent by a plain PUT), `known` the chunks
    of the version last synced (on the server: not asked about)."""
    action: P.Action
    local: LocalFile
    full: LocalFile | None
    if_match: str | None
    content_type: str | None
    known: frozenset[bytes]


def stops_pass(exc: BaseException) -> bool:
    """Whether a failure stops everything (the server unreachable or refusing us: nothing
    else would work), not just the path it happened to."""
    return isinstance(exc, RemoteError) and (
        exc.status in (0, 401, 403) or (exc.status >= 500 and exc.status != 507))


class Claims:
    """The chunks the upload workers are sending, each by the thread that claimed it, and
    those they sent lately: a chunk two uploads in flight want is sent by the first to
    claim it; the other waits for it to be sent (or given up) before its hashmap PUT, and
    one that wants a chunk sent since its `?missing` does not send it again.  (Two new
    files sharing chunks, sent side by side, sent them both: 2% more bytes on the sync
    bench's first sync with 16 uploads in flight, 7% with a ?missing per group of files.)
    A claim ends when its batch was posted (stored or failed) or its upload ended, so a
    waiter never waits for more than one upload's requests; and a thread waits only once it
    holds no claims, so two uploads never wait for each other.  Memory: the hashes of the
    uploads in flight, and at most 2 * SENT_KEPT sent.  A chunk said sent that the server
    no longer has (a collector) is named missing by the hashmap PUT, and sent then."""

    def __init__(self) -> None:
        self._owner: dict[bytes, int] = {}
        self._mine: dict[int, set[bytes]] = {}  # each thread's claims
        self._sent: set[bytes] = set()
        self._sent_before: set[bytes] = set()  # (the generation before: forgotten next)
        self._changed = threading.Condition(threading.Lock())

    def claim(self, wanted: set[bytes]) -> set[bytes]:
        """Claim for this thread what of `wanted` no other thread has claimed or sent, and
        take out of `wanted` what was sent; returns the others' claims (to wait for, not to
        send)."""
        me = threading.get_ident()
        owner = self._owner
        with self._changed:
            wanted -= self._sent
            wanted -= self._sent_before
            others = {h for h in wanted if owner.get(h, me) != me}
            mine = self._mine.setdefault(me, set())
            for h in wanted:
                if h not in others:
                    owner[h] = me
                    mine.add(h)
        return others

    def release(self, hashes: list[bytes], sent: bool) -> None:
        """These chunks' claims, those of this thread, end; `sent`: they were stored."""
        me = threading.get_ident()
        with self._changed:
            mine = self._mine.get(me)
            if not mine:
                return
            for h in hashes:
                if h in mine:
                    mine.discard(h)
                    del self._owner[h]
            if sent:
                if len(self._sent) >= SENT_KEPT:
                    self._sent_before, self._sent = self._sent, set()
                self._sent.update(hashes)
            self._changed.notify_all()

    def release_all(self) -> None:
        """Every claim of this thread ends (its upload ended, sent or not)."""
        with self._changed:
            mine = self._mine.pop(threading.get_ident(), None)
            if mine:
                for h in mine:
                    del self._owner[h]
                self._changed.notify_all()

    def wait(self, hashes: set[bytes]) -> None:
        """Until none of these chunks is claimed (by another thread: this one has none)."""
        if not hashes:
            return
        owner = self._owner
        with self._changed:
            self._changed.wait_for(lambda: not any(h in owner for h in hashes))

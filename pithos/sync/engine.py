"""Carrying out a plan: one sync pass is refresh the remote mirror (change feed), scan the
folder, plan, act; `sync_once` repeats passes until one finds nothing to do.

Rules every action keeps:
- every remote write is conditional (If-Match the ETag we last saw, If-None-Match: * for a
  new name); a 412 leaves the path for the next pass, which plans it again from fresh state;
- a local file is replaced, renamed or deleted only if its stat is still the one the scan
  hashed (else it changed meanwhile: the next pass sees the edit);
- a download is written to a temporary file under `.pithos-sync/tmp/` (never in the folder),
  each chunk verified (BLAKE3) as it is written and the whole checked against the ETag (MD5),
  then fsynced and renamed into place: the folder never holds a half file.  A killed download
  resumes from the verified prefix of its temporary file;
- an upload sends only the chunks `?missing` names, each read back from the file and verified
  against the scan's hash (a file replaced meanwhile is skipped this pass), then PUTs the
  hashmap; blocks sent before a kill are not sent again (`?missing` no longer names them);
- every action is journaled (an intent row) before it starts and cleared when recorded;
- a failure of one path (permission denied, disk full, vanished) is one line and the pass goes
  on; the path is retried on the next pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import mimetypes
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

from pithos.core.files import fsync_dir
from pithos.sync import plan as P
from pithos.sync.download import DownloadsMixin, Skip, _tmp_name
from pithos.sync.remote import (
    DEFLATE_MAX,
    CursorGone,
    FileRanges,
    FileShrank,
    MissingBlocks,
    PreconditionFailed,
    Remote,
    RemoteError,
)
from pithos.sync.scan import READ_SIZE, Ignore, ScanResult, same_stat, scan
from pithos.sync.state import BaseEntry, Chunk, LocalFile, RemoteEntry, State, chunk_hashes

T = TypeVar("T")

SMALL_FILE_BYTES = 64 << 10  # uploaded by a plain PUT (the server cuts it as we would)
BLOCKS_BATCH_BYTES = 8 << 20  # chunks per POST ?blocks
MAX_PASSES = 8
# Uploads in flight at once: while one waits for the server (its fsyncs, its commit), the
# others send; the server's workers take them side by side.  The bench's first sync at
# --scale 0.25, alternated in one session: 4 workers 5.6-13.7 s, 8 workers 3.7-10.0 s.  Each
# holds at most two 8 MiB batches of chunks.
UPLOAD_WORKERS = 8


@dataclass
class Stats:
    """What a run did; `sent_bytes` counts the chunk bytes uploaded, `fetched_bytes` the
    chunk bytes downloaded (local copies not counted)."""
    uploaded: int = 0
    downloaded: int = 0
    deleted: int = 0
    moved: int = 0
    conflicts: int = 0
    sent_bytes: int = 0
    fetched_bytes: int = 0
    reused_bytes: int = 0
    request_bytes: int = 0  # every request body: chunks, hash lists, hashmaps
    agreed: bool = False
    errors: list[str] = field(default_factory=list)


class Progress:
    """Bytes and files of a pass's transfers; a no-op base that the CLI replaces with a bar.
    `start` begins a pass's count; `add` grows its totals (the uploads begun while the scan
    goes on, then the plan's transfers)."""

    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def add(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def file_done(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Engine(DownloadsMixin):
    def __init__(self, state: State, remote: Remote, *, report: Callable[[str], None],
                 say: Callable[[str], None] = lambda _: None,
                 progress: Progress | None = None, dry_run: bool = False) -> None:
        self.state = state
        self.remote = remote
        self.folder = state.folder
        self.report_line = report
        self.say = say
        self.progress = progress or Progress()
        self.dry_run = dry_run
        self.stats: Stats = Stats()
        self.done = 0  # actions carried out (a pass that does none ends the run)
        self._fds: dict[str, int] = {}  # files a download reads chunks from
        self.upload_workers = UPLOAD_WORKERS
        self._stats_lock = threading.Lock()
        self.host = socket.gethostname().split(".")[0] or "this device"

    def report(self, line: str) -> None:
        """One line per problem; the same line again in the same run is not repeated."""
        if line not in self.stats.errors:
            self.report_line(line)
        self.stats.errors.append(line)

    # -- a run ---------------------------------------------------------------------------------

    def sync_once(self) -> bool:
        """Passes until the folder and the container agree (True) or MAX_PASSES went by or a
        pass could do nothing more (False: something was skipped, reported)."""
        self.stats.errors = []  # (--watch: a problem still there is reported again each run)
        sent_before = self.remote.sent_bytes
        try:
            self.stats.agreed = self._sync_once()
        finally:
            self.stats.request_bytes += self.remote.sent_bytes - sent_before
        return self.stats.agreed

    def _sync_once(self) -> bool:
        self.remote.ensure_container()
        if not self.dry_run:
            self.clean_tmp()
        previous: object = None
        for _ in range(MAX_PASSES):
            done_before = self.done
            actions, unknown = self.one_pass()
            pending = any(a.kind in P.TRANSFERS for a in actions) or bool(unknown)
            if self.dry_run or not pending:
                if not pending and not self.dry_run:
                    self.state.db.execute("DELETE FROM journal")  # nothing is left undone
                return not pending
            # A pass that did nothing on the same plan as the one before will not do better:
            # each reason was reported.  (A file that changed while read plans differently.)
            seen = (sorted(map(repr, actions)), sorted(unknown))
            if self.done == done_before and seen == previous:
                return False
            previous = seen
        return False

    def clean_tmp(self) -> None:
        """Remove temporary files no journaled download will resume (a killed download's
        file stays, and the next attempt at the same version continues it)."""
        keep = {_tmp_name(path, detail) for path, op, detail in self.state.journal()
                if op == "download"}
        for name in os.listdir(self.state.tmp_dir):
            if name not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.state.tmp_dir, name))

    def refresh_remote(self) -> None:
        """Bring the remote mirror up to date from the change feed (or a full listing)."""
        try:
            self._refresh_remote()
        except CursorGone:
            with self.state.transaction() as db:
                db.execute("DELETE FROM remote")
                self.state.set("cursor", "0")
            self._refresh_remote()

    def _refresh_remote(self) -> None:
        state = self.state
        cursor = state.get("cursor") or "0"
        listing: dict[str, RemoteEntry] | None = None
        for page in self.remote.changes(cursor):
            if page.cursor is None:
                listing = listing if listing is not None else {}
                for c in page.changes:
                    if c.entry is not None:
                        listing[c.path] = c.entry
                continue
            with state.transaction():
                for c in page.changes:
                    if c.deleted or c.entry is None:
                        state.drop_remote(c.path)
                    else:
                        state.put_remote(c.entry)
                state.set("cursor", page.cursor)
        if listing is not None:
            with state.transaction() as db:
                db.execute("DELETE FROM remote")
                for e in listing.values():
                    state.put_remote(e)

    def scan(self, on_hashed: Callable[[LocalFile], None] | None = None
             ) -> tuple[ScanResult, Ignore]:
        ignore = Ignore(self.folder)
        return scan(self.folder, self.state, ignore, self.report, on_hashed), ignore

    def one_pass(self) -> tuple[list[P.Action], set[str]]:
        self.refresh_remote()
        if self.dry_run or self.upload_workers <= 1:
            result, ignore = self.scan()
            actions = P.plan(self.state.base(), result.files, self.state.remote(),
                             result.unknown, ignore)
            if self.dry_run:
                for a in actions:
                    if a.kind in P.TRANSFERS:
                        self.say(f"would {a.describe()}")
                return actions, result.unknown
            self._act_planned(actions, None)
            return actions, result.unknown
        # One count for the pass: the early uploads are in it, then the plan's transfers.
        self.progress.start(0, 0)
        with ThreadPoolExecutor(self.upload_workers, "pithos-sync-upload") as pool:
            uploads = _Uploads(pool)
            try:
                # Files new on both sides are sent as soon as they are hashed, while the
                # scan hashes the next ones: the plan would only upload them.
                result, ignore = self.scan(self._eager(uploads))
                self._reap(uploads, everything=True)
                actions = P.plan(self.state.base(), result.files, self.state.remote(),
                                 result.unknown, ignore)
                # One attempt per pass: an early upload that failed waits for the next.
                self._act_planned([a for a in actions if a.path not in uploads.failed],
                                  uploads)
            finally:
                for f in uploads.inflight:
                    f.cancel()
                self.progress.stop()
        # The uploads made early count as this pass's actions: the run goes on to another
        # pass, whose scan sees a file changed while it was sent.
        return uploads.started + actions, result.unknown

    def _eager(self, uploads: _Uploads) -> Callable[[LocalFile], None]:
        """What the scan calls with each file it hashed: an upload started at once for a
        path neither side had (no base, no remote object) whose content no remote object
        or base holds (else the plan makes it a move or a copy)."""
        base, remote = self.state.base(), self.state.remote()
        held = {e.md5 for e in base.values()} | {e.md5 for e in remote.values()}

        def start(full: LocalFile) -> None:
            if full.path in base or full.path in remote or full.md5 in held:
                return
            held.add(full.md5)  # a second new file of it: a server-side copy, planned
            # The pass keeps the action without the chunk list (memory per file, not per
            # byte); the upload takes the scan's, not read back from the files cache.
            lf = dataclasses.replace(full, chunks=())
            a = P.Action(P.UPLOAD, lf.path, local=lf)
            self.progress.add(lf.size, 1)
            uploads.started.append(a)
            self._start_upload(a, uploads, full)
            self._reap(uploads, everything=False, wait_for=self.upload_workers)

        return start

    def _act_planned(self, actions: list[P.Action], uploads: _Uploads | None) -> None:
        transfers = [a for a in actions if a.kind in P.TRANSFERS]
        total = sum(_transfer_bytes(a) for a in transfers)
        if uploads is not None:  # (the pass's count began before its scan: one_pass)
            self.progress.add(total, len(transfers))
            self._act_all(actions, uploads)
            return
        self.progress.start(total, len(transfers))
        try:
            for a in actions:
                self.act(a)
        finally:
            self.progress.stop()

    def _act_all(self, actions: list[P.Action], uploads: _Uploads) -> None:
        """Carry out the actions in order, uploads several at once: each is prepared here
        (the state database is this thread's), sent on a worker (the file read and the
        requests) and recorded here when done.  Any other action first waits for the
        uploads in flight."""
        for a in actions:
            if a.kind != P.UPLOAD:
                self._reap(uploads, everything=True)
                self.act(a)
                continue
            self._start_upload(a, uploads)
            self._reap(uploads, everything=False, wait_for=self.upload_workers)
        self._reap(uploads, everything=True)

    def _start_upload(self, a: P.Action, uploads: _Uploads,
                      full: LocalFile | None = None) -> None:
        job = self._guard(a, functools.partial(self._prepare_upload, a, full))
        if job is None:
            uploads.failed.add(a.path)
            self.progress.file_done()
            return
        uploads.inflight[uploads.pool.submit(job)] = a

    def _reap(self, uploads: _Uploads, everything: bool, wait_for: int = 0) -> None:
        """Record the uploads that finished: all of them if `everything`, else those done
        now, waiting while `wait_for` or more are still in flight."""
        inflight = uploads.inflight
        while inflight:
            block = everything or len(inflight) >= max(wait_for, 1)
            if block:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            else:  # (a look, not a wait: no waiter installed on every future, per file)
                done = {f for f in inflight if f.done()}
            for f in done:
                a = inflight.pop(f)

                def record(f: Future[tuple[LocalFile, str]] = f, a: P.Action = a) -> bool:
                    self._uploaded(a.path, *f.result())
                    return True

                if self._guard(a, record):
                    self.done += 1
                else:
                    uploads.failed.add(a.path)
                self.progress.file_done()
            if not done or not (everything or len(inflight) >= max(wait_for, 1)):
                return

    def act(self, a: P.Action) -> None:
        def do() -> bool:
            getattr(self, "do_" + a.kind.replace("-", "_"))(a)
            return True

        try:
            if self._guard(a, do) and a.kind in P.TRANSFERS:
                self.done += 1
        finally:
            if a.kind in P.TRANSFERS:
                self.progress.file_done()

    def _guard(self, a: P.Action, fn: Callable[[], T]) -> T | None:
        """fn(), or None after one line for a failure of this path alone (it is retried on
        the next pass); failures that stop everything (the server unreachable or refusing
        us) go up."""
        try:
            return fn()
        except Skip as exc:
            self.report(f"{exc} (skipped, will retry)")
        except PreconditionFailed:
            self.report(f"{a.path} changed on the server meanwhile (will plan it again)")
        except RemoteError as exc:
            if exc.status in (0, 401, 403) or (exc.status >= 500 and exc.status != 507):
                raise  # the server is unreachable or refuses us: nothing else would work
            self.report(f"{a.describe()}: {exc}")
        except OSError as exc:
            self.report(f"{a.path}: {_os_reason(exc)} (skipped, will retry)")
        return None

    def _count_sent(self, n: int) -> None:
        with self._stats_lock:  # (upload workers add at once)
            self.stats.sent_bytes += n

    # -- bookkeeping ---------------------------------------------------------------------------

    def do_agree(self, a: P.Action) -> None:
        lf = a.local
        assert lf is not None
        full = self.state.cached(a.path)
        chunks = full.chunks if full is not None and full.md5 == lf.md5 else ()
        self.state.set_base(BaseEntry(a.path, lf.size, lf.md5, lf.mtime_ns, lf.inode), chunks)

    def do_forget(self, a: P.Action) -> None:
        self.state.drop_base(a.path)

    # -- uploads -------------------------------------------------------------------------------

    def _full(self, lf: LocalFile) -> LocalFile:
        """`lf` with its chunk list, from the files cache (a scan keeps none in memory)."""
        full = self.state.cached(lf.path)
        if full is None or (full.size, full.mtime_ns, full.inode, full.md5) != (
                lf.size, lf.mtime_ns, lf.inode, lf.md5):
            raise Skip(f"{lf.path} changed meanwhile")
        return full

    def do_upload(self, a: P.Action) -> None:
        self._uploaded(a.path, *self._prepare_upload(a)())

    def _prepare_upload(self, a: P.Action, full: LocalFile | None = None
                        ) -> Callable[[], tuple[LocalFile, str]]:
        """Journal the upload and read what it needs from the state; the returned job does
        the rest (reading the file, the requests: no state database) and gives the file as
        sent and its new ETag, for `_uploaded`.  `full`: the file with its chunk list, as
        the scan just hashed it (else read from the files cache)."""
        assert a.local is not None
        lf = a.local
        if_match = a.remote.md5 if a.remote is not None else None
        content_type = mimetypes.guess_type(a.path)[0]
        self.state.intend(a.path, "upload", lf.md5)
        if lf.size <= SMALL_FILE_BYTES:
            def small() -> tuple[LocalFile, str]:
                # One request: sending a small file costs less than asking what the server
                # has.
                data = self._read_small(lf)
                etag = self.remote.put_object(a.path, data, lf.md5, if_match, content_type)
                self._count_sent(len(data))
                self.progress.advance(len(data))
                return lf, etag
            return small
        if full is None or not full.chunks:
            full = self._full(lf)
        # The chunks of the version last synced are on the server already: ask only about
        # the others (an edit's ?missing names a few hashes, not the whole file).
        known = set(chunk_hashes(self.state.base_chunks(a.path)))

        def chunked() -> tuple[LocalFile, str]:
            unique = set(chunk_hashes(full.chunks))
            ask = [h for h in unique if h not in known]
            wanted = self.remote.missing(ask) if ask else set()
            # Only what the server lacks, then the hashmap with the MD5 the scan found as
            # its ETag, which the server takes as declared and confirms later: it neither
            # cuts nor hashes the content again (a streamed PUT made it do both, and a
            # hashmap PUT read it all back for the MD5).
            self._send_missing(full, wanted)
            try:
                etag = self.remote.put_hashmap(a.path, full.size, full.chunks, full.md5,
                                               if_match, content_type)
            except MissingBlocks as exc:
                # A collector removed a block between ?missing and the PUT: send it again.
                self._send_missing(full, set(exc.hashes))
                etag = self.remote.put_hashmap(a.path, full.size, full.chunks, full.md5,
                                               if_match, content_type)
            return full, etag
        return chunked

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
        if wanted is None:
            wanted = self.remote.missing(chunk_hashes(lf.chunks)) if lf.chunks else set()
        if not wanted:
            self.progress.advance(lf.size)
            return
        path = os.path.join(self.folder, lf.path)
        # Two batches: chunks that look compressible (text, zeros) go deflated, the others
        # (random, compressed media) as they are, so no CPU is spent deflating those.  Only
        # a batch of at most DEFLATE_MAX is deflated (a larger one goes as it is): when more
        # than twice that is wanted (a new file's chunks), the few bytes a last small batch
        # would save are not worth classifying every chunk (~5 us each: 13% of the client's
        # time holding the GIL on the sync bench's first sync), and runs of chunks are sent
        # from the file by the kernel (sendfile: never read into this process).  Each batch
        # keeps the hashes the scan found for its chunks: the server answers with the
        # hashes of what it stored, and a chunk whose bytes are no longer those the scan
        # hashed (the file changed since) is found there, without hashing it here again.
        wanted_bytes = sum(c.length for c in lf.chunks if c.hash in wanted)
        # (A buffer the size of what is wanted, at most a batch: not 8 MiB for a small file.)
        capacity = min(BLOCKS_BATCH_BYTES, wanted_bytes)
        batches = {False: _Batch(capacity, False), True: _Batch(capacity, True)}
        # Nor on a link that carries uncompressed batches faster than deflating would pay
        # for (Remote.fast_link: a LAN, loopback).
        classify = wanted_bytes <= 2 * DEFLATE_MAX and not self.remote.fast_link()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise Skip(f"{lf.path} vanished before its upload") from None

        def post(kind: bool) -> None:
            batch = batches[kind]
            if batch.lengths:
                self._post_blocks(lf, batch, kind)
                batch.clear()

        def read_run(run: list[Chunk], start: int, n: int) -> None:
            if not classify:
                batch = batches[False]
                if batch.fill + n > batch.capacity:
                    post(False)
                batch.add_range(fd, start, n)
                batch.lengths.extend(c.length for c in run)
                batch.hashes.extend(c.hash for c in run)
                self.progress.advance(n)
                return
            data = os.pread(fd, n, start)
            if len(data) != n:
                raise Skip(f"{lf.path} changed while being uploaded")
            view = memoryview(data)
            at = 0
            for c in run:
                chunk = view[at:at + c.length]
                at += c.length
                kind = compressible(chunk)
                if batches[kind].fill + c.length > batches[kind].capacity:
                    post(kind)
                batches[kind].add(chunk, c)
                self.progress.advance(c.length)

        try:
            if not same_stat(os.fstat(fd), lf.size, lf.mtime_ns, lf.inode):
                raise Skip(f"{lf.path} changed before its upload")
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
                    self.progress.advance(c.length)
                offset += c.length
            if run:
                read_run(run, run_start, run_bytes)
            post(False)
            post(True)
        finally:
            os.close(fd)

    def _post_blocks(self, lf: LocalFile, batch: _Batch, compress: bool = False) -> None:
        try:
            stored = self.remote.put_blocks(batch.body(), batch.lengths, compress)
        except FileShrank:
            raise Skip(f"{lf.path} changed while being uploaded") from None
        self._count_sent(batch.fill)
        if stored != batch.hashes:
            # Stored under their own hashes (unnamed: garbage for the collector); the file
            # is sent again once the next pass has hashed it as it is now.
            raise Skip(f"{lf.path} changed while being uploaded")

    # -- deletes -------------------------------------------------------------------------------

    def do_delete_local(self, a: P.Action) -> None:
        self._check_unchanged(a.path, a.local)
        self.state.intend(a.path, "delete-local")
        path = os.path.join(self.folder, a.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._prune_dirs(os.path.dirname(path))
        self.state.drop_file(a.path)
        with self.state.transaction():
            self.state.drop_base(a.path)
            self.state.done(a.path)
        self.stats.deleted += 1
        self.say(f"deleted {a.path} (deleted on the server)")

    def _prune_dirs(self, directory: str) -> None:
        """Remove directories a remote delete or move left empty, up to the folder."""
        while os.path.abspath(directory) != self.folder:
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    def do_delete_remote(self, a: P.Action) -> None:
        assert a.base is not None
        self.state.intend(a.path, "delete-remote")
        self.remote.delete(a.path, a.base.md5)
        with self.state.transaction():
            self.state.drop_remote(a.path)
            self.state.drop_base(a.path)
            self.state.done(a.path)
        self.stats.deleted += 1
        self.say(f"deleted {a.path} on the server")

    # -- moves ---------------------------------------------------------------------------------

    def do_move_remote(self, a: P.Action) -> None:
        lf, src = a.local, a.source
        assert lf is not None and src is not None and a.remote is not None
        lf = self._full(lf)
        self.state.intend(a.path, "move-remote", src)
        if self.remote.supports_move():
            etag = self.remote.move(src, a.path, a.remote.md5)
        else:
            # No server-side move: name the same chunks under the new name (no data moves:
            # ?missing finds them all), then delete the old name if it is still ours.
            self._send_missing(lf, None)
            etag = self.remote.put_hashmap(a.path, lf.size, lf.chunks, lf.md5, None)
            self.remote.delete(src, a.remote.md5)
        with self.state.transaction():
            self.state.drop_remote(src)
            self.state.drop_base(src)
            self.state.put_remote(RemoteEntry(a.path, lf.size, etag))
            self.state.set_base(BaseEntry(a.path, lf.size, lf.md5, lf.mtime_ns, lf.inode),
                                lf.chunks)
            self.state.done(a.path)
        self.stats.moved += 1
        self.say(f"moved {src} -> {a.path} on the server")

    def do_copy_remote(self, a: P.Action) -> None:
        """A new file whose content a remote object holds: copied on the server (If-None-Match
        the new name, X-Source-If-Match the source), no data or hashmap sent."""
        lf, src = a.local, a.source
        assert lf is not None and src is not None and a.remote is not None
        lf = self._full(lf)
        self.state.intend(a.path, "copy-remote", src)
        etag = self.remote.copy(src, a.path, a.remote.md5)
        if etag != lf.md5:  # (the source was checked by its ETag: cannot differ)
            raise RemoteError(f"copy {src} -> {a.path}: the server made {etag}", 0)
        self._uploaded(a.path, lf, etag)
        self.progress.advance(lf.size)

    def do_move_local(self, a: P.Action) -> None:
        lf, src, r = a.local, a.source, a.remote
        assert lf is not None and src is not None and r is not None
        self._check_unchanged(src, lf)
        lf = self._full(lf)
        self._check_unchanged(a.path, None)
        self.state.intend(a.path, "move-local", src)
        old = os.path.join(self.folder, src)
        new = os.path.join(self.folder, a.path)
        try:
            os.makedirs(os.path.dirname(new), exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Skip(f"cannot create {a.path}: a file of the folder is in the way") from None
        os.rename(old, new)
        fsync_dir(os.path.dirname(new))
        self._prune_dirs(os.path.dirname(old))
        self.state.drop_file(src)
        st = os.stat(new, follow_symlinks=False)
        moved = LocalFile(a.path, lf.size, st.st_mtime_ns, st.st_ino, lf.md5, lf.chunks)
        self.state.put_file(moved)
        with self.state.transaction():
            self.state.drop_base(src)
            self.state.set_base(BaseEntry(a.path, lf.size, lf.md5, st.st_mtime_ns, st.st_ino),
                                lf.chunks)
            self.state.done(a.path)
        self.stats.moved += 1
        self.say(f"moved {src} -> {a.path} (moved on the server)")

    # -- conflicts -----------------------------------------------------------------------------

    def do_conflict(self, a: P.Action) -> None:
        """Both sides changed: keep both.  The local file goes to a conflict copy (a new
        file, uploaded on the next pass) and the remote version takes its name."""
        lf = a.local
        assert lf is not None
        self._check_unchanged(a.path, lf)
        copy = self.conflict_name(a.path)
        self.state.intend(a.path, "conflict", copy)
        os.rename(os.path.join(self.folder, a.path), os.path.join(self.folder, copy))
        self.state.drop_file(a.path)
        self.stats.conflicts += 1
        self.say(f"conflict: {a.path} changed on both sides; yours is now {copy}")
        self._download(a.path, None)
        self.stats.downloaded += 1

    def conflict_name(self, rel: str) -> str:
        directory, name = os.path.split(rel)
        stem, ext = os.path.splitext(name)
        if stem.startswith(".") and not ext:
            stem, ext = name, ""
        stamp = time.strftime("%Y-%m-%d %H%M")
        for n in range(1, 1000):
            suffix = "" if n == 1 else f" {n}"
            candidate = os.path.join(directory,
                                     f"{stem} (conflict from {self.host} {stamp}{suffix}){ext}")
            if not os.path.lexists(os.path.join(self.folder, candidate)):
                return candidate
        raise Skip(f"{rel}: no free name for a conflict copy")


# Each thread's batch buffers, one per kind of batch (deflated or not), kept from file to
# file: a fresh bytearray per file was zeroed and page-faulted in (a first sync's every byte
# sent, ~0.2 s of the client's CPU a GB, a good part of it holding the GIL).
_buffers = threading.local()


def _thread_buffer(kind: bool, capacity: int) -> bytearray:
    """This thread's buffer for batches of `kind`, of at least `capacity` bytes (made
    larger only when a larger one is wanted: at most BLOCKS_BATCH_BYTES)."""
    mine: dict[bool, bytearray] | None = getattr(_buffers, "by_kind", None)
    if mine is None:
        mine = _buffers.by_kind = {}
    buf = mine.get(kind)
    if buf is None or len(buf) < capacity:
        buf = mine[kind] = bytearray(capacity)
    return buf


class _Batch:
    """Chunks for one POST ?blocks (up to `capacity` bytes), with their lengths and the
    hashes the scan found for them: either ranges of the file, which the kernel sends
    (`add_range`), or chunks back to back in one buffer (`add`: this thread's buffer for
    `kind`, taken on first use, batch after batch of one file).  One _Batch per kind per
    thread at a time (an upload sends its batches before the next file's)."""

    def __init__(self, capacity: int = BLOCKS_BATCH_BYTES, kind: bool = False) -> None:
        self.capacity = capacity
        self.kind = kind
        self.buf = bytearray()
        self.fd = -1
        self.ranges: list[tuple[int, int]] = []
        self.fill = 0
        self.lengths: list[int] = []
        self.hashes: list[bytes] = []

    def add_range(self, fd: int, offset: int, n: int) -> None:
        """n bytes of the file `fd` at `offset` (the caller adds their lengths and hashes);
        not read here."""
        assert not self.buf and self.fill + n <= self.capacity
        self.fd = fd
        last = self.ranges[-1] if self.ranges else None
        if last is not None and last[0] + last[1] == offset:
            self.ranges[-1] = (last[0], last[1] + n)
        else:
            self.ranges.append((offset, n))
        self.fill += n

    def _room(self, n: int) -> memoryview:
        if not self.buf:
            self.buf = _thread_buffer(self.kind, self.capacity)
        assert self.fill + n <= self.capacity
        return memoryview(self.buf)[self.fill:self.fill + n]

    def add(self, chunk: memoryview, c: Chunk) -> None:
        with self._room(c.length) as room:
            room[:] = chunk
        self.fill += c.length
        self.lengths.append(c.length)
        self.hashes.append(c.hash)

    def body(self) -> memoryview | FileRanges:
        if self.ranges:
            return FileRanges(self.fd, self.ranges)
        return memoryview(self.buf)[:self.fill]

    def clear(self) -> None:
        self.fill = 0
        self.lengths, self.hashes, self.ranges = [], [], []


@dataclass
class _Uploads:
    """The uploads of a pass: in flight on `pool`, and the paths that failed (retried on
    the next pass)."""
    pool: ThreadPoolExecutor
    inflight: dict[Future[tuple[LocalFile, str]], P.Action] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    started: list[P.Action] = field(default_factory=list)  # early (during the scan)


def compressible(data: bytes | memoryview) -> bool:
    """Whether a chunk looks worth deflating: few distinct byte values in 256 bytes from its
    middle (text ~40-70, zeros 1; random or compressed data ~160).  A few microseconds a
    chunk, where deflating a random one to learn it costs more than sending it."""
    mid = len(data) // 2
    return len(set(data[mid:mid + 256])) < 100


def _transfer_bytes(a: P.Action) -> int:
    if a.kind == P.UPLOAD and a.local is not None:
        return a.local.size
    if a.kind in (P.DOWNLOAD, P.CONFLICT) and a.remote is not None:
        return a.remote.size
    return 0


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if exc.errno == errno.EFBIG:
        return "disk full (the file size limit)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOENT:
        return "vanished"
    return exc.strerror or str(exc)


__all__ = ["READ_SIZE", "Engine", "Progress", "Stats"]

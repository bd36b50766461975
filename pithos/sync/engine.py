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
from pithos.sync.progress import Progress
from pithos.sync.remote import (
    CursorGone,
    PreconditionFailed,
    Remote,
    RemoteError,
)
from pithos.sync.scan import READ_SIZE, Ignore, ScanResult, scan
from pithos.sync.state import BaseEntry, LocalFile, RemoteEntry, State
from pithos.sync.upload import Claims, UploadJob, UploadsMixin, stops_pass

T = TypeVar("T")

MAX_PASSES = 8
# Uploads in flight at once: while one waits for the server (its fsyncs, its commit), the
# others send; the server's workers take them side by side.  The bench's first sync at
# --scale 0.25, alternated in one session: 4 workers 5.6-13.7 s, 8 workers 3.7-10.0 s; at
# scale 1 with groups (below), 8 workers 7.6-11.0 s, 16 workers 6.1-8.4 s (a loaded
# machine, same runs).  What a worker holds: a group's chunk lists (GROUP_FILES files or
# GROUP_BYTES of them, or one larger file's: ~2.5 MB a GiB) and the ?missing answer for
# them, a buffer of at most DEFLATE_MAX (compressible chunks, deflated; the others go from
# the files by sendfile), the group's files open, a small file.
UPLOAD_WORKERS = 16
# Uploads prepared while every worker is busy wait as one group, up to this many files or
# bytes of files (then the scan waits for a worker): a group is sent by one worker, one
# file after another, with one ?missing for all (a ?missing per file was a quarter of the
# first sync's requests: 283 of ~1000, 55-100 with groups).
GROUP_FILES = 8
GROUP_BYTES = 64 << 20


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


class Engine(DownloadsMixin, UploadsMixin):
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
        self._claims = Claims()
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
                return not pending and not self._unfit_remote_names()
            # A pass that did nothing on the same plan as the one before will not do better:
            # each reason was reported.  (A file that changed while read plans differently.)
            seen = (sorted(map(repr, actions)), sorted(unknown))
            if self.done == done_before and seen == previous:
                return False
            previous = seen
        return False

    def _unfit_remote_names(self) -> bool:
        """Whether the container holds objects no file of the folder can be (a name with an
        empty, '.' or '..' segment, a NUL, a leading or trailing '/'), each reported: the
        plan leaves them out, and a run that said nothing of them called the two sides in
        agreement while they were not."""
        ignore = Ignore(self.folder)
        unfit = [n for n in self.state.remote() if not P.valid_name(n) and not ignore(n)]
        for name in sorted(unfit):
            self.report(f"skipping the container's {name!r}: no file of the folder can have "
                        "that name")
        return bool(unfit)

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
                self._dispatch(uploads, final=True)
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
                self._dispatch(uploads, final=True)
                self._reap(uploads, everything=True)
                self.act(a)
                continue
            self._start_upload(a, uploads)
        self._dispatch(uploads, final=True)
        self._reap(uploads, everything=True)

    def _start_upload(self, a: P.Action, uploads: _Uploads,
                      full: LocalFile | None = None) -> None:
        job = self._guard(a, functools.partial(self._prepare_upload, a, full))
        if job is None:
            uploads.failed.add(a.path)
            self.progress.file_done()
            return
        uploads.pending.append(job)
        uploads.pending_bytes += a.local.size if a.local is not None else 0
        self._dispatch(uploads, final=False)

    def _dispatch(self, uploads: _Uploads, final: bool) -> None:
        """Hand the uploads prepared to the workers: while one is free, all of them at once
        (one group: one ?missing, sent one after the other); while none is, they wait here
        (the scan goes on) up to GROUP_FILES files or GROUP_BYTES bytes, then this waits
        for a worker.  `final`: nothing more is coming, spread them over the free workers
        (and wait for workers until all are handed)."""
        self._reap(uploads, everything=False)
        pending = uploads.pending
        while pending:
            free = self.upload_workers - len(uploads.inflight)
            if free <= 0:
                if not final and len(pending) < GROUP_FILES and \
                        uploads.pending_bytes < GROUP_BYTES:
                    return
                self._reap(uploads, everything=False, wait_for=self.upload_workers)
                continue
            n = -(-len(pending) // free) if final else len(pending)
            group: list[UploadJob] = []
            size = 0
            for job in pending:  # (at least one: a file larger than GROUP_BYTES goes alone)
                if group and (len(group) >= min(n, GROUP_FILES) or
                              size + job.local.size > GROUP_BYTES):
                    break
                group.append(job)
                size += job.local.size
            del pending[:len(group)]
            uploads.pending_bytes -= size
            group.sort(key=lambda j: j.local.size)  # (the small ones recorded soonest)
            uploads.inflight[uploads.pool.submit(self._send_group, group)] = group

    def _reap(self, uploads: _Uploads, everything: bool, wait_for: int = 0) -> None:
        """Record the uploads that finished: all of them if `everything`, else those done
        now, waiting while `wait_for` (if not 0) or more groups are still in flight."""
        inflight = uploads.inflight
        while inflight:
            block = everything or 0 < wait_for <= len(inflight)
            if block:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            else:  # (a look, not a wait: no waiter installed on every future, per file)
                done = {f for f in inflight if f.done()}
            for f in done:
                group = inflight.pop(f)
                try:
                    outcomes: list[tuple[LocalFile, str] | Exception] = f.result()
                except Exception as exc:  # (cancelled, or a bug: every file of it failed)
                    outcomes = [exc] * len(group)
                for job, outcome in zip(group, outcomes, strict=True):
                    self._record_upload(job.action, outcome, uploads)
            if not done or not (everything or 0 < wait_for <= len(inflight)):
                return

    def _record_upload(self, a: P.Action, outcome: tuple[LocalFile, str] | Exception,
                       uploads: _Uploads) -> None:
        def record() -> bool:
            if isinstance(outcome, Exception):
                raise outcome
            self._uploaded(a.path, *outcome)
            return True

        try:
            if self._guard(a, record):
                self.done += 1
            else:
                uploads.failed.add(a.path)
        finally:
            self.progress.file_done()

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
            if stops_pass(exc):
                raise  # the server is unreachable or refuses us: nothing else would work
            self.report(f"{a.describe()}: {exc}")
        except OSError as exc:
            self.report(f"{a.path}: {_os_reason(exc)} (skipped, will retry)")
        return None

    # -- bookkeeping ---------------------------------------------------------------------------

    def do_agree(self, a: P.Action) -> None:
        lf = a.local
        assert lf is not None
        full = self.state.cached(a.path)
        chunks = full.chunks if full is not None and full.md5 == lf.md5 else ()
        self.state.set_base(BaseEntry(a.path, lf.size, lf.md5, lf.mtime_ns, lf.inode), chunks)

    def do_forget(self, a: P.Action) -> None:
        self.state.drop_base(a.path)

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
        moved = LocalFile(a.path, lf.size, st.st_mtime_ns, st.st_ino, lf.md5, lf.chunks,
                          st.st_ctime_ns)
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


@dataclass
class _Uploads:
    """The uploads of a pass: in flight on `pool`, and the paths that failed (retried on
    the next pass)."""
    pool: ThreadPoolExecutor
    inflight: dict[Future[list[tuple[LocalFile, str] | Exception]], list[UploadJob]] = \
        field(default_factory=dict)
    pending: list[UploadJob] = field(default_factory=list)  # prepared, not handed yet
    pending_bytes: int = 0
    failed: set[str] = field(default_factory=set)
    started: list[P.Action] = field(default_factory=list)  # early (during the scan)


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

"""Downloads of the sync client: a version's chunks taken from files of the folder that hold
them (verified) or fetched by ranged GETs, written to a temporary file under
`.pithos-sync/tmp/` (resumed from its verified prefix after a kill), checked whole against
the ETag, fsynced and renamed into place.  A mixin of `pithos.sync.engine.Engine`, whose
state it uses."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import stat
from collections.abc import Callable
from typing import Any

import urllib3

from pithos.core.files import fsync_dir
from pithos.core.hashing import block_hash
from pithos.sync import plan as P
from pithos.sync.remote import NotFoundRemote, Remote, RemoteError, RemoteMap
from pithos.sync.scan import same_stat
from pithos.sync.state import BaseEntry, Chunk, LocalFile, RemoteEntry, State

RANGE_BATCH_BYTES = 16 << 20  # bytes per ranged GET of missing chunks


class Skip(Exception):
    """This path cannot be done now (changed meanwhile, unreadable...): one line, retried on
    the next pass."""


class DownloadsMixin:
    state: State
    remote: Remote
    folder: str
    stats: Any
    progress: Any
    _fds: dict[str, int]
    say: Callable[[str], None]

    def do_download(self, a: P.Action) -> None:
        self._download(a.path, a.local)
        self.stats.downloaded += 1
        self.say(f"downloaded {a.path}")

    def _download(self, rel: str, expect: LocalFile | None) -> None:
        """Fetch the current remote version of `rel` and put it in place of `expect` (the
        local file as scanned; None: there was none)."""
        try:
            m = self.remote.hashmap(rel)
        except NotFoundRemote:
            raise Skip(f"{rel} vanished from the server") from None
        self.state.intend(rel, "download", m.etag)
        tmp = os.path.join(self.state.tmp_dir, _tmp_name(rel, m.etag))
        try:
            self._fill(rel, m, tmp)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # give the space back; the download starts over later
            raise
        target = os.path.join(self.folder, rel)
        self._check_unchanged(rel, expect)
        parent = os.path.dirname(target)
        try:
            os.makedirs(parent, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Skip(f"cannot create {rel}: a file of the folder is in the way") from None
        if os.path.isdir(target):
            raise Skip(f"cannot create {rel}: a directory of the folder has that name")
        try:
            old = os.stat(target, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISREG(old.st_mode):  # (an executable stays one, a read-only file too)
                os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, target)
        fsync_dir(parent)
        st = os.stat(target, follow_symlinks=False)
        lf = LocalFile(rel, m.size, st.st_mtime_ns, st.st_ino, m.etag, tuple(m.chunks),
                       st.st_ctime_ns)
        self.state.put_file(lf)
        with self.state.transaction():
            self.state.put_remote(RemoteEntry(rel, m.size, m.etag))
            self.state.set_base(BaseEntry(rel, m.size, m.etag, st.st_mtime_ns, st.st_ino),
                                m.chunks)
            self.state.done(rel)

    def _fill(self, rel: str, m: RemoteMap, tmp: str) -> None:
        """Write the map's content into `tmp`, resuming after its verified prefix; chunks
        come from the folder where it holds them, else from ranged GETs."""
        try:
            self._fill_from(rel, m, tmp)
        finally:
            self._close_fds()

    def _fill_from(self, rel: str, m: RemoteMap, tmp: str) -> None:
        md5 = hashlib.md5(usedforsecurity=False)
        # (The umask gives it its mode, as to any file the user makes; `download` keeps the
        # mode of a file it replaces.)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        with open(fd, "r+b") as f:
            done = 0  # chunks already in tmp, verified
            offset = 0
            for c in m.chunks:
                data = f.read(c.length)
                if len(data) != c.length or block_hash(data) != c.hash:
                    break
                md5.update(data)
                done += 1
                offset += c.length
                self.progress.advance(c.length)
            f.truncate(offset)
            f.seek(offset)
            run: list[Chunk] = []
            run_bytes = 0
            for c in m.chunks[done:]:
                found = self._local_chunk(c)
                if found is None:
                    run.append(c)
                    run_bytes += c.length
                    if run_bytes >= RANGE_BATCH_BYTES:
                        offset = self._fetch_run(rel, m, run, offset, f, md5)
                        run, run_bytes = [], 0
                    continue
                if run:
                    offset = self._fetch_run(rel, m, run, offset, f, md5)
                    run, run_bytes = [], 0
                f.write(found)
                md5.update(found)
                offset += c.length
                self.stats.reused_bytes += c.length
                self.progress.advance(c.length)
            if run:
                offset = self._fetch_run(rel, m, run, offset, f, md5)
            f.flush()
            if offset != m.size or md5.hexdigest() != m.etag:
                f.truncate(0)
                raise RemoteError(f"{rel}: the downloaded content does not match its ETag", 0)
            os.fsync(f.fileno())

    def _local_chunk(self, c: Chunk) -> bytes | None:
        """The chunk's bytes from a file of the folder that held it, verified; None if no
        file holds it now."""
        for src in self.state.chunk_sources(c.hash):
            try:
                fd = self._fds.get(src.path)
                if fd is None:
                    if len(self._fds) >= 64:
                        self._close_fds()
                    fd = os.open(os.path.join(self.folder, src.path),
                                 os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                    self._fds[src.path] = fd
                data = os.pread(fd, src.length, src.offset)
            except OSError:
                continue
            if len(data) == c.length and block_hash(data) == c.hash:
                return data
        return None

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fetch_run(self, rel: str, m: RemoteMap, run: list[Chunk], offset: int, f: object,
                   md5: object) -> int:
        end = offset + sum(c.length for c in run)
        r = self.remote.get_range(rel, m.etag, offset, end)
        try:
            for c in run:
                try:
                    data = r.read(c.length)
                except (urllib3.exceptions.HTTPError, http.client.HTTPException,
                        OSError) as exc:
                    # (The connection broke mid-answer, or timed out: the server is gone as
                    # far as this pass goes; the download resumes on the next.)
                    raise RemoteError(f"the server's answer for {rel} broke off: "
                                      f"{getattr(exc, 'reason', None) or exc}", 0) from None
                if len(data) != c.length or block_hash(data) != c.hash:
                    raise RemoteError(f"{rel}: a chunk from the server failed verification", 0)
                f.write(data)  # type: ignore[attr-defined]
                md5.update(data)  # type: ignore[attr-defined]
                self.stats.fetched_bytes += c.length
                self.remote.received_bytes += c.length
                self.progress.advance(c.length)
        finally:
            r.release_conn()
        return end

    def _check_unchanged(self, rel: str, expect: LocalFile | None) -> None:
        try:
            st = os.stat(os.path.join(self.folder, rel), follow_symlinks=False)
        except FileNotFoundError:
            if expect is None:
                return
            raise Skip(f"{rel} vanished locally meanwhile") from None
        except NotADirectoryError:
            raise Skip(f"cannot create {rel}: a file of the folder is in the way") from None
        if expect is None:
            raise Skip(f"{rel} appeared locally meanwhile")
        if not same_stat(st, expect.size, expect.mtime_ns, expect.inode,
                         expect.ctime_ns or None):
            raise Skip(f"{rel} changed locally meanwhile")


def _tmp_name(rel: str, etag: str) -> str:
    """The temporary file of a download of version `etag` of `rel`: the same name after a
    restart, so the download resumes."""
    return "dl-" + hashlib.sha256(f"{rel}\0{etag}".encode()).hexdigest()[:32]

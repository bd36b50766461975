"""The local side: walking the folder under the ignore rules, and hashing a file into its MD5
(the remote ETag) and its content-defined chunks, streamed (bounded memory for any size).

A file is hashed again only when its (size, mtime_ns, inode) differs from the files cache.  A
file that changes while it is read, or cannot be read, is reported and left out of this pass
as *unknown* (never as deleted: that would delete it remotely); so is every path under a
directory that cannot be listed, on both sides.  Only regular files are synced: a symbolic
link or a special file is skipped with one line; directories exist as the paths of files
(an empty one is not synced).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pithos.core import md5 as md5_impl
from pithos.sync.chunks import PieceCutter
from pithos.sync.state import STATE_DIR, ChunkList, LocalFile, State

IGNORE_FILE = ".pithosignore"
READ_SIZE = 1 << 20
# A file up to this size is uploaded by one plain PUT (the server cuts it as we would), and
# hashed before the larger ones (`scan`).
SMALL_FILE_BYTES = 64 << 10


class Changed(Exception):
    """The file changed (or vanished) while it was read."""


class Vanished(Changed):
    """The file was deleted while it was read."""


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


@dataclass
class ScanResult:
    # Without their chunk lists (State.cached has them): memory per file, not per byte.
    files: dict[str, LocalFile] = field(default_factory=dict)
    # Present but not hashed this pass (unreadable, changing, under a directory that could not
    # be listed): the planner leaves them alone.
    unknown: set[str] = field(default_factory=set)
    hashed_bytes: int = 0


class Ignore:
    """`.pithosignore` at the folder's top, gitignore syntax; the state directory always."""

    def __init__(self, folder: str) -> None:
        lines: list[str] = []
        try:
            with open(os.path.join(folder, IGNORE_FILE), encoding="utf-8",
                      errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            pass
        # (pathspec loaded only for a folder with rules: ~17 ms of every run's start.)
        self.spec = None
        if any(line.strip() for line in lines):
            import pathspec

            self.spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def __call__(self, path: str, is_dir: bool = False) -> bool:
        if path == STATE_DIR or path.startswith(STATE_DIR + "/"):
            return True
        return self.spec is not None and bool(
            self.spec.match_file(path + "/" if is_dir else path))


def walk(folder: str, ignore: Ignore, report: Callable[[str], None],
         unlisted: list[str] | None = None,
         special: list[str] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """(relative POSIX path, lstat) of every regular file not ignored.  Symlinks and special
    files are skipped with a line (object names cannot hold them faithfully) and appended to
    `special`; directories that cannot be listed are reported and appended to `unlisted`."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(folder, rel_dir) if rel_dir else folder))
        except OSError as exc:
            report(f"cannot list {rel_dir or '.'}: {_reason(exc)} (skipped, will retry)")
            if unlisted is not None:
                unlisted.append(rel_dir)
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                report(f"skipping {rel!r}: its name is not UTF-8")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between the listing and the stat
            if stat.S_ISDIR(st.st_mode):
                if not ignore(rel, is_dir=True):
                    stack.append(rel)
            elif ignore(rel):
                continue
            elif stat.S_ISREG(st.st_mode):
                yield rel, st
            else:
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                report(f"skipping {rel}: {what} (only regular files are synced)")
                if special is not None:
                    special.append(rel)


# Files hashed side by side: their MD5s share the vector lanes of pithos.core.md5 (8 streams
# cost about what one does: the scan's MD5 went from ~2.8 to ~0.5 ms a MB on this VM).
HASH_LANES = 8


class _Hashing:
    """One file being hashed by `hash_files`: open, checked against the stat it was listed
    with, then fed a piece at a time."""

    def __init__(self, folder: str, rel: str, st: os.stat_result,
                 buffers: list[bytearray] | None = None) -> None:
        """`buffers`: cutter buffers of finished files, one taken if the file needs one
        that large (each file's was a new MiB, zeroed by the kernel page by page: ~5% of the
        scan thread on the sync bench's 400 files)."""
        self.rel = rel
        self.st = st
        self.path = os.path.join(folder, rel)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Vanished(rel) from None
        self.f = open(fd, "rb", buffering=0)  # noqa: SIM115  (closed by `close`)
        if not same_stat(os.fstat(fd), st.st_size, st.st_mtime_ns, st.st_ino):
            self.f.close()
            raise Changed(rel)
        self.md5 = md5_impl.new()
        reuse = buffers.pop() if buffers and st.st_size + 1 >= READ_SIZE else None
        self.cutter = PieceCutter(READ_SIZE, st.st_size, reuse)
        self.chunks: list[bytes] = []  # chunk lists (packed), a piece's each
        self.size = 0

    def read(self) -> memoryview:
        """The next piece, read into the cutter's buffer (a view: released before `take`)."""
        return self.cutter.read(self.f)

    def take(self, n: int) -> None:
        """The chunks the last piece (of n bytes) completed, cut and hashed in one call
        (without the GIL when native), kept packed (its MD5 is updated by the caller, in
        lanes)."""
        self.size += n
        self.chunks.append(self.cutter.cut())

    def result(self) -> LocalFile:
        """The file as hashed; Changed if it is not the file its stat described from start
        to end."""
        self.chunks.append(self.cutter.cut(final=True))
        st = self.st
        after = os.fstat(self.f.fileno())
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise Vanished(self.rel) from None
        if self.size != st.st_size or not same_stat(after, st.st_size, st.st_mtime_ns,
                                                    st.st_ino) \
                or not same_stat(now, st.st_size, st.st_mtime_ns, st.st_ino):
            raise Changed(self.rel)
        return LocalFile(self.rel, self.size, st.st_mtime_ns, st.st_ino,
                         self.md5.hexdigest(), ChunkList(b"".join(self.chunks)),
                         st.st_ctime_ns)

    def close(self, buffers: list[bytearray] | None = None) -> None:
        """Close the file; its cutter's buffer goes back to `buffers` if one of a large
        file's size (nothing refers to it any more: chunk lists are bytes of their own)."""
        self.f.close()
        buf = self.cutter.buf
        if buffers is not None and len(buf) == PieceCutter.buffer_size(READ_SIZE) and \
                len(buffers) < HASH_LANES:
            buffers.append(buf)


def hash_files(folder: str, listed: Iterable[tuple[str, os.stat_result]]
               ) -> Iterator[tuple[str, LocalFile | OSError | Changed]]:
    """Hash files `HASH_LANES` at a time, a piece of each per step, their MD5s side by side
    (`pithos.core.md5.update_many`); yields (path, LocalFile) as each ends, or (path, the
    error) for a file that vanished, changed or could not be read.  Memory: a piece and a
    chunk list per file in hand."""
    todo = iter(listed)
    active: list[_Hashing] = []
    buffers: list[bytearray] = []
    more = True
    while active or more:
        while more and len(active) < HASH_LANES:
            item = next(todo, None)
            if item is None:
                more = False
                break
            try:
                active.append(_Hashing(folder, *item, buffers=buffers))
            except (OSError, Changed) as exc:
                yield item[0], exc
        if not active:
            continue
        pieces: list[memoryview] = []
        failed: list[tuple[_Hashing, OSError]] = []
        for h in active:
            try:
                pieces.append(h.read())
            except OSError as exc:
                pieces.append(memoryview(b""))
                failed.append((h, exc))
        md5_impl.update_many([h.md5 for h, p in zip(active, pieces, strict=True) if p],
                             [p for p in pieces if p])
        sizes = [p.nbytes for p in pieces]
        for p in pieces:
            p.release()  # (the cutter's buffer moves its bytes once they are cut)
        still: list[_Hashing] = []
        for h, n in zip(active, sizes, strict=True):
            error = next((e for f, e in failed if f is h), None)
            if error is None and n:
                h.take(n)
                still.append(h)
                continue
            try:
                if error is not None:
                    raise error
                done: LocalFile | OSError | Changed = h.result()
            except (OSError, Changed) as exc:
                done = exc
            finally:
                h.close(buffers)
            yield h.rel, done
        active = still


def same_stat(a: os.stat_result, size: int, mtime_ns: int, inode: int,
              ctime_ns: int | None = None) -> bool:
    """Whether `a` is still the file of that size, mtime and inode (and, given one, change
    time: what a rewrite that keeps the size and puts the mtime back changes)."""
    return a.st_size == size and a.st_mtime_ns == mtime_ns and a.st_ino == inode and (
        ctime_ns is None or a.st_ctime_ns == ctime_ns)


def hash_file(folder: str, rel: str, st: os.stat_result) -> LocalFile:
    """Hash one file; Changed if it is not the file `st` described from start to end."""
    ((_, f),) = hash_files(folder, [(rel, st)])
    if isinstance(f, LocalFile):
        return f
    raise f


# Files hashed are written to the files cache and the chunk index in batches of this many
# files or chunks (one transaction each: see State.put_files).  A run killed before a batch
# is written hashes its files again next time, nothing worse.
CACHE_BATCH_FILES = 64
CACHE_BATCH_CHUNKS = 8192


def scan(folder: str, state: State, ignore: Ignore, report: Callable[[str], None],
         on_hashed: Callable[[LocalFile], None] | None = None) -> ScanResult:
    """Every file of the folder, hashed where the files cache is stale; the cache and the
    chunk index are brought up to date (rows of vanished files dropped).  `on_hashed` is
    called with each file as soon as it is hashed, with its chunk list (an upload started
    from it needs them, and reading them back from the cache cost as much as writing
    them), possibly before its files cache row is written (in batches; all of them before
    this returns); the result keeps none."""
    result = ScanResult()
    pending: list[LocalFile] = []
    pending_chunks = 0

    def flush() -> None:
        nonlocal pending_chunks
        if pending:
            state.put_files(pending)
            pending.clear()
            pending_chunks = 0

    unlisted: list[str] = []
    special: list[str] = []
    stale: list[tuple[str, os.stat_result]] = []  # to hash: the files cache is not theirs
    for rel, st in walk(folder, ignore, report, unlisted, special):
        cached = state.cached_stat(rel)
        if cached is not None and same_stat(st, cached.size, cached.mtime_ns, cached.inode,
                                            cached.ctime_ns):
            result.files[rel] = cached
            continue
        stale.append((rel, st))
    # The small files first, then the others largest first.  Each file's upload starts
    # when it is hashed: the small ones take a step of the lanes each and go by one plain
    # PUT, so the server has work from the run's first moments, while the first large
    # files are still being hashed (it sat idle there, and the small files' PUTs came at
    # the end, beside the last large uploads).  A large file's chunks go batch after batch
    # on one upload worker, so one hashed last (the walk's order put the sync bench's 128
    # MiB image there) was the end of the run by itself, ~1 s after every other upload had
    # finished.  (Starting the first lanes with files of a few MiB beside the largest, so
    # that uploads began sooner, measured no faster and cost the MD5 lanes:
    # benchmarks/README.md, sync_bench.)
    stale.sort(key=lambda item: (item[1].st_size > SMALL_FILE_BYTES,
                                 -item[1].st_size if item[1].st_size > SMALL_FILE_BYTES else 0))
    for rel, f in hash_files(folder, stale):
        if isinstance(f, Vanished):
            report(f"{rel} vanished while being read (skipped)")
            result.unknown.add(rel)
            continue
        if isinstance(f, Changed):
            report(f"{rel} changed while being read (skipped, will retry)")
            result.unknown.add(rel)
            continue
        if isinstance(f, OSError):
            if f.errno == errno.ENOENT:
                continue
            report(f"cannot read {rel}: {_reason(f)} (skipped, will retry)")
            result.unknown.add(rel)
            continue
        pending.append(f)
        pending_chunks += len(f.chunks)
        if len(pending) >= CACHE_BATCH_FILES or pending_chunks >= CACHE_BATCH_CHUNKS:
            flush()
        result.files[rel] = dataclasses.replace(f, chunks=())  # the cache holds them
        result.hashed_bytes += f.size
        if on_hashed is not None:
            on_hashed(f)
    flush()
    if unlisted or special:
        # What the folder may still hold there is unknown, not deleted: left alone both ways
        # (no remote delete, no download into a directory we cannot read).  So is a synced
        # path (a file, or a directory's files) that a symbolic link or a special file now
        # stands in: a folder moved to another disk and linked back is no deletion, and a
        # download must not write through the link.
        prefixes = tuple("" if d == "" else d + "/" for d in unlisted) + tuple(
            d + "/" for d in special)
        known = set(state.cached_paths()) | set(state.base()) | set(state.remote())
        result.unknown |= {p for p in known if p.startswith(prefixes) or p in special}
    for rel in state.cached_paths():
        if rel not in result.files and rel not in result.unknown:
            state.drop_file(rel)
    return result

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
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pathspec

from pithos.core.hashing import block_hash
from pithos.sync.chunks import new_chunker
from pithos.sync.state import STATE_DIR, Chunk, LocalFile, State

IGNORE_FILE = ".pithosignore"
READ_SIZE = 1 << 20


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
        self.spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def __call__(self, path: str, is_dir: bool = False) -> bool:
        if path == STATE_DIR or path.startswith(STATE_DIR + "/"):
            return True
        return bool(self.spec.match_file(path + "/" if is_dir else path))


def walk(folder: str, ignore: Ignore, report: Callable[[str], None],
         unlisted: list[str] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """(relative POSIX path, lstat) of every regular file not ignored.  Symlinks and special
    files are skipped with a line (object names cannot hold them faithfully); directories
    that cannot be listed are reported and appended to `unlisted`."""
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


def hash_open_file(f: object, on_bytes: Callable[[int], None] | None = None
                   ) -> tuple[str, tuple[Chunk, ...], int]:
    """(md5 hex, chunks, size) of an open binary file read to its end, 1 MiB at a time."""
    read = f.read  # type: ignore[attr-defined]
    md5 = hashlib.md5(usedforsecurity=False)
    chunker = new_chunker()
    chunks: list[Chunk] = []
    size = 0
    while True:
        piece = read(READ_SIZE)
        if not piece:
            break
        md5.update(piece)
        size += len(piece)
        chunks.extend(Chunk(block_hash(c), len(c)) for c in chunker.update(piece))
        if on_bytes is not None:
            on_bytes(len(piece))
    chunks.extend(Chunk(block_hash(c), len(c)) for c in chunker.finish())
    return md5.hexdigest(), tuple(chunks), size


def same_stat(a: os.stat_result, size: int, mtime_ns: int, inode: int) -> bool:
    return a.st_size == size and a.st_mtime_ns == mtime_ns and a.st_ino == inode


def hash_file(folder: str, rel: str, st: os.stat_result) -> LocalFile:
    """Hash one file; Changed if it is not the file `st` described from start to end."""
    path = os.path.join(folder, rel)
    try:
        with open(path, "rb", buffering=0) as f:
            before = os.fstat(f.fileno())
            if not same_stat(before, st.st_size, st.st_mtime_ns, st.st_ino):
                raise Changed(rel)
            md5, chunks, size = hash_open_file(f)
            after = os.fstat(f.fileno())
    except FileNotFoundError:
        raise Vanished(rel) from None
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise Vanished(rel) from None
    if size != st.st_size or not same_stat(after, st.st_size, st.st_mtime_ns, st.st_ino) \
            or not same_stat(now, st.st_size, st.st_mtime_ns, st.st_ino):
        raise Changed(rel)
    return LocalFile(rel, size, st.st_mtime_ns, st.st_ino, md5, chunks)


def scan(folder: str, state: State, ignore: Ignore, report: Callable[[str], None]
         ) -> ScanResult:
    """Every file of the folder, hashed where the files cache is stale; the cache and the
    chunk index are brought up to date (rows of vanished files dropped)."""
    result = ScanResult()
    unlisted: list[str] = []
    for rel, st in walk(folder, ignore, report, unlisted):
        cached = state.cached_stat(rel)
        if cached is not None and same_stat(st, cached.size, cached.mtime_ns, cached.inode):
            result.files[rel] = cached
            continue
        try:
            f = hash_file(folder, rel, st)
        except Vanished:
            report(f"{rel} vanished while being read (skipped)")
            result.unknown.add(rel)
            continue
        except Changed:
            report(f"{rel} changed while being read (skipped, will retry)")
            result.unknown.add(rel)
            continue
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            report(f"cannot read {rel}: {_reason(exc)} (skipped, will retry)")
            result.unknown.add(rel)
            continue
        state.put_file(f)
        result.files[rel] = dataclasses.replace(f, chunks=())  # the cache holds them
        result.hashed_bytes += f.size
    if unlisted:
        # What the folder may still hold there is unknown, not deleted: left alone both ways
        # (no remote delete, no download into a directory we cannot read).
        prefixes = tuple("" if d == "" else d + "/" for d in unlisted)
        known = set(state.cached_paths()) | set(state.base()) | set(state.remote())
        result.unknown |= {p for p in known if p.startswith(prefixes)}
    for rel in state.cached_paths():
        if rel not in result.files and rel not in result.unknown:
            state.drop_file(rel)
    return result

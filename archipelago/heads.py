"""Volume heads and leases: the small mutable records that name volumes and snapshots.

A **head** is the one mutable record of a volume or snapshot: its size, block size, the root of
its base map (immutable, in the shared block store), the generation of its delta (volume-owned
mutable data, see delta.py), a version for compare-and-swap and the token of the last lease.

`HeadStore` is the interface (a RADOS implementation comes with the scale-out work: one omap
object per pool, CAS by version with a `cmpxattr`-style guard); `LocalHeadStore` keeps one JSON
file per head under `volumes/<name>/head.json`, written crash-safely (temporary file, fsync,
rename, fsync of the directory) and compared-and-swapped under an `flock` of `volumes/.lock`.

A **lease** gives one writer per volume.  Acquiring one bumps the head's `token` (fencing
token); a holder checks before every write, flush and commit that the head still carries its
token, so a holder that lost the lease (another host took over after it stopped renewing, or
an administrator fenced it) cannot write any more.  Locally the lease is also an `flock` on
`volumes/<name>/lease`, so a second writer on this host is refused at once, and the lock is
released by the kernel when a holder dies (kill -9 included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from pithos.core.errors import BackendError, Conflict, InvalidArgument, NotFound, VersionConflict
from pithos.core.files import fsync_dir

SECTOR_SIZE = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class LeaseLost(Conflict):
    """The lease of this writer was taken over (its token is stale): it must stop writing."""


def check_name(name: str) -> str:
    """A volume or snapshot name: 1-128 of [A-Za-z0-9._-], not starting with a dot or dash
    (so it is a safe file name and an NBD export name)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"bad volume name {name!r}: use 1-128 letters, digits, '.', '_' "
                              "or '-', starting with a letter or digit")
    return name


@dataclasses.dataclass(frozen=True)
class Head:
    """The record of a volume (`kind == "volume"`) or of a snapshot (`"snapshot"`)."""

    name: str
    kind: str
    size: int
    block_size: int
    root: str | None  # hex root of the base map; None: no base (reads zeros)
    base_size: int  # bytes covered by the base map
    generation: int = 0  # which delta files hold the volume-owned data
    version: int = 0  # bumped by every successful put (compare-and-swap)
    token: int = 0  # fencing token of the latest lease
    created: float = 0.0
    origin: str = ""  # what it was created from, for people

    @property
    def readonly(self) -> bool:
        return self.kind == "snapshot"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Head:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def replace(self, **changes: Any) -> Head:
        return dataclasses.replace(self, **changes)


class Lease(ABC):
    """One writer's hold on a volume.  `token` is its fencing token."""

    token: int
    name: str

    @abstractmethod
    def check(self) -> None:
        """Raise LeaseLost if another writer took the volume over since this lease was
        granted.  Cheap enough to call before every write."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up.  Repeat-safe."""


class HeadStore(ABC):
    """Heads by name.  Thread- and process-safe; every method is atomic."""

    @abstractmethod
    def get(self, name: str) -> Head:
        """The current head; NotFound if there is none."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every head's name, sorted."""

    @abstractmethod
    def put(self, head: Head, expected_version: int | None) -> Head:
        """Store `head` if the current version is `expected_version` (None: the name must be
        free); returns the stored head, whose version is one more.  Durable on return.  Raises
        VersionConflict (nothing changed) when the expectation fails."""

    @abstractmethod
    def delete(self, name: str, expected_version: int) -> None:
        """Remove a head if its version is still `expected_version` (else VersionConflict);
        NotFound if absent.  Durable on return."""

    @abstractmethod
    def acquire(self, name: str, wait_s: float = 0.0) -> Lease:
        """Take the writer lease of a volume: Conflict if a live writer still holds it after
        `wait_s` seconds.  Bumps the head's token (durably) and returns a lease carrying the
        new token."""

    def heads(self) -> Iterator[Head]:
        for name in self.names():
            with contextlib.suppress(NotFound):
                yield self.get(name)


def write_durably(path: str, data: bytes) -> None:
    """Replace `path` atomically: write a temporary file, fsync, rename, fsync the directory.
    A crash leaves the old or the new content, never a mix."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    # Now sync the directory to commit the rename.
    fsync_dir(os.path.dirname(path))


class LocalLease(Lease):
    def __init__(self, store: LocalHeadStore, name: str, fd: int, token: int) -> None:
        self._store = store
        self.name = name
        self._fd: int | None = fd
        self.token = token
        self._seen: tuple[int, int] | None = None

    def check(self) -> None:
        if self._fd is None:
            raise LeaseLost(f"lease on {self.name} was released")
        path = self._store.head_path(self.name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise LeaseLost(f"volume {self.name} was deleted") from None
        seen = (st.st_ino, st.st_mtime_ns)
        if seen == self._seen:
            return  # head unchanged since the last check: the token is still ours
        head = self._store.get(self.name)
        if head.token != self.token:
            raise LeaseLost(f"lease on {self.name} was taken over (token {head.token}, "
                            f"ours {self.token})")
        self._seen = seen

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class LocalHeadStore(HeadStore):
    """Heads as `<path>/<name>/head.json` (the directory also holds the volume's delta)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
                fsync_dir(os.path.dirname(os.path.abspath(path)))
        except OSError as exc:
            raise BackendError(f"cannot create {path}: {exc.strerror}") from exc
        self._lock_path = os.path.join(path, ".lock")

    def volume_dir(self, name: str) -> str:
        return os.path.join(self.path, check_name(name))

    def head_path(self, name: str) -> str:
        return os.path.join(self.volume_dir(name), "head.json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def get(self, name: str) -> Head:
        try:
            with open(self.head_path(name), "rb") as f:
                return Head.from_json(json.loads(f.read()))
        except FileNotFoundError:
            raise NotFound(f"no volume or snapshot named {name!r}") from None
        except (ValueError, TypeError) as exc:
            raise BackendError(f"head of {name!r} is unreadable: {exc}") from exc

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if _NAME.match(n)
                      and os.path.exists(os.path.join(self.path, n, "head.json")))

    def _current(self, name: str) -> Head | None:
        try:
            return self.get(name)
        except NotFound:
            return None

    def put(self, head: Head, expected_version: int | None) -> Head:
        with self._locked():
            current = self._current(head.name)
            if (current.version if current else None) != expected_version:
                if current is None:
                    raise VersionConflict(f"{head.name!r} no longer exists")
                if expected_version is None:
                    raise VersionConflict(f"{head.name!r} already exists")
                raise VersionConflict(f"{head.name!r} changed (version {current.version}, "
                                      f"expected {expected_version})")
            stored = head.replace(version=(current.version if current else 0) + 1)
            vdir = self.volume_dir(head.name)
            if not os.path.isdir(vdir):
                os.makedirs(vdir, exist_ok=True)
                fsync_dir(self.path)
            write_durably(self.head_path(head.name),
                          json.dumps(stored.to_json(), sort_keys=True).encode())
            return stored

    def delete(self, name: str, expected_version: int) -> None:
        with self._locked():
            current = self.get(name)
            if current.version != expected_version:
                raise VersionConflict(f"{name!r} changed (version {current.version}, "
                                      f"expected {expected_version})")
            os.unlink(self.head_path(name))
            fsync_dir(self.volume_dir(name))

    def acquire(self, name: str, wait_s: float = 0.0) -> Lease:
        head = self.get(name)
        fd = os.open(os.path.join(self.volume_dir(name), "lease"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                raise Conflict(f"volume {name!r} is in use: another writer holds its lease") \
                    from None
        try:
            while True:
                try:
                    head = self.put(head.replace(token=head.token + 1), head.version)
                    break
                except VersionConflict:
                    head = self.get(name)  # changed under us (a CLI resize): retry
        except BaseException:
            os.close(fd)
            raise
        return LocalLease(self, name, fd, head.token)


def new_head(name: str, kind: str, size: int, block_size: int, root: str | None,
             base_size: int, origin: str = "") -> Head:
    return Head(name=check_name(name), kind=kind, size=size, block_size=block_size, root=root,
                base_size=base_size, created=time.time(), origin=origin)

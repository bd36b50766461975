"""The error classes of the whole system.

One root, `PithosError`; subclasses carry the data a caller needs to react. They are translated
to the wire in one table per protocol (HTTP status, NBD errno, CLI exit code), never ad hoc.
"""

from __future__ import annotations

from collections.abc import Iterable


class PithosError(Exception):
    """Root of every error this system raises on purpose."""


class NotFound(PithosError):
    """A named thing does not exist.  For blocks, `hashes` lists every absent hash."""

    def __init__(self, message: str, hashes: Iterable[bytes] = ()) -> None:
        super().__init__(message)
        self.hashes: list[bytes] = list(hashes)


class Conflict(PithosError):
    """The request conflicts with the current state (e.g. deleting a non-empty container)."""


class VersionConflict(Conflict):
    """A compare-and-swap lost: the state changed since the caller read it."""


class PreconditionFailed(Conflict):
    """A conditional write's precondition (If-Match, If-None-Match) does not hold on the
    current state; nothing was written (HTTP 412)."""


class Gone(PithosError):
    """What the caller names existed once and is gone for good (HTTP 410): e.g. a change
    feed cursor of a container since deleted and made again."""


class InvalidArgument(PithosError):
    """Bad input from a caller: a bad range, an oversized block, a malformed name.  Nothing
    was changed."""


class Forbidden(PithosError):
    """The caller is authenticated but may not do this."""


class Unauthenticated(PithosError):
    """An anonymous caller may not do this: logging in may help (HTTP 401)."""


class QuotaExceeded(PithosError):
    """The write would exceed a quota; nothing was committed."""


class IntegrityError(PithosError):
    """Stored data does not match its hash: corruption.  The data is never served."""

    def __init__(self, message: str, hashes: Iterable[bytes] = ()) -> None:
        super().__init__(message)
        self.hashes: list[bytes] = list(hashes)


class NoSpace(PithosError):
    """The backend is out of space; the write did not happen."""


class BackendError(PithosError):
    """A backend failed.  `transient` says whether retrying the same call may succeed."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ChecksumMismatch(InvalidArgument):
    """Data arrived but does not match the checksum the client sent with it; nothing was
    committed."""


class TooLarge(InvalidArgument):
    """A body or a name over its limit."""


class IncompleteBody(InvalidArgument):
    """The client sent less than it announced (or disconnected); nothing was committed."""


class ClientTimeout(IncompleteBody):
    """The client stopped sending its request body: no byte came for the server's client
    timeout.  Nothing was committed."""


# The one-line fix for an install without the rados binding (Debian builds python3-rados for
# its own Python; scripts/ceph links it into the project's venv).
RADOS_MISSING = ("the rados Python module is not installed: as root run "
                 "apt-get install -y python3-rados && scripts/ceph link-venv (docs/ceph.md)")

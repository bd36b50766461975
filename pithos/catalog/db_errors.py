"""Database errors as the project's own: the one place where SQLAlchemy's and the drivers'
exceptions become PithosError subclasses, so that nothing above the catalog sees them.

- a full disk: NoSpace (pithos/catalog/space.py decides what a full disk looks like);
- a constraint violation (a row created or removed concurrently: a unique name taken by a
  writer that committed first, a container deleted under a write into it): Conflict;
- a lost or refused connection, a lock or serialization failure, a server shutting down or
  out of connections: BackendError(transient=True), a retry may succeed;
- anything else (a missing table, a closed or corrupt database, a bad statement):
  BackendError(transient=False).

The messages are one line; the database's own error stays attached as `__cause__`, for logs.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import time
from collections.abc import Callable
from types import TracebackType
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import exc as sa

from pithos.catalog.space import is_disk_full, no_space
from pithos.core.errors import BackendError, Conflict, PithosError

# SQLite's result codes (primary, the low byte of an extended one) that a retry may get past.
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
# PostgreSQL SQLSTATE classes and codes that a retry may get past: connection exceptions,
# transaction rollbacks (serialization failure, deadlock), insufficient resources (too many
# connections; the disk-full 53100 is NoSpace before this is read), operator intervention
# (a server shutting down or starting), lock not available.
PG_TRANSIENT_CLASSES = ("08", "40", "53", "57")
PG_TRANSIENT_CODES = ("55P03",)
# PostgreSQL's verdicts on a whole transaction that a new run of it may get past: deadlock
# detected, serialization failure.
PG_RETRY_WHOLE = ("40P01", "40001")
# How much of the database's message a BackendError carries.
REASON_CHARS = 300


def reason(exc: BaseException) -> str:
    """The first line of the database's own message (not SQLAlchemy's statement dump)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return (lines[0] if lines else type(orig).__name__)[:REASON_CHARS]


def is_transient(exc: BaseException) -> bool:
    """Whether running the same call again may succeed."""
    if getattr(exc, "connection_invalidated", False):
        return True  # SQLAlchemy saw the connection drop
    if isinstance(exc, sa.TimeoutError | sa.DisconnectionError):
        return True  # no connection free in the pool in time
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    state = getattr(orig, "sqlstate", None)
    if state:
        return state[:2] in PG_TRANSIENT_CLASSES or state in PG_TRANSIENT_CODES
    # A PostgreSQL operational error without an SQLSTATE is one of the connection (refused,
    # timed out, closed by the network, turned away at login).
    return type(orig).__module__.startswith("psycopg") and _is_a(orig, "OperationalError")


def _is_a(exc: BaseException, name: str) -> bool:
    """Whether `exc` is an instance of a DBAPI error class of this name (every driver has its
    own: sqlite3.IntegrityError, psycopg.IntegrityError, ...)."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def translate(exc: BaseException) -> PithosError:
    """The project's error for a database error (not a disk-full one: see database_errors)."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(exc, sa.IntegrityError) or _is_a(orig, "IntegrityError"):
        return Conflict("the catalog changed concurrently (a row this write needs was created "
                        "or removed meanwhile); retry")
    if is_transient(exc):
        return BackendError(f"the catalog is unavailable for now: {reason(exc)}",
                            transient=True)
    return BackendError(f"the catalog failed: {reason(exc)}")


class DatabaseErrors:
    """A context manager that raises a database error from its block as the project's error
    (see the module's docstring); PithosError and every other exception pass unchanged.
    Stateless, so one instance serves every block of a catalog (the hot reads enter it on
    every lookup: no generator, no allocation).  `driver_error`: the DBAPI driver's base
    error class, for errors raised by a cursor or a pool used directly (SQLite's is always
    included)."""

    __slots__ = ("_translated",)

    def __init__(self, driver_error: type[BaseException] | tuple[type[BaseException], ...] = ()
                 ) -> None:
        extra = driver_error if isinstance(driver_error, tuple) else (driver_error,)
        self._translated: tuple[type[BaseException], ...] = (
            sa.SQLAlchemyError, sqlite3.Error, *extra)

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Never swallows: an error passes unchanged or is raised as another.
        if exc is not None:
            self.raise_translated(exc)

    def raise_translated(self, exc: BaseException) -> None:
        """Raise the project's error for `exc` if it is a database error; return if it is
        not (the caller re-raises it).  For a hot path's `except Exception` (a try block
        costs nothing until it raises, a `with` a call on each way)."""
        if isinstance(exc, PithosError) or not isinstance(exc, Exception):
            return
        if is_disk_full(exc):
            raise no_space(exc) from exc
        if isinstance(exc, self._translated):
            raise translate(exc) from exc


def database_errors(driver_error: type[BaseException] | tuple[type[BaseException], ...] = ()
                    ) -> DatabaseErrors:
    """A DatabaseErrors: `with database_errors(): ...`."""
    return DatabaseErrors(driver_error)


def is_retriable_transaction(exc: BaseException) -> bool:
    """Whether `exc` (the project's error or the database's) is PostgreSQL's deadlock or
    serialization failure: the transaction was rolled back whole, nothing of it committed."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None) or seen
        if getattr(orig, "sqlstate", None) in PG_RETRY_WHOLE:
            return True
        seen = seen.__cause__
    return False


class _Retries(Protocol):
    write_retries: int


P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=_Retries)


def retried_write(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
    """Run a catalog write again (up to `write_retries` times, after a short random pause)
    when PostgreSQL rolled it back as a deadlock's victim or a serialization failure.  The
    second line of defence behind one lock order for every write (Catalog._count): safe for
    a method that is one transaction and reads everything it decides on inside it, since the
    failed run committed nothing (the error comes from a statement's wait, never from a
    COMMIT: the catalog has no deferred constraints) and the new run decides afresh on what
    is there now (preconditions, the object's current version, quotas), as if the call had
    come a moment later."""

    def write(self: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
        attempt = 0
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if attempt >= self.write_retries or not is_retriable_transaction(exc):
                    raise
            attempt += 1
            # (Monkey-patched in a server worker: the worker's other requests run meanwhile.)
            # The pause lets the transactions it deadlocked with take the rows it let go.
            time.sleep(random.uniform(0.005, 0.02) * attempt)

    functools.update_wrapper(write, method)
    return write

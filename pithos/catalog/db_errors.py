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

import contextlib
import sqlite3
from collections.abc import Iterator

from sqlalchemy import exc as sa

from pithos.catalog.space import disk_full_as_no_space
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


@contextlib.contextmanager
def database_errors(driver_error: type[BaseException] | tuple[type[BaseException], ...] = ()
                    ) -> Iterator[None]:
    """Raise a database error from the block as the project's error (see the module's
    docstring); PithosError and every other exception pass unchanged.  `driver_error`: the
    DBAPI driver's base error class, for errors raised by a cursor used directly (SQLite's
    is always included)."""
    try:
        with disk_full_as_no_space():
            yield
    except PithosError:
        raise
    except (sa.SQLAlchemyError, sqlite3.Error) as exc:
        raise translate(exc) from exc
    except Exception as exc:
        if driver_error and isinstance(exc, driver_error):
            raise translate(exc) from exc
        raise

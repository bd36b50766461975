"""What the catalog needs of writer leases (pithos/catalog/leases.py) to guard a commit
itself: the error of a lost lease and the check a commit makes in its own transaction.  Apart
from leases.py, which builds on the catalog, so that the catalog can import these."""

from __future__ import annotations

from dataclasses import dataclass

from pithos.core.errors import BackendError


class LeaseLost(BackendError):
    """This writer's lease was revoked (its process was taken for dead): its blocks may have
    been collected, so it must not commit.  Retrying the whole write succeeds."""

    def __init__(self, message: str = "the writer's lease was lost; nothing was committed, "
                                      "retry") -> None:
        super().__init__(message, transient=True)


@dataclass(frozen=True)
class LeaseCheck:
    """What a catalog commit checks inside its own transaction, instead of a guard around
    it (PostgreSQL): the lease's advisory lock (`lock_class`, `lease_id`) is taken in shared
    mode until the commit, the lease's row is still there, and the session `pid` of its
    process still holds the lock.  Exactly PostgresLiveness.guard's check, in the commit's
    transaction rather than one of its own around it."""

    lock_class: int
    lease_id: int
    pid: int

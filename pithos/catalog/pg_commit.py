"""A new version committed on PostgreSQL in one round trip (issue 27): one call of
`pithos_put_version` (pithos/catalog/pg_functions.py) in autocommit, so the statement is its
own transaction, durable (synchronous_commit) before its answer comes back.  The Python path
of `Catalog.put_version` took a dozen round trips, each costing the worker and the server CPU
and holding the rows it had locked (the project's holdings, the stat shard, the change
number) for one more round trip of every concurrent writer of the project.

The commit guard is folded into the same statement (`guard`: a leases.LeaseCheck): the
lease's lock taken in shared mode for the transaction, as `PostgresLiveness.guard` took it
in a transaction of its own around the commit, so a revocation and the commit still exclude
each other, with one pooled connection instead of two.

In a server worker, concurrent calls are committed together, in one transaction per batch
(pg_batch.py): one commit and one WAL flush for them all, each request still answered with
its own outcome."""

from __future__ import annotations

import random
import secrets
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, text

from pithos.catalog.db_errors import PG_RETRY_WHOLE
from pithos.catalog.engine import STAT_SHARDS, CatalogEngine
from pithos.catalog.lease_check import LeaseCheck, LeaseLost
from pithos.catalog.pg_batch import (
    PUT_VERSIONS_SQL,
    CommitBatcher,
    ItemFailed,
    batchable,
)
from pithos.catalog.pg_functions import HOLDING_STRIPES
from pithos.catalog.records import Expect
from pithos.core.errors import Conflict, PreconditionFailed, QuotaExceeded
from pithos.core.locks import waits_cooperatively

# Binary parameters, as the batch's (pg_batch.PUT_VERSIONS_SQL).
PUT_VERSION_SQL = (
    "SELECT object_id, object_uuid, version_id FROM pithos_put_version("
    "%(guard_class)b::integer, %(guard_lease)b::integer, %(guard_pid)b::integer, "
    "%(container_id)b::integer, %(name)b::text, %(vid)b::text, %(root)b::bytea, "
    "%(size)b::bigint, %(etag)b::text, %(content_type)b::text, "
    "%(created)b::double precision, %(modified_by)b::text, %(delete_at)b::double precision, "
    "%(dlo_manifest)b::text, %(slo_manifest)b::text, %(inline)b::bytea, "
    "%(meta_domains)b::text[], %(meta_keys)b::text[], %(meta_values)b::text[], "
    "%(grant_account)b::integer, %(grant_hashes)b::bytea[], %(sources)b::integer[], "
    "%(expect_absent)b::boolean, %(expect_match)b::text[], %(now)b::double precision, "
    "%(new_uuid)b::text, %(shard)b::integer, %(stripe)b::integer)")

# The function's own errors (RAISE ... USING ERRCODE), as the project's.
_ERRORS: dict[str, type[Exception]] = {"PT002": Conflict, "PT003": PreconditionFailed,
                                       "PT004": QuotaExceeded}


class PgCommitMixin(CatalogEngine):
    """Catalog.put_version's one-call path on PostgreSQL."""

    # Concurrent one-call commits batched (pg_batch.py): None, in a server worker only (a
    # cooperative offload: where the catalog's lookups are cached too); True, everywhere.
    batch_commits: bool | None = None
    _batcher: CommitBatcher | None = None

    def _commit_batcher(self) -> CommitBatcher | None:
        wanted = self.batch_commits if self.batch_commits is not None else self._info_ttl > 0
        if not wanted or not waits_cooperatively():
            return None
        if self._batcher is None:
            self._batcher = CommitBatcher(self._call_batch, self._call_one,
                                          shards=STAT_SHARDS, stripes=HOLDING_STRIPES)
        return self._batcher

    def _put_version_call(self, container_id: int, name: str, *, root: bytes, size: int,
                          etag: str, content_type: str,
                          meta: Mapping[str, Mapping[str, str]], modified_by: str | None,
                          delete_at: float | None, dlo_manifest: str | None,
                          slo_manifest: str | None, created: float, now: float,
                          grant: tuple[int, Sequence[bytes]] | None, sources: Sequence[int],
                          expect: Expect | None, inline: bytes | None,
                          guard: LeaseCheck | None) -> tuple[int, str, int, str]:
        """(object id, its UUID, version id, vid) of the version committed."""
        vid = secrets.token_hex(16)
        items = [(d, k, v) for d, kv in meta.items() for k, v in kv.items()]
        hashes = sorted(set(grant[1])) if grant is not None else []
        values: dict[str, Any] = {
            "guard_class": guard.lock_class if guard else None,
            "guard_lease": guard.lease_id if guard else None,
            "guard_pid": guard.pid if guard else None,
            "container_id": container_id, "name": name, "vid": vid, "root": root,
            "size": size, "etag": etag, "content_type": content_type, "created": created,
            "modified_by": modified_by, "delete_at": delete_at,
            "dlo_manifest": dlo_manifest, "slo_manifest": slo_manifest, "inline": inline,
            "meta_domains": [i[0] for i in items] or None,
            "meta_keys": [i[1] for i in items] or None,
            "meta_values": [i[2] for i in items] or None,
            "grant_account": grant[0] if grant is not None else None,
            "grant_hashes": hashes or None,
            "sources": sorted(set(sources)) or None,
            "expect_absent": bool(expect is not None and expect.absent),
            "expect_match": (list(expect.match) if expect is not None
                             and expect.match is not None else None),
            "now": now, "new_uuid": str(uuidlib.uuid4()),
            "shard": random.randrange(STAT_SHARDS), "stripe": random.randrange(HOLDING_STRIPES),
        }
        batcher = self._commit_batcher()
        if batcher is not None and batchable(values):
            with self._errors:
                outcome = batcher.commit(values)
            if not isinstance(outcome, ItemFailed):
                return outcome[0], outcome[1], outcome[2], vid
            if outcome.state == "PT001":
                raise LeaseLost()
            if outcome.state in _ERRORS:
                raise _ERRORS[outcome.state](outcome.message)
            # Anything else (a deadlock with another batch, an error of the database's):
            # rolled back alone in the batch, run again alone, which commits or raises as
            # the one call does.
        try:
            with self._errors:
                row = self._call_autocommit(PUT_VERSION_SQL, values)
        except Exception as exc:
            state = _sqlstate(exc)
            if state == "PT001":
                raise LeaseLost() from exc
            if state in _ERRORS:
                raise _ERRORS[state](_message(exc)) from exc
            raise
        return int(row[0]), str(row[1]), int(row[2]), vid

    def _check_lease(self, conn: Connection, guard: LeaseCheck) -> None:
        """put_version's `guard` on its Python path (a copy or a move on PostgreSQL): the
        same check as the function's, first in the commit's transaction."""
        alive = conn.execute(text(
            "SELECT pg_try_advisory_xact_lock_shared(:c, :i) AND EXISTS "
            "(SELECT 1 FROM upload_leases WHERE id = :i) AND EXISTS "
            "(SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = :c "
            " AND objid = :i AND pid = :pid AND mode = 'ShareLock' AND granted)"),
            {"c": guard.lock_class, "i": guard.lease_id, "pid": guard.pid}).scalar()
        if not alive:
            raise LeaseLost()

    def _call_one(self, values: Mapping[str, Any]) -> tuple[int, str, int] | ItemFailed:
        """A batch of one (pg_batch.CommitBatcher's `run_one`): the one call, the
        function's error as the batch function would answer it."""
        try:
            with self._errors:
                row = self._call_autocommit(PUT_VERSION_SQL, values)
        except Exception as exc:
            state = _sqlstate(exc)
            # The function's own errors, and a deadlock's or a serialization failure's
            # rollback: the item's answer.  Anything else (a lost connection: whether it
            # committed is unknown) fails the call, as the one call's does.
            if state is None or not (state.startswith("PT") or state in PG_RETRY_WHOLE):
                raise
            return ItemFailed(state, _message(exc))
        return int(row[0]), str(row[1]), int(row[2])

    def _call_batch(self, values: Mapping[str, Any]) -> list[Any]:
        """`pithos_put_versions`' rows (pg_batch.CommitBatcher's `run`).  A deadlock or a
        serialization failure of the call as a whole (its projects' charges, made after its
        items: migration 16) rolled all of it back, so each item is answered with that
        error and runs again alone (pg_commit's `_put_version_call`), as an item that met
        one inside the batch does."""
        try:
            with self._errors:
                return list(self._call_autocommit(PUT_VERSIONS_SQL, values, every=True))
        except Exception as exc:
            state = _sqlstate(exc)
            if state not in PG_RETRY_WHOLE:
                raise
            message = _message(exc)
            return [(n, None, None, None, state, message)
                    for n in range(1, len(values["name"]) + 1)]

    def _call_autocommit(self, sql: str, values: Mapping[str, Any], every: bool = False
                         ) -> Any:
        """The one row of `sql` (`every`: all its rows), run alone as its own transaction on
        a pooled connection of the write engine (pinged when it sat idle, as any write's)."""
        conn = self.engine.raw_connection()
        try:
            dbapi: Any = conn.dbapi_connection
            dbapi.autocommit = True
            try:
                cur = dbapi.cursor()
                try:
                    cur.execute(sql, values)
                    return cur.fetchall() if every else cur.fetchone()
                finally:
                    cur.close()
            except BaseException as exc:
                # Dead, or left mid-statement by a request killed while it waited (a
                # worker's shutdown kills its greenlets): not back into the pool.
                if dbapi.closed or not isinstance(exc, Exception):
                    conn.invalidate()
                raise
            finally:
                if not dbapi.closed:
                    dbapi.autocommit = False
        finally:
            conn.close()


def _sqlstate(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None) or seen
        state = getattr(orig, "sqlstate", None)
        if state:
            return str(state)
        seen = seen.__cause__
    return None


def _message(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        diag = getattr(getattr(seen, "orig", None) or seen, "diag", None)
        if diag is not None and diag.message_primary:
            return str(diag.message_primary)
        seen = seen.__cause__
    return str(exc)

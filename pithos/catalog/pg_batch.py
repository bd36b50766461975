"""New versions of concurrent PUTs committed together on PostgreSQL (issue 27).

A small PUT's commit is one call of `pithos_put_version` (pg_commit.py), its own transaction:
one commit, one WAL flush, one round trip and one pooled connection per PUT, and about half
of a small PUT's CPU was the PostgreSQL backend running it.  A worker's concurrent commits are
gathered here instead (group commit): the first to come calls `pithos_put_versions`
(pg_functions.py, migration 13) with itself alone; those that come while that call runs
wait, and when it returns the first of them calls it for all of them (up to MAX_ITEMS), and
so on.  Nothing waits for company: a commit that finds none under way goes at once, so an
idle server's latency is unchanged, and under load a batch is what queued during the last.

What each request keeps:

- Its own outcome.  Each item runs `pithos_put_version` unchanged in a subtransaction of
  its own (a PL/pgSQL block with an EXCEPTION clause): one that raises (its lease lost, its
  precondition or a quota failed, a deadlock with another batch) is rolled back alone and
  answered with its SQLSTATE and message, and the others go on; an item that comes later in
  the batch sees the earlier ones as committed (a quota is charged in order: exact).  A
  request is answered only once the batch's transaction has committed; if the batch's call
  fails, every request of it fails and none is acknowledged (whether a call whose connection
  died during its commit committed is unknown, as for a single call's).
- Its commit guard.  Each item's lease check is the first statement of its subtransaction,
  as in the one-call commit: the lease's lock taken in shared mode is held to the batch's
  commit (an advisory lock taken in a subtransaction that succeeded is the transaction's),
  so no collector revokes the lease between the check and the commit.  A lease lost before
  the batch's call fails that item alone (PT001: LeaseLost).
- Write ordering: a request joins a batch only from `put_version`, after its blocks and
  map are durable, as before.

An item that failed for any other reason than the project's own errors (PT001-PT004) runs
again alone, as the one-call commit (its subtransaction committed nothing): a deadlock
between two batches (each holds its earlier items' rows to its commit; the items are sorted
by container and name so that two batches lock most rows in one order, but one object
written in both, two limited projects' holdings taken in opposite container orders, or two
quota'd containers' rows can still close a cycle, broken by PostgreSQL after its
deadlock_timeout; unlimited projects' stripes are charged once per project after the items,
in project order: migration 16) then succeeds, and any other error is raised by that call as
the one-call commit raises it.

Only where a waiter can wait cooperatively (pithos.core.locks.waits_cooperatively): not on an
OS thread of a gevent worker's pool, whose wait on the hub's primitives could lose its
wakeup (such a commit goes alone).  At
most MAX_ITEMS items a batch: past 64 subtransactions in one transaction PostgreSQL's
snapshots overflow their cache of subtransaction ids and every backend's snapshots cost
more."""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pithos.core.errors import BackendError
from pithos.core.locks import native_lock

MAX_ITEMS = 32

# Parameters in binary (%b): in text, each array was parsed by the server's array_in
# (~9% of the backends' CPU under radosgw_bench's small PUTs) and each inline body dumped
# to hex by the worker, twice its bytes.  (psycopg sends an array of NULLs only as text.)
PUT_VERSIONS_SQL = (
    "SELECT item, object_id, object_uuid, version_id, err_state, err_message "
    "FROM pithos_put_versions("
    "%(guard_class)b::integer[], %(guard_lease)b::integer[], %(guard_pid)b::integer[], "
    "%(container_id)b::integer[], %(name)b::text[], %(vid)b::text[], %(root)b::bytea[], "
    "%(size)b::bigint[], %(etag)b::text[], %(content_type)b::text[], "
    "%(created)b::double precision[], %(modified_by)b::text[], "
    "%(delete_at)b::double precision[], %(dlo_manifest)b::text[], "
    "%(slo_manifest)b::text[], %(inline)b::bytea[], %(meta_item)b::integer[], "
    "%(meta_domains)b::text[], %(meta_keys)b::text[], %(meta_values)b::text[], "
    "%(grant_account)b::integer[], %(grant_item)b::integer[], %(grant_hashes)b::bytea[], "
    "%(source_item)b::integer[], %(sources)b::integer[], %(expect_absent)b::boolean[], "
    "%(match_item)b::integer[], %(expect_match)b::text[], %(now)b::double precision[], "
    "%(new_uuid)b::text[], %(shard)b::integer, %(stripe)b::integer)")

# One value per item, straight from the one-call commit's parameters.
_SCALARS = ("guard_class", "guard_lease", "guard_pid", "container_id", "name", "vid", "root",
            "size", "etag", "content_type", "created", "modified_by", "delete_at",
            "dlo_manifest", "slo_manifest", "inline", "grant_account", "expect_absent",
            "now", "new_uuid")


class ItemFailed:
    """An item's error inside its batch: its SQLSTATE and the database's message."""

    __slots__ = ("message", "state")

    def __init__(self, state: str, message: str) -> None:
        self.state = state
        self.message = message


Outcome = tuple[int, str, int] | ItemFailed


def batchable(values: dict[str, Any]) -> bool:
    """Whether one-call parameters can join a batch: an If-Match list that is empty (which
    no ETag matches) has no element to tag with its item, so it goes alone."""
    match = values.get("expect_match")
    return match is None or len(match) > 0


def batch_parameters(items: Sequence[dict[str, Any]], shard: int, stripe: int
                     ) -> dict[str, Any]:
    """`pithos_put_versions`' parameters for the one-call parameters of `items`."""
    out: dict[str, Any] = {key: [v[key] for v in items] for key in _SCALARS}
    flat: dict[str, list[Any]] = {key: [] for key in (
        "meta_item", "meta_domains", "meta_keys", "meta_values", "grant_item",
        "grant_hashes", "source_item", "sources", "match_item", "expect_match")}
    for n, v in enumerate(items, 1):
        for key in ("meta_domains", "meta_keys", "meta_values"):
            flat[key].extend(v[key] or ())
        flat["meta_item"].extend([n] * len(v["meta_keys"] or ()))
        for item_key, key in (("grant_item", "grant_hashes"), ("source_item", "sources"),
                              ("match_item", "expect_match")):
            flat[key].extend(v[key] or ())
            flat[item_key].extend([n] * len(v[key] or ()))
    out.update({key: (vals or None) for key, vals in flat.items()})
    out["shard"], out["stripe"] = shard, stripe
    return out


class _Pending:
    __slots__ = ("done", "lead", "outcome", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        # (Looked up now: in a server worker, after gevent's patch, the hub's Event.)
        self.done = threading.Event()
        self.lead = False
        self.outcome: Outcome | BaseException | None = None


class CommitBatcher:
    """The group commit of one catalog in one process.  `run(parameters)` calls
    `pithos_put_versions` and returns its rows; `run_one(values)` commits a batch of one
    with the one-call commit's parameters (`pithos_put_version`, without the batch's
    subtransaction and arrays: at a few clients a worker's batches are mostly of one, which
    cost ~10% more CPU per PUT than the one call), its error as an ItemFailed."""

    def __init__(self, run: Callable[[dict[str, Any]], list[Any]],
                 run_one: Callable[[dict[str, Any]], Outcome],
                 max_items: int = MAX_ITEMS, shards: int = 8, stripes: int = 32) -> None:
        self._run = run
        self._run_one = run_one
        self.max_items = max_items
        self._shards = shards
        self._stripes = stripes
        # Never held across a wait (the critical sections below only move items), so a
        # native lock is right in a gevent worker.
        self._lock = native_lock()
        self._queue: list[_Pending] = []
        self._running = False
        self.batches = 0  # (counted for tests and measurements)
        self.items = 0

    def queued(self) -> int:
        """Items waiting for the next batch."""
        with self._lock:
            return len(self._queue)

    def commit(self, values: dict[str, Any]) -> Outcome:
        """The item's (object id, uuid, version id) once its batch committed, or ItemFailed;
        raises what the batch's call raised (nothing of the batch committed)."""
        mine = _Pending(values)
        with self._lock:
            self._queue.append(mine)
            lead = not self._running
            self._running = True
        if not lead:
            try:
                mine.done.wait()
            except BaseException:  # (a request killed while it waits: a timeout)
                with self._lock:
                    lead = mine.lead
                    if not lead and mine in self._queue:
                        self._queue.remove(mine)  # never committed: nothing to answer
                if lead:  # the lead was handed to it: the others must not wait forever
                    self._lead()
                raise
            lead = mine.lead
        if lead:
            self._lead()
        outcome = mine.outcome
        if isinstance(outcome, BaseException):
            # (Each its own instance: the batch's requests raise it side by side.)
            raise copy.copy(outcome) from outcome
        assert outcome is not None
        return outcome

    def _lead(self) -> None:
        """Commit what is queued (this caller's item first among them), then hand the lead
        to the first that queued meanwhile."""
        with self._lock:
            batch, self._queue = (self._queue[:self.max_items],
                                  self._queue[self.max_items:])
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._queue:
                    nxt: _Pending | None = self._queue[0]
                    nxt.lead = True  # type: ignore[union-attr]
                else:
                    nxt = None
                    self._running = False
            for p in batch:
                p.done.set()
            if nxt is not None:
                nxt.done.set()

    def _commit(self, batch: list[_Pending]) -> None:
        # In one order of rows for every batch (see the module's docstring).
        ordered = sorted(batch, key=lambda p: (p.values["container_id"], p.values["name"]))
        try:
            if len(batch) == 1:
                batch[0].outcome = self._run_one(batch[0].values)
                self.batches += 1
                self.items += 1
                return
            rows = self._run(batch_parameters([p.values for p in ordered],
                                              random.randrange(self._shards),
                                              random.randrange(self._stripes)))
        except Exception as exc:  # (each request raises it: none acknowledged)
            for p in batch:
                p.outcome = exc
            return
        except BaseException:
            # The leading request's greenlet was killed mid-call (a worker's shutdown): the
            # others' requests fail with an error of their own, not its exit; the batch may
            # or may not have committed, and none of it is acknowledged.
            for p in batch:
                p.outcome = BackendError("the commit this write was batched with was "
                                         "interrupted: retry", transient=True)
            raise
        self.batches += 1
        self.items += len(batch)
        for row in rows:
            p = ordered[int(row[0]) - 1]
            if row[4] is not None:
                p.outcome = ItemFailed(str(row[4]), str(row[5]))
            else:
                p.outcome = (int(row[1]), str(row[2]), int(row[3]))
        for p in batch:
            if p.outcome is None:  # (every item has its row: a function that changed)
                p.outcome = RuntimeError("pithos_put_versions left an item unanswered")

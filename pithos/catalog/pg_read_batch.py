"""Concurrent look-ups of objects' current versions sharing one statement on PostgreSQL
(issue 27).

A small GET's catalog work is one statement, the current version of the object with its
metadata and public token (`hot_statements.OBJECT`).  Each cost the worker a send(2) and a
wake-up and the PostgreSQL backend a whole statement (its protocol messages, executor
start-up and shutdown, its own send): under 32 clients about a third of a worker's samples
went to that one statement.  A worker's concurrent look-ups are gathered here instead, as
its commits are (pg_batch.py): a look-up that finds fewer than MAX_IN_FLIGHT statements
under way goes at once, alone, with the one-object statement; those that come while they
run wait, and when one returns the first of them runs one statement for all of them (up to
MAX_ITEMS: `OBJECTS`, the same look-up for each of an unnest of the items' keys, each row
tagged with its item), and so on.  Nothing waits for company, so an idle server's latency
is unchanged.  The read connections' statements are planned once (engine._generic_plans):
`OBJECTS` planned anew for each run cost the server more than the statements it saved.

What each request keeps:

- Its own answer.  An item is its container's id, the object's name and its request's
  clock (`now`, against which a version's X-Delete-At is checked); container ids are
  unique across accounts, so another account's object of the same name is another key,
  and authorization was decided before the look-up, as without the batch.  An item with no
  row (no such object, deleted, expired) is None, as the one statement's no row.
- Freshness.  A look-up joins only a statement sent after it came: one that comes while a
  statement is in flight waits for the next one, never the one under way, whose snapshot
  may predate it.  So a version committed (and acknowledged) before a GET came is the one
  it sees, as with a statement of its own; a batch's statement is one snapshot, as each
  single statement was.
- Its own error.  If a batch's statement fails (a name the server refuses, a connection
  lost), each of its items runs again alone (a read is safe to repeat), so a request gets
  the error its own statement gives, or its answer.

Only where a waiter can wait cooperatively (pithos.core.locks.waits_cooperatively), as for
the commits: a look-up on a pool thread of a gevent worker goes alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    Float,
    Integer,
    Text,
    and_,
    bindparam,
    column,
    func,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY

from pithos.catalog import hot_statements as h
from pithos.catalog import schema as s
from pithos.catalog.engine import CatalogEngine
from pithos.core.locks import native_lock, waits_cooperatively

# Statements past this size cost the backend more per item than they save (each item is an
# index probe of objects and versions), and under radosgw_bench's 32 clients a worker has
# about 16 GETs in flight.
MAX_ITEMS = 64
# Statements a worker's look-ups have in flight before the next waits for company: with
# one, a worker under 8 clients (4 GETs in flight) sent its look-ups one after another, each
# waiting for the last; with two, a batch forms only where there are more look-ups than that.
MAX_IN_FLIGHT = 2

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

_o, _v, _vm, _p = s.objects, s.versions, s.version_meta, s.public_links
_keys = (func.unnest(bindparam("container_ids", type_=ARRAY(Integer)),
                     bindparam("names", type_=ARRAY(Text)),
                     bindparam("nows", type_=ARRAY(Float)))
         .table_valued(column("container_id", Integer), column("name", Text),
                       column("now", Float), with_ordinality="item")
         .render_derived().alias("k"))

# Each item's object and current version found by its own probes of their indexes: a
# LATERAL subquery with a LIMIT (the key is unique) is never flattened into a join, which a
# prepared statement's generic plan (planned for ten items) made a hash join over a scan of
# every version.
_found = (select(*(col.label(f"c{i}") for i, col in enumerate(h._VERSION_COLUMNS)))
          .select_from(_o.join(_v, _v.c.id == _o.c.current_id))
          .where(and_(_o.c.container_id == _keys.c.container_id, _o.c.name == _keys.c.name,
                      _v.c.deleted.is_(False),
                      or_(_v.c.delete_at.is_(None), _v.c.delete_at > _keys.c.now)))
          .limit(literal_column("1")).lateral("found"))
_VERSION_ID = _found.c[f"c{h._VERSION_COLUMNS.index(_v.c.id)}"]
_OBJECT_ID = _found.c[f"c{h._VERSION_COLUMNS.index(_o.c.id)}"]

# Its metadata and public token, by index probes too (OFFSET 0 keeps the subquery
# whole, as the LIMIT does).
_meta = (select(*h._META_COLUMNS).where(_vm.c.version_id == _VERSION_ID)
         .offset(literal_column("0")).lateral("meta"))
_token = (select(_p.c.token).where(_p.c.object_id == _OBJECT_ID)
          .limit(literal_column("1")).lateral("public"))

# hot_statements.OBJECT for many objects: its columns, then the item (1-based) each row
# answers, its rows in item order (an item's metadata in OBJECT's order).
OBJECTS = (select(*_found.c, *_meta.c, _token.c.token, _keys.c.item)
           .select_from(_keys.join(_found, true()).outerjoin(_meta, true())
                        .outerjoin(_token, true()))
           .order_by(_keys.c.item, _meta.c.domain, _meta.c.key))


def rows_by_item(rows: Sequence[Sequence[Any]], n: int) -> list[list[Sequence[Any]]]:
    """OBJECTS' rows split by item: a list per item (empty: no such object)."""
    out: list[list[Sequence[Any]]] = [[] for _ in range(n)]
    for row in rows:
        out[int(row[-1]) - 1].append(row)
    return out


class _Alone:
    """An item's outcome when its batch's statement failed: it runs again by itself."""


_ALONE = _Alone()


class _Pending(Generic[K]):
    __slots__ = ("done", "key", "lead", "outcome")

    def __init__(self, key: K) -> None:
        self.key = key
        # (Looked up now: in a server worker, after gevent's patch, the hub's Event.)
        self.done = threading.Event()
        self.lead = False
        self.outcome: Any = None


class LookupBatcher(Generic[K, R]):
    """Look-ups that come while `max_in_flight` statements are in flight share the next
    statement (the module's docstring).  `run_one(key)` answers one key; `run_many(keys)`
    answers several, one answer per key in their order."""

    def __init__(self, run_one: Callable[[K], R], run_many: Callable[[list[K]], list[R]],
                 max_items: int = MAX_ITEMS, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._run_one = run_one
        self._run_many = run_many
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        # Never held across a wait (the critical sections only move items), so a native
        # lock is right in a gevent worker.
        self._lock = native_lock()
        self._queue: list[_Pending[K]] = []
        self._in_flight = 0
        self.statements = 0  # (counted for tests and measurements)
        self.items = 0

    def queued(self) -> int:
        """Look-ups waiting for the next statement."""
        with self._lock:
            return len(self._queue)

    def fetch(self, key: K) -> R:
        mine: _Pending[K] = _Pending(key)
        with self._lock:
            alone = self._in_flight < self.max_in_flight
            if alone:
                self._in_flight += 1
            else:
                self._queue.append(mine)
        if alone:
            self._run([mine])
        else:
            try:
                mine.done.wait()
            except BaseException:  # (a request killed while it waits: a timeout)
                self._abandon(mine)
                raise
            if mine.lead:
                with self._lock:  # (this caller first among them)
                    batch, self._queue = (self._queue[:self.max_items],
                                          self._queue[self.max_items:])
                self._run(batch)
        outcome = mine.outcome
        if outcome is _ALONE:
            return self._run_one(key)
        if isinstance(outcome, BaseException):
            raise outcome  # (this request's own statement's error: a batch of one)
        return outcome  # type: ignore[no-any-return]

    def _abandon(self, mine: _Pending[K]) -> None:
        """A waiter leaves: out of the queue, and the lead passed on if it had it."""
        with self._lock:
            if mine in self._queue:
                self._queue.remove(mine)
            nxt = None
            if mine.lead:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                else:
                    self._in_flight -= 1
        if nxt is not None:
            nxt.done.set()

    def _run(self, batch: list[_Pending[K]]) -> None:
        """Answer `batch` with one statement, then hand this statement's place to the first
        that queued meanwhile, whose statement is thus sent after it came."""
        try:
            self._answer(batch)
        finally:
            with self._lock:
                nxt: _Pending[K] | None = None
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                else:
                    self._in_flight -= 1
            for p in batch:
                p.done.set()
            if nxt is not None:
                nxt.done.set()

    def _answer(self, batch: list[_Pending[K]]) -> None:
        self.statements += 1
        self.items += len(batch)
        if len(batch) == 1:
            try:
                batch[0].outcome = self._run_one(batch[0].key)
            except Exception as exc:
                batch[0].outcome = exc
            return
        try:
            answers = self._run_many([p.key for p in batch])
        except Exception:
            for p in batch:
                p.outcome = _ALONE
            return
        except BaseException:
            # The leading request's greenlet was killed mid-statement (a worker's
            # shutdown): the others run their own.
            for p in batch:
                p.outcome = _ALONE
            raise
        for p, answer in zip(batch, answers, strict=True):
            p.outcome = answer


ObjectKey = tuple[int, str, float]


class PgReadBatchMixin(CatalogEngine):
    """The current version's rows of `Catalog.object_and_public_token`, batched on
    PostgreSQL in a server worker."""

    # None: batched in a server worker only (a cooperative offload, as the commits);
    # True: everywhere (tests); False: never.
    batch_reads: bool | None = None
    read_batch_in_flight = MAX_IN_FLIGHT
    _read_batcher: LookupBatcher[ObjectKey, list[Any]] | None = None

    def _object_rows(self, container_id: int, name: str, now: float | None) -> list[Any]:
        """hot_statements.OBJECT's rows for one object."""
        now = time.time() if now is None else now
        if not self.is_sqlite:
            wanted = self.batch_reads if self.batch_reads is not None else self._info_ttl > 0
            if wanted and waits_cooperatively():
                batcher = self._read_batcher
                if batcher is None:
                    batcher = self._read_batcher = LookupBatcher(
                        self._one_object, self._many_objects,
                        max_in_flight=self.read_batch_in_flight)
                return batcher.fetch((container_id, name, now))
        return self._fetch(h.OBJECT, container_id=container_id, name=name, now=now)

    def _one_object(self, key: ObjectKey) -> list[Any]:
        return self._fetch(h.OBJECT, container_id=key[0], name=key[1], now=key[2])

    def _many_objects(self, keys: list[ObjectKey]) -> list[list[Any]]:
        rows = self._fetch(OBJECTS, container_ids=[k[0] for k in keys],
                           names=[k[1] for k in keys], nows=[k[2] for k in keys])
        return rows_by_item(rows, len(keys))

"""The MD5 of a request body, computed behind its arrival.

MD5 is the slowest step of a large PUT (one stream runs at ~600-700 MB/s, below what the
network and BLAKE3 deliver) and cannot be split.  So it must never hold up the rest: the body's
pieces are queued and hashed in order on the executor, up to `backlog` pieces behind the
reader, while the reader goes on receiving, hashing and writing blocks.  Then the block's sync
and the map pages' write overlap the MD5's tail instead of following it.

Under many concurrent uploads, streams share the vector lanes of the multi-buffer MD5
(pithos.core.md5): their pieces are hashed in batches, one piece of each stream side by side.
Which streams do, and when their batches start, is a `LanePolicy`: the entry point makes one per
server worker and hands it to the object service, which gives it to every upload's digest.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from pithos.core import md5 as md5_impl

# LanePolicy's defaults.  The multi-buffer MD5 pays off only with company: a lone stream goes
# faster through OpenSSL's.  An upload of at least LANES_MIN_BYTES (or of unknown length) that
# starts while at least LANES_FROM others are hashing uses it; any other is hashed alone
# (md5.single).
LANES_FROM = 2
LANES_MIN_BYTES = 1 << 20
# Multi-buffer digests hold their pieces back until LANES_GROUP of them (or every lane digest
# there is, if fewer) have pieces and no hashing running; then one task hashes them side by
# side, as many rounds as the shortest of them has pieces, so that every batch is as wide as
# the group (the rest waits for the next group).  A digest that cannot wait, holding
# LANES_PATIENCE pieces or asked for its result, starts a group at once with whichever others
# are ready, and they hash beside it for as many rounds as it needs, no more.  Uploads send
# their pieces far apart (a 1 MiB piece hashes in about a millisecond, the next arrives tens
# of milliseconds later under load), so without holding back a stream would mostly be alone.
LANES_GROUP = 8
LANES_PATIENCE = 6

# Pieces under this size are hashed on the caller's thread when nothing is queued: a thread
# hand-off costs more than their MD5.
INLINE_BYTES = 65536


def _nothing() -> None:
    return None


class _Starting:
    """The drain of a group while its submit is under way (see _start_group): not done, and
    its result waited for once the submit has given the real future."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self.future: Future[None] | None = None

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def result(self) -> None:
        while self.future is None:
            # Wait as the submit under way does, for a thread of the pool (other greenlets
            # run meanwhile, the submitting one among them).
            self._executor.submit(_nothing).result()
        return self.future.result()


@dataclass(eq=False, slots=True)
class LanePolicy:
    """When uploads' MD5s share the multi-buffer lanes, and the digests that do: the
    `StreamDigest`s given the same policy count each other as company (`lanes_from`,
    `min_bytes`) and are grouped together (`group`, `patience`); see LANES_FROM and
    LANES_GROUP for what each means.

    The entry point makes one per event loop (a server worker: `build_services`) and passes it
    down (ObjectService); every digest of one policy must be created and driven from that
    loop's thread, so its bookkeeping needs no lock.  Digests of different policies never
    share lanes."""

    lanes_from: int = LANES_FROM
    min_bytes: int = LANES_MIN_BYTES
    group: int = LANES_GROUP
    patience: int = LANES_PATIENCE
    active: int = field(default=0, init=False)  # digests of this policy still hashing
    lane_digests: set[StreamDigest] = field(default_factory=set, init=False)  # multi-buffer

    def ready(self) -> list[StreamDigest]:
        """The lane digests with pieces queued and no hashing running."""
        return [d for d in self.lane_digests if d._queue and d._idle()]

    def start_if_grouped(self, ready: list[StreamDigest]) -> bool:
        """Start `ready` as one group if they are a whole one (`group`, or every lane digest
        there is, if fewer)."""
        if ready and len(ready) >= min(self.group, len(self.lane_digests)):
            StreamDigest._start_group(ready, None)
            return True
        return False

    def start_whole_group(self) -> bool:
        """`start_if_grouped(self.ready())`, giving up at the first digest that is not ready
        once a whole group can no longer be found (each piece of every upload asks: most
        often one of the group is still waiting for its first piece, or hashing)."""
        digests = self.lane_digests
        spare = len(digests) - min(self.group, len(digests))  # digests a group may lack
        ready = []
        for digest in digests:
            if digest._queue and digest._idle():
                ready.append(digest)
            elif spare:
                spare -= 1
            else:
                return False
        return self.start_if_grouped(ready)


class StreamDigest:
    """`update` pieces in order; `hexdigest` once all are given.

    One drain task at a time per digest runs on the executor and hashes its queue front to
    back; a new one is started only when the previous is done, so order holds without a lock
    (deque's append and popleft are atomic).  A piece queued just as a drain ends is picked up
    by the next `update` or by `hexdigest`.  The queue is bounded: past `backlog` pieces,
    `update` waits for the drain.

    Multi-buffer digests wait for company (`LANES_GROUP`, `LANES_PATIENCE`); then one drain
    task serves a group of them, a piece of each per batch.  Whether to start one is decided
    whenever a digest is given a piece, finishes or leaves, over every lane digest ready then
    (pieces queued, no drain running), so one whose drain ended joins the next group without
    waiting for its own next piece.  That bookkeeping is the `LanePolicy`'s, given by the
    object service; a digest without one is hashed alone (as a lone upload is)."""

    def __init__(self, executor: Executor | None, backlog: int = 8,
                 length: int | None = None, lanes: LanePolicy | None = None) -> None:
        self._executor = executor
        self._backlog = max(1, backlog)
        self._policy = lanes
        # Whether this digest may hash in lanes: it does from the start if it has company,
        # else it joins them at a later piece once others are hashing (see `update`).
        self._may_lane = (lanes is not None and executor is not None and md5_impl.MULTI_BUFFER
                          and (length is None or length >= lanes.min_bytes))
        self._lanes = self._may_lane and lanes is not None and lanes.active >= lanes.lanes_from
        self._md5: md5_impl.Md5 = md5_impl.new() if self._may_lane else md5_impl.single()
        self._counted = lanes is not None
        if lanes is not None:
            lanes.active += 1
            if self._lanes:
                lanes.lane_digests.add(self)
        self._queue: deque[bytes | bytearray | memoryview] = deque()
        self._pending: Future[None] | _Starting | None = None
        self._error: BaseException | None = None  # of a batch, raised by hexdigest

    @property
    def multi_buffer(self) -> bool:
        """Whether this digest hashes in vector lanes beside others (else alone)."""
        return self._lanes

    def _drain(self) -> None:
        queue, md5 = self._queue, self._md5
        while queue:
            md5.update(queue.popleft())

    @staticmethod
    def _drain_batches(group: list[StreamDigest], counts: list[int]) -> None:
        """Hash `counts[i]` queued pieces of `group[i]`, a piece of each digest per batch."""
        while True:
            batch = []
            for i, digest in enumerate(group):
                if counts[i]:
                    counts[i] -= 1
                    try:
                        batch.append((digest, digest._queue.popleft()))
                    except IndexError:  # abandoned meanwhile: nothing more of it to hash
                        counts[i] = 0
            if not batch:
                return
            try:
                md5_impl.update_many([d._md5 for d, _ in batch], [piece for _, piece in batch])
            except Exception:  # (nothing was hashed) find whose piece it is
                for digest, piece in batch:
                    try:
                        digest._md5.update(piece)
                    except Exception as exc:
                        digest._error = exc
                        digest._queue.clear()
                        counts[group.index(digest)] = 0

    def _pending_done(self) -> bool:
        """Whether no drain is running (an error of the last one is raised here)."""
        pending = self._pending
        if pending is None:
            return True
        if not pending.done():
            return False
        self._pending = None
        pending.result()
        return True

    def _wait(self) -> None:
        # While a greenlet waits here, others run and may put this digest in a new group once
        # the drain waited for has ended: then wait for that one too.  (So the drain is cleared
        # only once it has ended, and only if it is still this digest's.)
        while (pending := self._pending) is not None:
            try:
                pending.result()
            finally:
                if pending.done() and self._pending is pending:
                    self._pending = None

    def _start(self) -> None:
        assert self._executor is not None  # (only then is anything queued)
        self._pending = self._executor.submit(self._drain)

    def _idle(self) -> bool:
        pending = self._pending
        return pending is None or pending.done()

    @staticmethod
    def _start_group(group: list[StreamDigest], urgent: StreamDigest | None) -> None:
        """One task hashing `group` side by side (see LANES_GROUP): all of `urgent`'s pieces
        if given, else as many rounds as every member has pieces for."""
        if not group:
            return
        rounds = len(urgent._queue) if urgent is not None else min(len(d._queue) for d in group)
        counts = [len(d._queue) if d is urgent else min(len(d._queue), rounds) for d in group]
        executor = group[0]._executor
        assert executor is not None
        # Busy before the submit: under gevent it may wait for a free thread of the pool
        # while other greenlets run, which would otherwise find these digests idle and start
        # a second drain of them beside this one (pieces hashed out of order: wrong ETags).
        starting = _Starting(executor)
        for digest in group:
            digest._pending = starting
        try:
            starting.future = executor.submit(StreamDigest._drain_batches, group, counts)
        except BaseException as exc:
            starting.future = Future()
            starting.future.set_exception(exc)
            raise

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._executor is None:
            self._md5.update(data)
            return
        idle = self._pending_done()
        if idle and not self._lanes and self._may_lane:
            self._join_lanes()
        if idle and not self._queue and len(data) < INLINE_BYTES and not self._lanes:
            self._md5.update(data)
            return
        self._queue.append(data)
        if not idle and len(self._queue) > self._backlog:
            self._wait()
            idle = True
        if not idle:
            return
        if not self._lanes:
            self._start()
            return
        policy = self._policy
        assert policy is not None  # (a lane digest has one)
        if policy.start_whole_group() or len(self._queue) < policy.patience:
            return
        StreamDigest._start_group(policy.ready(), self)

    def _join_lanes(self) -> None:
        """Hash in lanes from now on if others of the policy are hashing: an upload that
        began alone (or beside one other) would otherwise hash every piece alone, at about
        four times the cost of a piece in a batch of eight, however many uploads came after
        it (at 16 clients over two workers, 6-20% of the pieces).  Called with no drain
        running, so the queue's order holds: its pieces go to the next group."""
        policy = self._policy
        assert policy is not None  # (only a digest with one may lane)
        if policy.active - 1 >= policy.lanes_from:
            self._lanes = True
            policy.lane_digests.add(self)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            policy = self._policy
            assert policy is not None  # (only a digest with one is counted)
            policy.active -= 1
            if self._lanes:  # one fewer to wait for: the others may now be a whole group
                policy.lane_digests.discard(self)
                policy.start_if_grouped(policy.ready())

    def hexdigest(self) -> str:
        try:
            while True:
                self._wait()
                if self._error is not None:
                    raise self._error
                if not self._queue:
                    return self._md5.hexdigest()
                if self._lanes:  # (it is among the ready: idle, with pieces)
                    assert self._policy is not None
                    StreamDigest._start_group(self._policy.ready(), self)
                else:
                    self._start()
        finally:
            self._uncount()

    def abandon(self) -> None:
        """Drop what is queued and let a running drain end (an upload that failed)."""
        self._queue.clear()
        self._uncount()
        with contextlib.suppress(BaseException):  # the upload's own error is what counts
            self._wait()

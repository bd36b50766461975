"""StreamDigest (pithos/objects/digest.py): the MD5 of a body computed behind its reads, on an
executor, in order, with a bounded backlog; multi-buffer digests chosen only with company."""

import hashlib
import os
import random
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import gevent
import pytest
from gevent.threadpool import ThreadPoolExecutor as GeventPool
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.core import md5 as md5_impl
from pithos.objects.digest import LanePolicy, StreamDigest


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.fixture
def lanes():
    """The test's own lane policy (a server worker's, made by the entry point); every digest
    of it must have finished or been abandoned by the end."""
    policy = LanePolicy()
    yield policy
    assert policy.active == 0
    assert not policy.lane_digests


@pytest.fixture
def widths(monkeypatch):
    """The width of each lane batch hashed, in order: the grouping does not depend on the
    hash, so hashlib stands in for the multi-buffer MD5 (and a loop for its batches)."""
    monkeypatch.setattr(md5_impl, "MULTI_BUFFER", True)
    monkeypatch.setattr(md5_impl, "new", lambda: hashlib.md5())
    found: list[int] = []

    def recording(digests, datas):
        found.append(len(digests))
        md5_impl._update_each(digests, datas)

    monkeypatch.setattr(md5_impl, "update_many", recording)
    return found


class GatedExecutor(Executor):
    """Runs tasks on a real pool, each only once `gate` is set: a drain that cannot progress."""

    def __init__(self, pool):
        self.pool = pool
        self.gate = threading.Event()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        def gated():
            assert self.gate.wait(30)
            return fn(*args, **kwargs)
        return self.pool.submit(gated)


pieces = st.lists(st.sampled_from([0, 1, 100, 65_535, 65_536, 70_000, 300_001]), max_size=12)


@settings(max_examples=40, deadline=None)
@given(sizes=pieces, backlog=st.integers(1, 4), use_executor=st.booleans())
def test_digest_of_pieces_in_order(pool, sizes, backlog, use_executor):
    data = os.urandom(sum(sizes))
    lanes = LanePolicy()
    digest = StreamDigest(pool if use_executor else None, backlog=backlog, lanes=lanes)
    at = 0
    for size in sizes:
        # each piece a fresh object, as the body reader hands out
        digest.update(bytearray(data[at:at + size]))
        at += size
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()
    assert lanes.active == 0


def test_reader_is_held_back_past_the_backlog(pool, lanes):
    gated = GatedExecutor(pool)
    digest = StreamDigest(gated, backlog=3, lanes=lanes)
    piece = os.urandom(100_000)
    done = []

    def feed():
        for _ in range(10):
            digest.update(piece)
            done.append(1)

    feeder = threading.Thread(target=feed)
    feeder.start()
    # the first piece started a drain that cannot run; three more may queue behind it, the
    # next update waits (and stays waiting)
    deadline = time.monotonic() + 30
    while len(done) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    feeder.join(0.3)
    assert feeder.is_alive()
    assert len(done) == 3
    gated.gate.set()
    feeder.join(30)
    assert not feeder.is_alive()
    assert digest.hexdigest() == hashlib.md5(piece * 10).hexdigest()


def test_abandon_drops_queued_pieces_and_uncounts(pool, lanes):
    gated = GatedExecutor(pool)
    digest = StreamDigest(gated, backlog=8, lanes=lanes)
    for _ in range(5):
        digest.update(os.urandom(100_000))
    assert lanes.active == 1
    gated.gate.set()
    digest.abandon()
    assert lanes.active == 0
    assert not digest._queue


def test_an_error_in_the_drain_reaches_hexdigest(pool, lanes):
    digest = StreamDigest(pool, lanes=lanes)
    digest.update("not bytes" * 10_000)  # queued (large), fails on the executor
    with pytest.raises(TypeError):
        digest.hexdigest()
    assert lanes.active == 0


def test_abandon_swallows_the_drains_error(pool, lanes):
    digest = StreamDigest(pool, lanes=lanes)
    digest.update("not bytes" * 10_000)
    digest.abandon()  # the upload's own error is the one that counts


def test_lanes_only_with_company_and_for_large_bodies(pool, lanes):
    """(Without the multi-buffer MD5 - no build, PITHOS_PURE, no vectors - never lanes.)"""
    multi = md5_impl.MULTI_BUFFER
    first = StreamDigest(pool, length=4 << 20, lanes=lanes)
    second = StreamDigest(pool, length=None, lanes=lanes)
    assert not first.multi_buffer and not second.multi_buffer  # alone: hashed by md5.single
    small = StreamDigest(pool, length=4096, lanes=lanes)
    large = StreamDigest(pool, length=lanes.min_bytes, lanes=lanes)
    unknown = StreamDigest(pool, length=None, lanes=lanes)
    assert not small.multi_buffer
    assert large.multi_buffer == multi and unknown.multi_buffer == multi
    inline = StreamDigest(None, length=None, lanes=lanes)
    assert not inline.multi_buffer  # no executor: hashed on the caller's thread
    datas = {d: os.urandom(1_000_000 + i) for i, d in
             enumerate([first, second, small, large, unknown, inline])}
    # lane digests hold pieces back for company; all must still finish, in any order
    for _ in range(3):
        for d, data in datas.items():
            d.update(data)
    for d, data in reversed(list(datas.items())):
        assert d.hexdigest() == hashlib.md5(data * 3).hexdigest()


def test_company_is_counted_within_one_policy_only(pool, lanes, monkeypatch):
    """Uploads share lanes only with the uploads of their own policy (one per server worker,
    made by the entry point); a digest given none is hashed alone and counted nowhere."""
    monkeypatch.setattr(md5_impl, "MULTI_BUFFER", True)
    monkeypatch.setattr(md5_impl, "new", lambda: hashlib.md5())
    monkeypatch.setattr(md5_impl, "update_many", md5_impl._update_each)
    other = LanePolicy()
    company = [StreamDigest(pool, lanes=lanes) for _ in range(lanes.lanes_from)]
    assert lanes.active == lanes.lanes_from and other.active == 0
    elsewhere = StreamDigest(pool, lanes=other)
    assert not elsewhere.multi_buffer
    loner = StreamDigest(pool)
    assert not loner.multi_buffer and lanes.active == lanes.lanes_from
    joined = StreamDigest(pool, lanes=lanes)
    assert joined.multi_buffer and lanes.lane_digests == {joined}
    assert other.active == 1 and not other.lane_digests
    for d in [*company, joined, loner, elsewhere]:
        assert d.hexdigest() == hashlib.md5(b"").hexdigest()
    assert other.active == 0


def test_concurrent_lane_digests_from_one_thread(pool, lanes):
    """Many uploads interleaved by one event-loop thread, as in a server worker."""
    digests = [StreamDigest(pool, length=None, lanes=lanes) for _ in range(12)]
    datas = [[os.urandom(200_000 + 7 * i) for _ in range(6)] for i in range(12)]
    for round_ in range(6):
        for d, data in zip(digests, datas, strict=True):
            d.update(data[round_])
    for d, data in zip(digests, datas, strict=True):
        assert d.hexdigest() == hashlib.md5(b"".join(data)).hexdigest()


class CountingExecutor(Executor):
    """A real pool that records which digests' drains were started."""

    def __init__(self, pool):
        self.pool = pool
        self.started = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.started += 1
        return self.pool.submit(fn, *args, **kwargs)


def test_lane_digests_wait_for_a_group(pool, lanes, monkeypatch):
    """Multi-buffer digests start hashing only together (the policy's `group`) or when one
    holds `patience` pieces; the grouping does not depend on the hash, so hashlib stands in
    (and a loop for the batches)."""
    monkeypatch.setattr(md5_impl, "MULTI_BUFFER", True)
    monkeypatch.setattr(md5_impl, "new", lambda: hashlib.md5())
    monkeypatch.setattr(md5_impl, "update_many", md5_impl._update_each)
    counting = CountingExecutor(pool)
    plain = [StreamDigest(counting, lanes=lanes) for _ in range(lanes.lanes_from)]
    group = [StreamDigest(counting, lanes=lanes) for _ in range(lanes.group)]
    assert not any(d.multi_buffer for d in plain) and all(d.multi_buffer for d in group)
    piece = os.urandom(100_000)
    for d in group[:-1]:
        d.update(piece)
    assert counting.started == 0  # held back: not a group yet
    group[-1].update(piece)
    assert counting.started == 1  # all start together, in one task that hashes them side by side
    # one digest alone holds its pieces until it has `patience`
    for d in group:
        d._wait()
    lone = group[0]
    for i in range(lanes.patience):
        assert counting.started == 1, i
        lone.update(piece)
    assert counting.started == 2
    for d in group[1:]:  # a result asked for starts the digest at once
        assert d.hexdigest() == hashlib.md5(piece).hexdigest()
    assert lone.hexdigest() == hashlib.md5(piece * (1 + lanes.patience)).hexdigest()
    for d in plain:
        assert d.hexdigest() == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize("real_lanes", [True, False])
def test_a_bad_piece_fails_only_its_own_digest(pool, lanes, monkeypatch, real_lanes):
    if not (real_lanes and md5_impl.MULTI_BUFFER):
        monkeypatch.setattr(md5_impl, "MULTI_BUFFER", True)
        monkeypatch.setattr(md5_impl, "new", lambda: hashlib.md5())
        monkeypatch.setattr(md5_impl, "update_many", md5_impl._update_each)
    plain = [StreamDigest(pool, lanes=lanes) for _ in range(lanes.lanes_from)]
    group = [StreamDigest(pool, lanes=lanes) for _ in range(lanes.group)]
    assert all(d.multi_buffer for d in group)
    good = os.urandom(200_000)
    for i, d in enumerate(group):
        d.update("not bytes" * 10_000 if i == 1 else good)
    for i, d in enumerate(group):
        d.update(good)
        if i == 1:
            with pytest.raises(TypeError):
                d.hexdigest()
        else:
            assert d.hexdigest() == hashlib.md5(good * 2).hexdigest(), i
    for d in plain:
        d.abandon()


def test_uploads_interleaved_by_greenlets(lanes):
    """As under the server: greenlets of one thread feed digests and wait for their drains on
    gevent's pool, so one digest may be grouped again while a greenlet still waits for its
    last drain; every digest must still hash its pieces once each, in order, before its
    result is read."""
    # More threads than greenlets: each digest has at most one drain queued, so submit never
    # waits for a thread.  (Without monkey-patching, gevent's submit holds a real lock while
    # it waits, and another greenlet's submit would then block the thread for good.)
    pool = GeventPool(max_workers=24)
    wrong: list[int] = []

    def uploads(seed: int) -> None:
        rnd = random.Random(seed)
        for n in range(40):
            pieces = [bytearray(rnd.randbytes(rnd.choice([65_536, 131_072, 262_144])))
                      for _ in range(rnd.randint(1, 10))]
            digest = StreamDigest(pool, length=None, lanes=lanes)
            for piece in pieces:
                digest.update(piece)
                gevent.sleep(rnd.random() * 0.002)
            gevent.sleep(rnd.random() * 0.003 * (n % 2))
            if digest.hexdigest() != hashlib.md5(b"".join(pieces)).hexdigest():
                wrong.append(seed)

    try:
        finished = gevent.joinall([gevent.spawn(uploads, seed) for seed in range(16)],
                                  raise_error=True, timeout=120)
    finally:
        pool.shutdown()
    assert len(finished) == 16 and not wrong


def test_lane_groups_hash_full_width_rounds(pool, lanes, widths):
    """A group hashes as many rounds as its shortest member has pieces, so each batch is as
    wide as the group; a digest with more pieces keeps the rest for the next group, which it
    joins as soon as the others have pieces again (its drain having ended), without a piece of
    its own arriving.  A result asked for hashes all of that digest's pieces, its company
    only as many rounds as it needs."""
    plain = [StreamDigest(pool, lanes=lanes) for _ in range(lanes.lanes_from)]
    group = [StreamDigest(pool, lanes=lanes) for _ in range(lanes.group)]
    piece = os.urandom(50_000)
    long_one, others = group[0], group[1:]
    for _ in range(3):
        long_one.update(piece)  # alone: held back
    for d in others:
        d.update(piece)
    long_one._wait()
    assert widths == [len(group)]  # one round: the others had one piece each
    assert len(long_one._queue) == 2
    for d in others:
        d.update(piece)
    long_one._wait()
    assert widths == [len(group)] * 2  # it joined again with its leftovers
    assert len(long_one._queue) == 1
    others[0].update(piece)
    others[0].update(piece)  # now asked for its result: 2 rounds, the second alone
    assert others[0].hexdigest() == hashlib.md5(piece * 4).hexdigest()
    assert widths == [len(group)] * 2 + [2, 1]
    assert long_one.hexdigest() == hashlib.md5(piece * 3).hexdigest()
    for d in others[1:]:
        assert d.hexdigest() == hashlib.md5(piece * 2).hexdigest()
    for d in plain:
        d.abandon()


def test_a_digest_begun_alone_joins_the_lanes_once_others_hash(pool, lanes, widths):
    """An upload that began with too little company hashes in lanes from its next piece once
    enough others are hashing, instead of alone to its end; a small body never does, nor
    one still alone."""
    piece = os.urandom(100_000)
    first = StreamDigest(pool, length=None, lanes=lanes)
    small = StreamDigest(pool, length=4096, lanes=lanes)
    first.update(piece)  # one other upload (small) is not company enough
    first._wait()
    assert not first.multi_buffer and not lanes.lane_digests
    others = [StreamDigest(pool, length=None, lanes=lanes) for _ in range(lanes.lanes_from)]
    assert all(d.multi_buffer for d in others)
    first.update(piece)
    small.update(b"s" * 4096)
    assert first.multi_buffer and lanes.lane_digests == {first, *others}
    assert not small.multi_buffer
    assert widths == []  # held back for company, as any lane digest's
    for d in others:
        d.update(piece)
    first._wait()
    assert widths == [1 + len(others)]  # its second piece hashed beside theirs
    assert first.hexdigest() == hashlib.md5(piece * 2).hexdigest()
    for d in others:
        assert d.hexdigest() == hashlib.md5(piece).hexdigest()
    assert small.hexdigest() == hashlib.md5(b"s" * 4096).hexdigest()


def test_a_group_among_more_lane_digests_starts_once_a_group_is_ready(pool, lanes, widths):
    """With more lane digests than a group, the first `group` of them with pieces start
    together, whichever the others are (each piece asks, and stops looking once a group can
    no longer be found)."""
    plain = [StreamDigest(pool, lanes=lanes) for _ in range(lanes.lanes_from)]
    digests = [StreamDigest(pool, lanes=lanes) for _ in range(lanes.group + 3)]
    piece = os.urandom(50_000)
    for d in digests[3:-1]:
        d.update(piece)
    assert widths == []  # one short of a group
    digests[-1].update(piece)
    for d in digests:
        d._wait()
    assert widths == [lanes.group]
    for d in digests[:3]:
        assert d.hexdigest() == hashlib.md5(b"").hexdigest()
    for d in digests[3:]:
        assert d.hexdigest() == hashlib.md5(piece).hexdigest()
    for d in plain:
        d.abandon()


class WaitingSubmit(Executor):
    """gevent's pool as a busy server worker's: its submit waits for a free thread (gevent's
    ThreadPool.spawn does, on a semaphore), and other greenlets run meanwhile."""

    def __init__(self, pool, rnd: random.Random) -> None:
        self.pool = pool
        self.rnd = rnd

    def submit(self, fn, /, *args, **kwargs) -> Future:
        gevent.sleep(self.rnd.random() * 0.002)
        return self.pool.submit(fn, *args, **kwargs)


def test_uploads_interleaved_while_submit_waits_for_a_thread(lanes):
    """A group being started while submit waits for a thread is busy: another greenlet must
    not start a second drain of its digests meanwhile (two drains of one digest hashed its
    pieces out of order: wrong ETags under 16 CDC uploads of 4 MiB, whose chunk hashing
    keeps the worker's pool full)."""
    pool = GeventPool(max_workers=24)
    executor = WaitingSubmit(pool, random.Random(5))
    wrong: list[int] = []

    def uploads(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(15):
            pieces = [rnd.randbytes(rnd.choice([65_536, 131_072])) for _ in range(8)]
            digest = StreamDigest(executor, length=None, lanes=lanes)
            for piece in pieces:
                digest.update(piece)
                gevent.sleep(rnd.random() * 0.001)
            if digest.hexdigest() != hashlib.md5(b"".join(pieces)).hexdigest():
                wrong.append(seed)

    try:
        finished = gevent.joinall([gevent.spawn(uploads, seed) for seed in range(12)],
                                  raise_error=True, timeout=120)
    finally:
        pool.shutdown()
    assert len(finished) == 12 and not wrong

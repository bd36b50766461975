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
from pithos.objects import digest as digest_mod
from pithos.objects.digest import StreamDigest


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.fixture(autouse=True)
def no_digest_left_counted():
    yield
    assert StreamDigest.active == 0
    assert not StreamDigest._lane_digests


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
    digest = StreamDigest(pool if use_executor else None, backlog=backlog)
    at = 0
    for size in sizes:
        # each piece a fresh object, as the body reader hands out
        digest.update(bytearray(data[at:at + size]))
        at += size
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()


def test_reader_is_held_back_past_the_backlog(pool):
    gated = GatedExecutor(pool)
    digest = StreamDigest(gated, backlog=3)
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


def test_abandon_drops_queued_pieces_and_uncounts(pool):
    gated = GatedExecutor(pool)
    digest = StreamDigest(gated, backlog=8)
    for _ in range(5):
        digest.update(os.urandom(100_000))
    assert StreamDigest.active == 1
    gated.gate.set()
    digest.abandon()
    assert StreamDigest.active == 0
    assert not digest._queue


def test_an_error_in_the_drain_reaches_hexdigest(pool):
    digest = StreamDigest(pool)
    digest.update("not bytes" * 10_000)  # queued (large), fails on the executor
    with pytest.raises(TypeError):
        digest.hexdigest()
    assert StreamDigest.active == 0


def test_abandon_swallows_the_drains_error(pool):
    digest = StreamDigest(pool)
    digest.update("not bytes" * 10_000)
    digest.abandon()  # the upload's own error is the one that counts


def test_lanes_only_with_company_and_for_large_bodies(pool):
    """(Without the multi-buffer MD5 - no build, PITHOS_PURE, no vectors - never lanes.)"""
    lanes = md5_impl.MULTI_BUFFER
    first = StreamDigest(pool, length=4 << 20)
    second = StreamDigest(pool, length=None)
    assert not first.multi_buffer and not second.multi_buffer  # alone: hashed by md5.single
    small = StreamDigest(pool, length=4096)
    large = StreamDigest(pool, length=digest_mod.LANES_MIN_BYTES)
    unknown = StreamDigest(pool, length=None)
    assert not small.multi_buffer
    assert large.multi_buffer == lanes and unknown.multi_buffer == lanes
    inline = StreamDigest(None, length=None)
    assert not inline.multi_buffer  # no executor: hashed on the caller's thread
    datas = {d: os.urandom(1_000_000 + i) for i, d in
             enumerate([first, second, small, large, unknown, inline])}
    # lane digests hold pieces back for company; all must still finish, in any order
    for _ in range(3):
        for d, data in datas.items():
            d.update(data)
    for d, data in reversed(list(datas.items())):
        assert d.hexdigest() == hashlib.md5(data * 3).hexdigest()


def test_concurrent_lane_digests_from_one_thread(pool):
    """Many uploads interleaved by one event-loop thread, as in a server worker."""
    digests = [StreamDigest(pool, length=None) for _ in range(12)]
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


def test_lane_digests_wait_for_a_group(pool, monkeypatch):
    """Multi-buffer digests start hashing only together (LANES_GROUP) or when one holds
    LANES_PATIENCE pieces; the grouping does not depend on the hash, so hashlib stands in
    (and a loop for the batches)."""
    monkeypatch.setattr(md5_impl, "MULTI_BUFFER", True)
    monkeypatch.setattr(md5_impl, "new", lambda: hashlib.md5())
    monkeypatch.setattr(md5_impl, "update_many", md5_impl._update_each)
    counting = CountingExecutor(pool)
    plain = [StreamDigest(counting) for _ in range(digest_mod.LANES_FROM)]
    group = [StreamDigest(counting) for _ in range(digest_mod.LANES_GROUP)]
    assert not any(d.multi_buffer for d in plain) and all(d.multi_buffer for d in group)
    piece = os.urandom(100_000)
    for d in group[:-1]:
        d.update(piece)
    assert counting.started == 0  # held back: not a group yet
    group[-1].update(piece)
    assert counting.started == 1  # all start together, in one task that hashes them side by side
    # one digest alone holds its pieces until it has LANES_PATIENCE
    for d in group:
        d._wait()
    lone = group[0]
    for i in range(digest_mod.LANES_PATIENCE):
        assert counting.started == 1, i
        lone.update(piece)
    assert counting.started == 2
    for d in group[1:]:  # a result asked for starts the digest at once
        assert d.hexdigest() == hashlib.md5(piece).hexdigest()
    assert lone.hexdigest() == hashlib.md5(piece * (1 + digest_mod.LANES_PATIENCE)).hexdigest()
    for d in plain:
        assert d.hexdigest() == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize("real_lanes", [True, False])
def test_a_bad_piece_fails_only_its_own_digest(pool, monkeypatch, real_lanes):
    if not (real_lanes and md5_impl.MULTI_BUFFER):
        monkeypatch.setattr(md5_impl, "MULTI_BUFFER", True)
        monkeypatch.setattr(md5_impl, "new", lambda: hashlib.md5())
        monkeypatch.setattr(md5_impl, "update_many", md5_impl._update_each)
    plain = [StreamDigest(pool) for _ in range(digest_mod.LANES_FROM)]
    group = [StreamDigest(pool) for _ in range(digest_mod.LANES_GROUP)]
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


def test_uploads_interleaved_by_greenlets():
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
            digest = StreamDigest(pool, length=None)
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


def test_lane_groups_hash_full_width_rounds(pool, monkeypatch):
    """A group hashes as many rounds as its shortest member has pieces, so each batch is as
    wide as the group; a digest with more pieces keeps the rest for the next group, which it
    joins as soon as the others have pieces again (its drain having ended), without a piece of
    its own arriving.  A result asked for hashes all of that digest's pieces, its company
    only as many rounds as it needs."""
    monkeypatch.setattr(md5_impl, "MULTI_BUFFER", True)
    monkeypatch.setattr(md5_impl, "new", lambda: hashlib.md5())
    widths: list[int] = []

    def recording(digests, datas):
        widths.append(len(digests))
        md5_impl._update_each(digests, datas)

    monkeypatch.setattr(md5_impl, "update_many", recording)
    plain = [StreamDigest(pool) for _ in range(digest_mod.LANES_FROM)]
    group = [StreamDigest(pool) for _ in range(digest_mod.LANES_GROUP)]
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

"""The multi-buffer MD5 (native/md5lanes.h, .pyx) gives hashlib's digests: for any data and
any way of splitting it into updates, alone and in batches of streams side by side, with every
vector code this CPU runs (portable C, AVX2, AVX-512).

Under PITHOS_REQUIRE_ALL (CI) the native build must exist: a silently missing extension would
otherwise turn this whole module into a skip."""

import hashlib
import itertools
import os
import subprocess
import sys
import threading

import pytest
from conftest import native_module
from hypothesis import given, settings
from hypothesis import strategies as st

lanes, pytestmark = native_module("pithos.core._md5lanes")


def levels():
    """Every vector code this CPU runs, portable first."""
    if lanes is None:
        return ["scalar"]
    best = lanes.LEVELS.index(lanes.vector_available())
    return list(lanes.LEVELS[: best + 1])


@pytest.fixture(params=levels())
def level(request):
    used = lanes.set_vector(request.param)
    assert used == request.param
    yield used
    lanes.set_vector(lanes.vector_available())


def split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_equal_to_hashlib_for_any_split(data, cuts):
    digest = lanes.LaneMd5()
    for piece in split(data, cuts):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()
    assert digest.digest() == hashlib.md5(data).digest()


@pytest.mark.parametrize("size", [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 4096 + 3])
def test_padding_edges(size):
    data = os.urandom(size)
    assert lanes.LaneMd5(data).hexdigest() == hashlib.md5(data).hexdigest()


def test_accepts_bytes_likes_and_copies():
    data = os.urandom(10_000)
    digest = lanes.LaneMd5(bytearray(data[:777]))
    digest.update(memoryview(data)[777:5000])
    twin = digest.copy()
    digest.update(data[5000:])
    twin.update(b"other")
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()
    assert twin.hexdigest() == hashlib.md5(data[:5000] + b"other").hexdigest()
    digest.update(b"")  # a digest can be read and then updated, as hashlib's
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()


@settings(max_examples=60, deadline=None)
@given(rounds=st.lists(st.lists(st.integers(0, 70_000), min_size=1, max_size=20), min_size=1,
                       max_size=4),
       level=st.sampled_from(levels()))
def test_batches_give_each_digest_its_own_md5(rounds, level):
    """Batches of up to 20 streams (more than the 16 lanes) of uneven lengths, partial blocks
    carried from one batch to the next, a stream sitting out a round."""
    lanes.set_vector(level)
    try:
        width = max(len(r) for r in rounds)
        digests = [lanes.LaneMd5() for _ in range(width)]
        sent = [b""] * width
        for sizes in rounds:
            batch = range(len(sizes))
            datas = [os.urandom(size) for size in sizes]
            lanes.update_many([digests[i] for i in batch], datas)
            for i in batch:
                sent[i] += datas[i]
        for i in range(width):
            assert digests[i].hexdigest() == hashlib.md5(sent[i]).hexdigest(), i
    finally:
        lanes.set_vector(lanes.vector_available())


def test_batches_of_large_buffers(level):
    datas = [os.urandom(512 * 1024 + 64 * i + i) for i in range(17)]
    digests = [lanes.LaneMd5(b"x" * i) for i in range(17)]
    lanes.update_many(digests, datas)
    lanes.update_many(digests[3:], [bytearray(d) for d in datas[3:]])
    for i in range(17):
        want = b"x" * i + datas[i] + (datas[i] if i >= 3 else b"")
        assert digests[i].hexdigest() == hashlib.md5(want).hexdigest(), i


def test_batch_refuses_bad_input_and_changes_nothing():
    a, b = lanes.LaneMd5(), lanes.LaneMd5()
    with pytest.raises(TypeError):
        lanes.update_many([a, b], [b"fine", "not bytes"])
    with pytest.raises(ValueError):
        lanes.update_many([a, a], [b"1", b"2"])
    with pytest.raises(ValueError):
        lanes.update_many([a], [b"1", b"2"])
    with pytest.raises(TypeError):
        lanes.update_many([hashlib.md5()], [b"1"])
    assert a.hexdigest() == b.hexdigest() == hashlib.md5(b"").hexdigest()


def test_threads_batch_at_once(level):
    """Threads hashing batches of their own at the same time (the executor's threads)."""
    results = {}

    def run(t):
        datas = [os.urandom(100_000 + t) for _ in range(5)]
        digests = [lanes.LaneMd5() for _ in range(5)]
        for _ in range(4):
            lanes.update_many(digests, datas)
        results[t] = all(d.hexdigest() == hashlib.md5(x * 4).hexdigest()
                         for d, x in zip(digests, datas, strict=True))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert results == dict.fromkeys(range(8), True)


def test_pure_switch_and_cpu_choose_hashlib():
    code = ("from pithos.core import md5; print(md5.MULTI_BUFFER, type(md5.new()).__module__,"
            " type(md5.single()).__module__)")
    pure = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PITHOS_PURE": "1", "PATH": ""}, check=True)
    native = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": ""}, check=True)
    ours, openssl = lanes.__name__, type(hashlib.md5()).__module__
    assert pure.stdout.split() == ["False", openssl, openssl]
    vectors = lanes.vector_available() != "scalar"
    # A lone stream is hashed by the native portable code whatever the vectors.
    assert native.stdout.split() == (["True", ours, ours] if vectors
                                     else ["False", openssl, ours])

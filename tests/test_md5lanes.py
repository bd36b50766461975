"""The multi-buffer MD5 (native/md5lanes.h, .pyx) gives hashlib's digests: for any data and
any way of splitting it into updates, alone and with many threads hashing at once, with every
vector code this CPU runs (portable C, AVX2, AVX-512).

Under PITHOS_REQUIRE_ALL (CI) the native build must exist: a silently missing extension would
otherwise turn this whole module into a skip."""

import hashlib
import importlib
import itertools
import os
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    lanes = importlib.import_module("pithos.core._md5lanes")
except ImportError:  # pragma: no cover - CI requires the build
    lanes = None

pytestmark = pytest.mark.skipif(lanes is None, reason="native extension not built")


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


@pytest.mark.parametrize("threads", [2, 7, 16, 23])
def test_concurrent_streams_get_their_own_digests(level, threads):
    """Streams of different lengths meet in the lanes, leave at different times, and new ones
    join while others are mid-stream (updates of uneven sizes, several rounds per thread)."""
    datas = [os.urandom(300_000 + 4099 * i) for i in range(threads)]
    results: list = [None] * threads
    start = threading.Barrier(threads)

    def run(i):
        start.wait()
        got = []
        for round_ in range(3):
            digest = lanes.LaneMd5()
            data = datas[(i + round_) % threads]
            step = 65_536 + 1000 * i + 1
            for at in range(0, len(data), step):
                digest.update(data[at:at + step])
            got.append(digest.hexdigest())
        results[i] = got

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert not worker.is_alive()
    for i in range(threads):
        want = [hashlib.md5(datas[(i + r) % threads]).hexdigest() for r in range(3)]
        assert results[i] == want, i


def test_pure_switch_and_cpu_choose_hashlib():
    code = "from pithos.core import md5; print(md5.MULTI_BUFFER, md5.new().__class__.__name__)"
    pure = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PITHOS_PURE": "1", "PATH": ""}, check=True)
    native = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": ""}, check=True)
    assert pure.stdout.split()[0] == "False"
    vectors = lanes.vector_available() != "scalar"
    assert native.stdout.split() == (["True", "LaneMd5"] if vectors else ["False", "md5"])

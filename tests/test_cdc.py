"""FastCDC (pithos/core/cdc.py): golden cut points that must never change, streaming that cuts
as the whole stream does whatever the pieces, and the native twin (native/cdc.pyx) equal to
the pure one (pithos/core/_cdc_py.py).

Under PITHOS_PURE=1 (scripts/test) the Chunker and cut_points run on the pure twin; the twin
comparison runs either way."""

import hashlib
import itertools

import pytest
from conftest import native_module, twins_agree
from hypothesis import given, settings
from hypothesis import strategies as st

from pithos.core import _cdc_py as pure
from pithos.core import cdc

native, native_mark = native_module("pithos.core._cdc")

# A fixed pseudo-random input, the same on every machine.
GOLDEN_INPUT = hashlib.shake_256(b"pithos cdc golden").digest(1 << 21)


def test_gear_table_never_changes():
    # Every stored CDC object and every client's cuts depend on it.
    assert len(cdc.GEAR) == 256 * 8
    assert hashlib.sha256(cdc.GEAR).hexdigest() == \
        "4d9739f546a19065bb45f74b9b0e299d73e4c074fc6905b802e90442dbb69e52"


def test_golden_cut_points_16k_64k_256k():
    assert cdc.cut_points(GOLDEN_INPUT, 16384, 65536, 262144) == [
        83116, 179653, 246117, 288245, 361068, 441450, 518465, 590337, 627317, 741002,
        809944, 912129, 984554, 1060917, 1127926, 1215702, 1284323, 1352294, 1455135,
        1521758, 1590968, 1657201, 1740565, 1815531, 1888243, 1953943, 2051471, 2097152]


def test_golden_cut_points_small():
    assert cdc.cut_points(GOLDEN_INPUT[:1 << 16], 256, 1024, 4096) == [
        659, 1761, 2896, 4313, 5687, 6983, 8524, 8891, 10222, 11987, 13047, 14570, 14854,
        15884, 17153, 18332, 19814, 21276, 21644, 22854, 24138, 25236, 26943, 28289, 29364,
        30463, 31539, 32791, 33833, 34136, 35402, 36587, 38140, 39565, 41140, 42950, 44190,
        45010, 46977, 48172, 49199, 49724, 51458, 52815, 54604, 55672, 56948, 58421, 59450,
        60095, 61647, 63054, 64148, 65536]


# The default sizes' cuts of GOLDEN_INPUT: their count and the SHA-256 of repr(list).
LEN_DEFAULT = 114
SHA_DEFAULT = "e523cfc04fa68f81142447d7d0d6d2a4750fac6a374a7e447975527fef124b9b"


def test_defaults():
    # The defaults are part of the format: a client and the server must cut alike.
    assert (cdc.MIN_SIZE, cdc.AVG_SIZE, cdc.MAX_SIZE) == (4096, 16384, 65536)
    ends = cdc.cut_points(GOLDEN_INPUT)
    assert ends == cdc.cut_points(GOLDEN_INPUT, 4096, 16384, 65536)
    assert len(ends) == LEN_DEFAULT and hashlib.sha256(repr(ends).encode()).hexdigest() == \
        SHA_DEFAULT


def test_chunk_sizes_within_limits():
    ends = cdc.cut_points(GOLDEN_INPUT, 256, 1024, 4096)
    sizes = [b - a for a, b in itertools.pairwise([0, *ends])]
    assert all(256 < n <= 4096 for n in sizes[:-1])
    # Normalized chunking keeps the mean near the average.
    assert 800 < sum(sizes) / len(sizes) < 1600


def test_cuts_follow_content_not_offsets():
    # An insert moves the cuts after it with the content: most chunks are shared.
    edited = GOLDEN_INPUT[:500_000] + b"xyz" + GOLDEN_INPUT[500_000:]

    def chunks(data):
        ends = cdc.cut_points(data)
        return {data[a:b] for a, b in itertools.pairwise([0, *ends])}

    before, after = chunks(GOLDEN_INPUT), chunks(edited)
    assert len(after - before) <= 2
    assert sum(map(len, after - before)) < 3 * cdc.MAX_SIZE


def test_empty_and_tiny():
    assert cdc.cut_points(b"") == []
    assert cdc.cut_points(b"x") == [1]
    chunker = cdc.Chunker()
    assert chunker.update(b"") == []
    assert chunker.update(b"abc") == []
    assert chunker.finish() == [b"abc"]
    assert chunker.finish() == []
    with pytest.raises(ValueError):
        chunker.update(b"more")


def test_zeros_cut_at_max():
    assert cdc.cut_points(bytes(600_000), 256, 1024, 4096)[:3] == [4096, 8192, 12288]


@pytest.mark.parametrize("sizes", [(0, 1024, 4096), (256, 1000, 4096), (512, 256, 4096),
                                   (256, 1024, 1024), (256, 128, 512)])
def test_bad_sizes(sizes):
    with pytest.raises(ValueError):
        cdc.Chunker(*sizes)
    with pytest.raises(ValueError):
        cdc.cut_points(b"data", *sizes)


def _stream(data, pieces, sizes):
    chunker = cdc.Chunker(*sizes)
    out: list[bytes] = []
    at = 0
    for n in pieces:
        out += chunker.update(memoryview(data)[at:at + n])
        at += n
    out += chunker.update(data[at:])
    return out + chunker.finish()


SMALL = (64, 256, 1024)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=6000), st.lists(st.integers(0, 1500), max_size=30),
       st.integers(0, 2**32))
def test_streaming_cuts_as_whole(raw, pieces, seed):
    # Random bytes cut at few places; mixing in the seed's pseudo-random bytes gives many.
    data = raw + hashlib.shake_256(seed.to_bytes(8, "little")).digest(seed % 9000)
    chunks = _stream(data, pieces, SMALL)
    assert b"".join(chunks) == data
    assert list(itertools.accumulate(map(len, chunks))) == cdc.cut_points(data, *SMALL)


def test_streaming_default_sizes_small_pieces():
    # Small pieces wait until a chunk can be decided (no rescans) and still cut identically.
    data = GOLDEN_INPUT[:300_000]
    chunker = cdc.Chunker()
    out: list[bytes] = []
    for i in range(0, len(data), 997):
        out += chunker.update(data[i:i + 997])
    out += chunker.finish()
    assert list(itertools.accumulate(map(len, out))) == cdc.cut_points(data)


def _both(*args):
    return twins_agree(pure, native, "cuts", *args)


@native_mark
@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 20000), st.data())
def test_native_equals_pure(seed, length, draw):
    data = hashlib.shake_256(seed.to_bytes(8, "little")).digest(length)
    if draw.draw(st.booleans()):
        data = bytes(length // 2) + data[length // 2:]   # a run of zeros: cuts at max_size
    avg = 1 << draw.draw(st.integers(8, 12))
    min_size = draw.draw(st.integers(64, avg - 1))
    max_size = draw.draw(st.integers(avg + 1, 8 * avg))
    start = draw.draw(st.integers(0, length))
    end = draw.draw(st.integers(start, length))
    final = draw.draw(st.booleans())
    mask_s, mask_l = cdc.masks(avg)
    kind, _ = _both(data, start, end, final, min_size, avg, max_size, mask_s, mask_l,
                    cdc.GEAR)
    assert kind == "ok"


@native_mark
def test_native_equals_pure_default_sizes():
    mask_s, mask_l = cdc.masks(cdc.AVG_SIZE)
    data = GOLDEN_INPUT[:1 << 20] + bytes(600_000) + GOLDEN_INPUT[:300_000]
    _both(data, 0, len(data), True, cdc.MIN_SIZE, cdc.AVG_SIZE, cdc.MAX_SIZE, mask_s,
          mask_l, cdc.GEAR)


@native_mark
@pytest.mark.parametrize("args", [(-1, 10, True), (5, 3, True), (0, 99, False)])
def test_twins_refuse_bad_ranges_alike(args):
    mask_s, mask_l = cdc.masks(256)
    kind, _ = _both(b"0123456789" * 5, *args, 64, 256, 1024, mask_s, mask_l, cdc.GEAR)
    assert kind == "error"


# -- runs of zeros ------------------------------------------------------------------------------

def _image_like(seed: int, extents: list[tuple[bool, int]]) -> bytes:
    """Extents of zeros (True) or pseudo-random bytes (False) of the given sizes."""
    out = bytearray()
    for i, (zero, n) in enumerate(extents):
        out += bytes(n) if zero else hashlib.shake_256(b"%d-%d" % (seed, i)).digest(n)
    return bytes(out)


IMAGE = _image_like(1, [(False, 100_000), (True, 300_000), (False, 50_001), (True, 4096),
                        (False, 7), (True, 4095), (False, 70_000), (True, 200_003)])


def test_golden_cut_points_zero_runs():
    # Pinned like the random input's: a zero run is cut at its start and end, and into
    # max-size chunks counted from its start (the last run ends the stream: its remainder
    # 200_003 - 3 * 65536 = 3395 bytes is a chunk of its own).
    ends = cdc.cut_points(IMAGE)
    assert 100_000 in ends and 400_000 in ends and 450_001 in ends and 454_097 in ends
    assert [e for e in ends if 100_000 <= e <= 400_000] == [
        100_000, 165_536, 231_072, 296_608, 362_144, 400_000]
    assert ends[-4:] == [len(IMAGE) - 200_003 + n for n in (65536, 131072, 196608, 200_003)]
    assert hashlib.sha256(repr(ends).encode()).hexdigest() == \
        "4499836115e80d214b80a54541df428d8df4e3ac7b2fe4e5ddbd1440083c9b87"


def test_short_zero_runs_are_data():
    # Fewer than min_size zeros are not a run: 4095 zeros between random bytes cut as
    # plain FastCDC would (no cut at their edges unless the hash says so).
    data = GOLDEN_INPUT[:200_000] + bytes(4095) + GOLDEN_INPUT[200_000:400_000]
    ends = cdc.cut_points(data)
    assert 200_000 not in ends and 204_095 not in ends


def test_write_into_zero_extent_changes_little():
    # The image's case: a 4 KiB write into the middle of a long zero extent.  Before zero
    # runs were cut apart, every chunk from the write to the extent's end was new (the
    # max-size grid moved); now the write's chunk and the two runs' remainders.
    def chunks(data):
        ends = cdc.cut_points(data)
        return {data[a:b] for a, b in itertools.pairwise([0, *ends])}

    base = _image_like(2, [(False, 300_000), (True, 3 << 20), (False, 300_000)])
    at = 300_000 + (1 << 20) + 12_288
    edited = base[:at] + GOLDEN_INPUT[:4096] + base[at + 4096:]
    new = chunks(edited) - chunks(base)
    assert GOLDEN_INPUT[:4096] in new
    assert len(new) <= 3
    assert sum(1 for c in new if c.count(0) != len(c)) == 1  # the others are zeros


def test_zero_runs_stream_as_whole():
    chunker = cdc.Chunker()
    out: list[bytes] = []
    for i in range(0, len(IMAGE), 5000):
        out += chunker.update(IMAGE[i:i + 5000])
    out += chunker.finish()
    assert list(itertools.accumulate(map(len, out))) == cdc.cut_points(IMAGE)


_extents = st.lists(st.tuples(st.booleans(), st.integers(1, 3000)), max_size=12)


@settings(max_examples=80, deadline=None)
@given(_extents, st.integers(0, 2**32), st.lists(st.integers(0, 1500), max_size=30))
def test_zero_runs_streaming_cuts_as_whole(extents, seed, pieces):
    data = _image_like(seed, extents)
    chunks = _stream(data, pieces, SMALL)
    assert b"".join(chunks) == data
    ends = cdc.cut_points(data, *SMALL)
    assert list(itertools.accumulate(map(len, chunks))) == ends
    sizes = [b - a for a, b in itertools.pairwise([0, *ends])]
    assert all(0 < n <= SMALL[2] for n in sizes)


@native_mark
@settings(max_examples=120, deadline=None)
@given(_extents, st.integers(0, 2**32), st.data())
def test_native_equals_pure_zero_runs(extents, seed, draw):
    data = _image_like(seed, extents)
    avg = 1 << draw.draw(st.integers(8, 11))
    min_size = draw.draw(st.integers(64, avg - 1))
    max_size = draw.draw(st.integers(avg + 1, 8 * avg))
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))
    mask_s, mask_l = cdc.masks(avg)
    kind, _ = _both(data, start, end, draw.draw(st.booleans()), min_size, avg, max_size,
                    mask_s, mask_l, cdc.GEAR)
    assert kind == "ok"

"""The Cython overlay (native/overlay.pyx) and its pure-Python twin give identical results.

Under PITHOS_REQUIRE_ALL (CI) the native build must exist."""

from conftest import native_module
from hypothesis import given
from hypothesis import strategies as st

from archipelago import _overlay_py as pure

native, pytestmark = native_module("archipelago._overlay")


def both(name, *args):
    """Call a function in both twins on copies of the arguments; equal results (and equal
    mutations of a bytearray argument) or the same exception type."""
    results = []
    for impl in (pure, native):
        copies = [bytearray(a) if isinstance(a, bytearray) else a for a in args]
        try:
            out = getattr(impl, name)(*copies)
            results.append(("ok", out, [c for c in copies if isinstance(c, bytearray)]))
        except (ValueError, OverflowError) as exc:
            results.append(("error", type(exc).__name__, None))
    assert results[0] == results[1], (name, results)
    return results[0]


bitmaps = st.binary(max_size=40).map(bytearray)


@given(bitmaps, st.integers(-3, 400), st.integers(-3, 400))
def test_runs_count_mark(bits, a, b):
    for name in ("runs", "count", "mark"):
        both(name, bits, a, b)


@given(bitmaps, st.data())
def test_runs_cover_range_exactly(bits, data):
    n = len(bits) * 8
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, n))
    runs = native.runs(bits, a, b)
    pos = a
    for value, lo, hi in runs:
        assert lo == pos and hi > lo
        assert all(bool(bits[i >> 3] >> (i & 7) & 1) == value for i in range(lo, hi))
        pos = hi
    assert pos == b
    assert native.count(bits, a, b) == sum(hi - lo for v, lo, hi in runs if v)


@given(st.binary(min_size=0, max_size=40))
def test_parse_request(raw):
    both("parse_request", raw)
    framed = bytes.fromhex("25609513") + raw[:24].ljust(24, b"\0")
    assert both("parse_request", framed)[0] == "ok"


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_simple_reply(error, handle):
    both("simple_reply", error, handle)

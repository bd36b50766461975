"""The Cython codec (native/mapcodec.pyx) and its pure-Python twin give identical results.

Under PITHOS_REQUIRE_ALL (CI) the native build must exist: a silently missing extension would
otherwise turn this whole module into a skip."""

import subprocess
import sys
from pathlib import Path

from conftest import native_module
from hypothesis import given
from hypothesis import strategies as st

from pithos.mapper import _mapcodec_py as pure

native, pytestmark = native_module("pithos.mapper._mapcodec")

hashes = st.binary(min_size=32, max_size=32)


def both(name, *args):
    """Call a function in both twins; equal results or equal exception types."""
    results = []
    for impl in (pure, native):
        try:
            results.append(("ok", getattr(impl, name)(*args)))
        except (ValueError, OverflowError, TypeError) as exc:
            results.append(("error", ValueError if isinstance(exc, OverflowError) else
                            type(exc)))
    assert results[0] == results[1], (name, results)
    return results[0]


@given(st.lists(st.tuples(hashes, st.integers(1, 2**32 - 1)), max_size=50))
def test_leaf_round_trip(entries):
    hs, ls = [h for h, _ in entries], [n for _, n in entries]
    kind, page = both("encode_leaf", hs, ls)
    assert kind == "ok"
    assert both("decode_page", page) == ("ok", (0, hs, ls, []))


@given(st.integers(1, 255),
       st.lists(st.tuples(hashes, st.integers(0, 2**63), st.integers(1, 2**63)), max_size=50))
def test_node_round_trip(level, entries):
    hs = [h for h, _, _ in entries]
    sizes = [s for _, s, _ in entries]
    counts = [c for _, _, c in entries]
    kind, page = both("encode_node", level, hs, sizes, counts)
    assert kind == "ok"
    assert both("decode_page", page) == ("ok", (level, hs, sizes, counts))


@given(st.binary(max_size=300))
def test_decode_garbage_agrees(data):
    both("decode_page", data)


@given(st.binary(max_size=200), st.integers(0, 199), st.integers(0, 255))
def test_decode_mutated_pages_agree(tail, pos, value):
    _, page = both("encode_leaf", [bytes(32)] * 3, [5, 6, 7])
    mutated = bytearray(page + tail)
    if pos < len(mutated):
        mutated[pos] = value
    both("decode_page", bytes(mutated))


def test_bad_entries_rejected_by_both():
    assert both("encode_leaf", [b"short"], [1])[0] == "error"
    assert both("encode_leaf", [bytes(32)], [0])[0] == "error"
    assert both("encode_leaf", [bytes(32)], [1, 2])[0] == "error"
    assert both("encode_node", 0, [bytes(32)], [1], [1])[0] == "error"
    assert both("encode_node", 1, [bytes(32)], [1], [0])[0] == "error"


@given(st.lists(st.integers(1, 50), max_size=30), st.integers(0, 800), st.integers(-5, 800))
def test_locate_agrees_and_covers_the_range(sizes, offset, length):
    _, pieces = both("locate", sizes, offset, length)
    total = sum(sizes)
    want = max(0, min(offset + max(length, 0), total) - offset) if offset < total else 0
    assert sum(n for _, _, n in pieces) == want
    for i, off, n in pieces:
        assert off >= 0 and off + n <= sizes[i] and n > 0


@given(st.binary(max_size=100) | st.builds(bytes, st.integers(0, 5000)))
def test_is_zero_agrees(data):
    kind, result = both("is_zero", data)
    assert result == (data.count(0) == len(data))
    assert both("is_zero", bytearray(data)) == (kind, result)


def test_pure_switch_selects_the_twin():
    code = "from pithos.mapper import codec; print(codec.IS_NATIVE)"
    env_pure = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={"PITHOS_PURE": "1", "PATH": ""}, check=True)
    env_native = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={"PATH": ""}, check=True)
    assert env_pure.stdout.strip() == "False"
    assert env_native.stdout.strip() == "True"


def test_pure_switch_is_read_in_one_module():
    """Only the entry points read the environment; `PITHOS_PURE` is the one exception, read by
    pithos.core.native alone (every accelerated module loads its twin there)."""
    root = Path(__file__).resolve().parent.parent
    readers = sorted(str(path.relative_to(root))
                     for package in ("pithos", "archipelago", "compute")
                     for path in (root / package).rglob("*.py")
                     if '"PITHOS_PURE"' in path.read_text())
    assert readers == ["pithos/core/native.py"]

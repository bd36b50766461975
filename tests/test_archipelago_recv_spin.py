"""recv_spin (native/overlay.pyx and archipelago/_overlay_py.py): both twins give the same
results on a real socket pair: data, nothing in time (-1), the peer gone (0), errors."""

import importlib
import socket
import threading
import time

import pytest

from archipelago import _overlay_py as pure

try:
    native = importlib.import_module("archipelago._overlay")
except ImportError:  # pragma: no cover - CI requires the build
    native = None

IMPLS = [pure] + ([native] if native is not None else [])


def outcome(impl, sock, buf, spin_ns):
    try:
        return ("ok", impl.recv_spin(sock, buf, spin_ns), bytes(buf))
    except (ValueError, OSError) as exc:
        return ("error", type(exc).__name__, None)


def run_both(setup, nbytes, spin_ns):
    results = []
    for impl in IMPLS:
        a, b = socket.socketpair()
        try:
            setup(a)
            results.append(outcome(impl, b, bytearray(nbytes), spin_ns))
        finally:
            a.close()
            b.close()
    assert all(r == results[0] for r in results), results
    return results[0]


def test_data_waiting():
    assert run_both(lambda a: a.sendall(b"hello"), 8, 1000) == ("ok", 5, b"hello\0\0\0")
    assert run_both(lambda a: a.sendall(b"x" * 20), 8, 0) == ("ok", 8, b"x" * 8)


def test_nothing_in_time():
    assert run_both(lambda a: None, 8, 0) == ("ok", -1, bytes(8))
    # Never longer than asked (it may stop earlier: when another task took the CPU).
    t0 = time.perf_counter()
    assert run_both(lambda a: None, 8, 2_000_000)[1] == -1
    assert time.perf_counter() - t0 < 1.0


def test_peer_closed_and_errors():
    def shut(a):
        a.shutdown(socket.SHUT_WR)

    assert run_both(shut, 8, 1000) == ("ok", 0, bytes(8))
    assert run_both(lambda a: None, 0, 1000) == ("error", "ValueError", None)
    for impl in IMPLS:
        a, b = socket.socketpair()
        a.close()
        b.shutdown(socket.SHUT_RDWR)
        b.close()
        with pytest.raises(OSError):
            impl.recv_spin(b, bytearray(8), 1000)


def test_data_arriving_while_spinning():
    for impl in IMPLS:
        a, b = socket.socketpair()
        try:

            t = threading.Timer(0.001, a.sendall, (b"late",))
            t.start()
            buf = bytearray(8)
            # Data while spinning, or -1 when the spin gave the CPU away (then a plain recv).
            got = impl.recv_spin(b, buf, 2_000_000_000)
            if got < 0:
                got = b.recv_into(buf)
            t.join()
            assert (got, bytes(buf[:got])) == (4, b"late")
        finally:
            a.close()
            b.close()

"""The benchmarks on the test cluster (radosgw_bench.py, scaleout_bench.py) run one at a time:
each holds an exclusive flock (scaleout_bench.bench_lock) for its whole run, and a second run
says whom it waits for and goes on once the first is done."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")

_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from scaleout_bench import bench_lock
    with bench_lock("second", sys.argv[2]):
        print("in", flush=True)
""")


def _line(stream, deadline: float) -> str:
    """The next line of `stream` (bounded by `deadline`: a hung child fails the test)."""
    os.set_blocking(stream.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = stream.read()
        if chunk:
            buf += chunk
            if b"\n" in buf:
                return buf.decode()
        time.sleep(0.05)
    raise AssertionError(f"no line within the bound (got {buf!r})")


def test_a_second_run_waits_for_the_first_and_says_so(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    try:
        from scaleout_bench import BENCH_LOCK, bench_lock
    finally:
        sys.path.remove(BENCHMARKS)
    assert BENCH_LOCK == "/var/tmp/pithos-ceph/bench.lock"  # (the path the README names)
    path = str(tmp_path / "state" / "bench.lock")
    with bench_lock("first", path):
        # Held: nobody else can take it.
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the benchmark lock was not held")
            except BlockingIOError:
                pass
        finally:
            os.close(fd)
        child = subprocess.Popen([sys.executable, "-c", _CHILD, BENCHMARKS, path],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            waiting = _line(child.stderr, time.monotonic() + 60)
            assert "waiting for" in waiting and "held by first pid" in waiting, waiting
            assert child.poll() is None  # still waiting while the first holds it
        except BaseException:
            child.kill()
            child.wait()
            raise
    # Released: the second run goes on.
    try:
        assert _line(child.stdout, time.monotonic() + 60).strip() == "in"
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

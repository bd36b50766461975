"""The writer lock of a SQLite database shared by threads and processes
(pithos.core.locks.WriterLock), taken by the packs index's writers (pithos.blocker.packs).

Writers of the packs index queue on a flock(2) rather than in SQLite's busy handler; each
process opens the lock's file for itself (flock's owner is the open file, which a forked
child would otherwise share with its parent)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from pithos.core.locks import WriterLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Read-modify-write of a counter file with a pause in the middle: two holders at once lose
# an increment (the pause makes that near certain without the lock).
_BUMPER = """
import os, sys, threading, time
from pithos.core.locks import WriterLock
lock = WriterLock(sys.argv[1])
counter = os.path.join(sys.argv[1], "counter")

def bump(n):
    for _ in range(n):
        with lock:
            with open(counter) as f:
                value = int(f.read())
            time.sleep(0.0005)
            with open(counter, "w") as f:
                f.write(str(value + 1))

threads = [threading.Thread(target=bump, args=(int(sys.argv[2]),)) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_threads_of_several_processes_hold_it_one_at_a_time(tmp_path):
    (tmp_path / "counter").write_text("0")
    procs = [subprocess.Popen([sys.executable, "-c", _BUMPER, str(tmp_path), "40"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": ROOT}) for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    assert (tmp_path / "counter").read_text() == str(3 * 3 * 40)


def test_a_forked_child_waits_for_its_parent_s_hold(tmp_path):
    """The child inherits the parent's open file; were it to flock through it, it would get
    the lock the parent holds at once."""
    log = tmp_path / "log"
    script = textwrap.dedent("""
        import os, sys, time
        from pithos.core.locks import WriterLock
        lock = WriterLock(sys.argv[1])
        log = os.path.join(sys.argv[1], "log")

        def note(line):
            with open(log, "a") as f:
                f.write(line + "\\n")

        with lock:
            pid = os.fork()
            if pid == 0:
                with lock:
                    note("child holds")
                os._exit(0)
            time.sleep(0.5)  # (a child sharing the hold would have noted by now)
            note("parent lets go")
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0
    assert log.read_text().splitlines() == ["parent lets go", "child holds"]


def test_a_holder_s_exception_lets_it_go(tmp_path):
    lock = WriterLock(str(tmp_path))
    try:
        with lock:
            raise KeyError("x")
    except KeyError:
        pass
    got = threading.Event()

    def take() -> None:
        with lock:
            got.set()

    t = threading.Thread(target=take)
    t.start()
    t.join(timeout=30)
    assert got.is_set()
    lock.close()

"""SharedSyncfs (pithos.blocker.local_files): a syncfs(2) shared by the callers that want one
at the same time.  A caller returns only once a syncfs that began after its call completed
(so whatever it wrote before calling is durable), concurrent callers share syncfs calls,
and a failed one is raised to its caller and covers nobody.  The system call is replaced by
a recording one (as WalSync's tests replace fsync): the order of events is what is checked."""

from __future__ import annotations

import ctypes
import errno
import itertools
import threading
import time

from pithos.blocker.local_files import SharedSyncfs


class RecordingSyncfs:
    def __init__(self, fail_first: int = 0) -> None:
        self.clock = itertools.count()
        self.calls: list[tuple[int, int]] = []  # (began, ended) on the clock
        self.fail_first = fail_first

    def __call__(self, fd: int) -> int:
        began = next(self.clock)
        time.sleep(0.01)  # (long enough that other callers arrive meanwhile)
        ended = next(self.clock)
        if self.fail_first:
            self.fail_first -= 1
            ctypes.set_errno(errno.EIO)
            return -1
        self.calls.append((began, ended))
        return 0


def test_each_caller_is_covered_by_a_syncfs_begun_after_its_call_and_callers_share():
    fake = RecordingSyncfs()
    shared = SharedSyncfs(-1, fake)
    covered: list[bool] = []

    def caller() -> None:
        for _ in range(10):
            wrote = next(fake.clock)  # its write, then its call
            shared.sync()
            returned = next(fake.clock)
            covered.append(any(wrote < began and ended < returned
                               for began, ended in fake.calls))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(covered) == 80 and all(covered)
    assert len(fake.calls) < 80  # shared: fewer syncfs calls than callers


def test_a_failed_syncfs_is_its_caller_s_error_and_the_next_caller_syncs_again():
    fake = RecordingSyncfs(fail_first=1)
    shared = SharedSyncfs(-1, fake)
    try:
        shared.sync()
    except OSError as exc:
        assert exc.errno == errno.EIO
    else:
        raise AssertionError("the failed syncfs was not raised")
    assert fake.calls == []
    shared.sync()
    assert len(fake.calls) == 1

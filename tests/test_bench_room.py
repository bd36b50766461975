"""The benches refuse to start without the room their run needs (benchmarks/room.py): a run
that fills the disk or the test cluster half-way measures the full disk and is thrown away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import room  # noqa: E402

from tests.conftest import CEPH_CONF  # noqa: E402


def test_the_disk_check_passes_what_fits_and_refuses_what_does_not(tmp_path):
    free = room.disk_free(tmp_path)
    assert free > 0
    room.require_disk(tmp_path, 1, "a bench")
    with pytest.raises(SystemExit) as refused:
        room.require_disk(tmp_path, free * 2, "a bench")
    message = str(refused.value)
    assert message.startswith("a bench: ") and "\n" not in message
    assert str(tmp_path) in message and "free room first" in message


def test_the_cluster_check_reads_the_test_cluster_s_free_room(cluster):
    ceph_conf = CEPH_CONF  # (the `cluster` fixture: skipped, or failed in CI, without one)
    free = room.osd_free(ceph_conf)
    assert free > 0
    room.require_osd(ceph_conf, 1, "a bench")
    with pytest.raises(SystemExit) as refused:
        room.require_osd(ceph_conf, free * 2, "a bench")
    assert "Ceph cluster" in str(refused.value) and "\n" not in str(refused.value)


def test_sync_bench_refuses_before_making_its_data_set(tmp_path):
    # A scale whose data set no disk holds: refused before a byte is written.  (Without the
    # check the bench would start writing it: stopped after a few seconds, and failed.)
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", "sync_bench.py"), "--scale",
            "100000", "--tools", "pithos-sync", "--work", str(tmp_path / "w")]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("sync_bench began its run instead of refusing it")
    assert done.returncode != 0
    assert "sync_bench: " in done.stderr and "free room first" in done.stderr
    assert not (tmp_path / "w").exists()

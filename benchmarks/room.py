"""Refuse to start a benchmark that would fill the disk or the Ceph cluster part-way.

A run that runs out of room half-way measures the full disk (a 507, an OSD gone read-only,
"CLUSTER DISTURBED") and is thrown away; and a run killed before its clean-up leaves its data
behind (a swift_bench run wrote ~30 GB, radosgw_bench ~11 GB into the test cluster), so the
next one starts with less.  Each bench checks here first and says what to free.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

GB = 10**9


def disk_free(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or
    that would hold it: its nearest existing parent's)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def require_disk(path: Path, need: int, what: str) -> None:
    """SystemExit with a one-line reason unless `need` bytes are free where `path` is."""
    _refuse_short(disk_free(path), need, what, f"on the file system of {path}",
                  f"free room first (a killed run's leftovers are under {path})")


def osd_free(ceph_conf: str) -> int:
    """Bytes the cluster still has (`ceph df`'s total_avail_bytes)."""
    done = subprocess.run(["ceph", "-c", ceph_conf, "df", "--format", "json"],
                          capture_output=True, text=True, timeout=60, check=True)
    return int(json.loads(done.stdout)["stats"]["total_avail_bytes"])


def require_osd(ceph_conf: str, need: int, what: str) -> None:
    """SystemExit with a one-line reason unless the cluster has `need` bytes free."""
    _refuse_short(osd_free(ceph_conf), need, what, f"in the Ceph cluster of {ceph_conf}",
                  "remove a killed run's pools or remake the test cluster (scripts/ceph "
                  "down, remove its directory, scripts/ceph up)")


def _refuse_short(free: int, need: int, what: str, where: str, remedy: str) -> None:
    if free < need:
        raise SystemExit(f"{what}: {free / GB:.1f} GB free {where}, the run needs about "
                         f"{need / GB:.0f} GB; {remedy}")

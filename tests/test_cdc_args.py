"""The native FastCDC scans (native/cdc.pyx's `cuts`, native/cdchash.pyx's `cut_hash`) refuse
sizes that would cut no chunk: they run without the GIL, so a min_size of 0 killed the process
(cdchash divides by it: SIGFPE) or, as a max_size of 0, cut empty chunks for ever, growing
their list until memory ran out.  Each call runs in a child process, bounded in time, so a
build without the checks fails here instead of taking pytest down with it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pithos.core.native import native

_CALL = """
import os, sys
from pithos.core import cdc
from pithos.core.native import native
mod = native(sys.argv[1])
fn = mod.cut_hash if sys.argv[1].endswith("cdchash") else mod.cuts
mask_s, mask_l = cdc.masks(cdc.AVG_SIZE)
data = os.urandom(200_000)
try:
    fn(data, 0, len(data), True, int(sys.argv[2]), cdc.AVG_SIZE, int(sys.argv[3]),
       mask_s, mask_l, cdc.GEAR)
except ValueError as exc:
    print("ValueError", exc)
else:
    print("accepted")
"""


@pytest.mark.parametrize("module", ["pithos.core._cdc", "pithos.core._cdchash"])
@pytest.mark.parametrize("min_size,max_size", [(0, 65536), (-1, 65536), (4096, 0),
                                               (4096, -5), (65537, 65536)])
def test_sizes_that_cut_nothing_are_refused(module: str, min_size: int, max_size: int) -> None:
    if native(module) is None:
        pytest.skip(f"{module} is not built")
    try:
        done = subprocess.run([sys.executable, "-c", _CALL, module, str(min_size),
                               str(max_size)], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module} with min {min_size}, max {max_size}: still cutting after 20 s")
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.startswith("ValueError"), done.stdout


@pytest.mark.parametrize("module", ["pithos.core._cdc", "pithos.core._cdchash"])
def test_the_smallest_sizes_still_cut(module: str) -> None:
    mod = native(module)
    if mod is None:
        pytest.skip(f"{module} is not built")
    from pithos.core import cdc

    data = bytes(range(256)) * 40
    fn = mod.cut_hash if module.endswith("cdchash") else mod.cuts
    out = fn(data, 0, len(data), True, 1, cdc.AVG_SIZE, 1, *cdc.masks(cdc.AVG_SIZE), cdc.GEAR)
    # One byte a chunk: every chunk at least a byte, none past max_size.
    count = len(out[1]) // cdc.ENTRY.size if module.endswith("cdchash") else len(out)
    assert count == len(data)

"""Shared fixtures, and the guard that makes CI fail when a test that should run was skipped.

`PITHOS_REQUIRE_ALL=1` (set by scripts/test, hence by CI) turns every skip into a failure of the
run: on the CI machine every component a test needs is installed by the project's scripts, so a
skip there means something is broken, not absent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REQUIRE_ALL = os.environ.get("PITHOS_REQUIRE_ALL") == "1"
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_ALL and _skipped:
        print(f"\nPITHOS_REQUIRE_ALL: {len(_skipped)} test(s) were skipped, which CI forbids:",
              file=sys.stderr)
        for nodeid in _skipped:
            print(f"  {nodeid}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def pithos_cli(tmp_path):
    """Run `pithos` as a real subprocess on a data directory of the test's own."""
    data_dir = tmp_path / "data"

    def run(*args: str, input: bytes | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[bytes]:
        cmd = [sys.executable, "-m", "pithos.cli.main", args[0], "--data-dir", str(data_dir),
               *args[1:]]
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr.decode()}")
        return proc

    run.data_dir = data_dir  # type: ignore[attr-defined]
    return run

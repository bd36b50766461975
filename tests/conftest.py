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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PithosServer:
    """A real `pithos serve` process on a free loopback port, with user test:tester (admin of
    account test) and test2:tester2 (admin of test2), and test:reader (not admin)."""

    def __init__(self, data_dir, workers: int = 1) -> None:
        import time
        import urllib.request

        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth_url = f"{self.url}/auth/v1.0"
        for spec, key, admin in (("test:tester", "testing", True),
                                 ("test2:tester2", "testing2", True),
                                 ("test:reader", "reading", False)):
            subprocess.run([sys.executable, "-m", "pithos.cli.main", "user", "add", spec,
                            "--key", key, *(["--admin"] if admin else []),
                            "--data-dir", str(data_dir)], check=True, capture_output=True,
                           timeout=60)
        self.log = open(os.path.join(str(data_dir), "serve.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pithos.cli.main", "serve", "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{self.port}", "--workers", str(workers)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(self.log.name, "rb") as f:
                    raise RuntimeError("pithos serve did not start: "
                                       + f.read().decode()[-2000:])
            time.sleep(0.1)

    def connection(self, user: str = "test:tester", key: str = "testing"):
        import swiftclient

        return swiftclient.Connection(authurl=self.auth_url, user=user, key=key,
                                      retries=0, timeout=60)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def pithos_server(tmp_path_factory):
    server = PithosServer(tmp_path_factory.mktemp("pithos-data"))
    yield server
    server.stop()

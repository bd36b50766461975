"""Shared fixtures, and the guard that makes CI fail when a test that should run was skipped.

`PITHOS_REQUIRE_ALL=1` (set by scripts/test, hence by CI) turns every skip into a failure of the
run: on the CI machine every component a test needs is installed by the project's scripts, so a
skip there means something is broken, not absent.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

REQUIRE_ALL = os.environ.get("PITHOS_REQUIRE_ALL") == "1"


def readable(f, timeout_s: float) -> bool:
    """Whether `f` (a socket, a pipe, anything with fileno()) has something to read (or its
    end) within `timeout_s`.  poll(2), not select(2): select refuses descriptors past 1023,
    which a test worker that has run hundreds of server tests reaches."""
    poller = select.poll()
    poller.register(f, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


class CountingPool(ThreadPoolExecutor):
    """A thread pool that counts the tasks handed to it (how many hand-offs a call costs)."""

    def __init__(self, workers: int = 2) -> None:
        super().__init__(workers)
        self.tasks = 0

    def submit(self, fn, /, *args, **kwargs):
        self.tasks += 1
        return super().submit(fn, *args, **kwargs)


def native_module(name: str):
    """(the built extension `name` or None, the pytestmark that skips a module without it).
    Under PITHOS_REQUIRE_ALL (CI) that skip fails the run: a silently missing extension
    would otherwise turn a whole module of twin tests into nothing."""
    try:
        module = importlib.import_module(name)
    except ImportError:  # pragma: no cover - CI requires the build
        module = None
    return module, pytest.mark.skipif(module is None, reason=f"{name} not built")
_skipped: list[str] = []


def twins_agree(pure, native, name: str, *args):
    """`name(*args)` of a native module and of its pure twin: the same result, or the same
    error class; returns ("ok", result) or ("error", class name)."""
    results = []
    for impl in (pure, native):
        try:
            results.append(("ok", getattr(impl, name)(*args)))
        except (ValueError, OverflowError, TypeError) as exc:
            results.append(("error", type(exc).__name__))
    assert results[0] == results[1], (results[0][0], results[1][0])
    return results[0]


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


# For `PithosServer(..., serve_args=("--compute",), env=ROOMY_COMPUTE)`: the local agent
# offers room for many servers (each made to go to ERROR at once, no VM runs:
# tests/test_authz_matrix.py), and every account's quota takes them all.
ROOMY_COMPUTE = {"PITHOS_COMPUTE_AGENT_ARGS": "--ram-mib 100000 --vcpus 1000",
                 "PITHOS_COMPUTE_QUOTA": "instances=1000,cores=1000,ram_mib=1000000"}


class PithosServer:
    """A real `pithos serve` process on a free loopback port, with user test:tester (admin of
    account test) and test2:tester2 (admin of test2), and test:reader (not admin)."""

    def __init__(self, data_dir, workers: int = 1, blocks: str | None = None,
                 catalog: str | None = None, port: int | None = None,
                 serve_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        """`serve_args`: more options for `pithos serve` (e.g. --client-timeout); `env`: more
        environment for it (e.g. ROOMY_COMPUTE)."""
        import time
        import urllib.request

        self.data_dir = data_dir
        self.storage_flags = ["--data-dir", str(data_dir)]
        if blocks:
            self.storage_flags += ["--blocks", blocks]
        if catalog:
            self.storage_flags += ["--catalog", catalog]
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth_url = f"{self.url}/auth/v1.0"
        for spec, key, admin in (("test:tester", "testing", True),
                                 ("test2:tester2", "testing2", True),
                                 ("test:reader", "reading", False)):
            subprocess.run([sys.executable, "-m", "pithos.cli.main", "user", "add", spec,
                            "--key", key, *(["--admin"] if admin else []),
                            *self.storage_flags], check=True, capture_output=True,
                           timeout=60)
        self.log = open(os.path.join(str(data_dir), "serve.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pithos.cli.main", "serve", *self.storage_flags,
             "--listen", f"127.0.0.1:{self.port}", "--workers", str(workers), *serve_args],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env} if env else None)
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
            # SIGINT: gunicorn's quick shutdown (SIGTERM waits for idle keep-alive clients).
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.log.close()


def scaleout_storage(name: str):
    """(blocks URL, catalog URL, cleanup) on the real Ceph cluster and PostgreSQL server that
    scripts/test starts: a fresh RADOS namespace and a fresh database.  Skips when they are
    not there (which PITHOS_REQUIRE_ALL turns into a failure in CI)."""

    conf = os.environ.get("PITHOS_CEPH_CONF")
    pg = os.environ.get("PITHOS_TEST_POSTGRES_URL")
    if not conf or not os.path.exists(conf) or not pg:
        pytest.skip("the scale-out configuration needs PITHOS_CEPH_CONF and "
                    "PITHOS_TEST_POSTGRES_URL (scripts/test sets both)")
    catalog, drop = postgres_database(name)
    db = catalog.rsplit("/", 1)[1]
    pool = os.environ.get("PITHOS_CEPH_POOL", "pithos")

    def cleanup() -> None:
        from pithos.blocker.rados import QUARANTINE_SUFFIX

        drop()
        purge_namespace(conf, pool, db)
        purge_namespace(conf, pool, db + QUARANTINE_SUFFIX)

    return f"rados://{pool}?conf={conf}&namespace={db}", catalog, cleanup


def purge_namespace(conf: str, pool: str, namespace: str) -> None:
    """Remove every object of a test's RADOS namespace: the test cluster has one OSD, and the
    namespaces the suite's runs left behind once filled it (ENOSPC, aborting a benchmark)."""
    import rados

    handle = rados.Rados(conffile=conf, conf={"client_mount_timeout": "5"})
    handle.connect(timeout=10)
    try:
        with handle.open_ioctx(pool) as ioctx:
            ioctx.set_namespace(namespace)
            for obj in list(ioctx.list_objects()):
                with contextlib.suppress(rados.ObjectNotFound):  # (gone meanwhile)
                    ioctx.remove_object(obj.key)
    finally:
        handle.shutdown()


def catalog_databases() -> list[str]:
    """The catalog databases a suite runs on: SQLite, and PostgreSQL when scripts/test (or
    PITHOS_TEST_POSTGRES_URL) provides one; with PITHOS_REQUIRE_POSTGRES a missing server
    makes the PostgreSQL cases skip, which PITHOS_REQUIRE_ALL turns into failures."""
    found = ["sqlite"]
    if os.environ.get("PITHOS_TEST_POSTGRES_URL") or os.environ.get("PITHOS_REQUIRE_POSTGRES"):
        found.append("postgresql")
    return found


def postgres_database(name: str):
    """(URL, drop) of a fresh database on the PostgreSQL server of PITHOS_TEST_POSTGRES_URL;
    skips when there is none."""
    import secrets

    from sqlalchemy import create_engine, text

    base = os.environ.get("PITHOS_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PITHOS_TEST_POSTGRES_URL is not set")
    db = f"{name}_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()

    return base.rsplit("/", 1)[0] + "/" + db, drop


@contextlib.contextmanager
def _catalog_database(kind: str, tmp_path) -> Iterator[str]:
    """The URL of an empty catalog database of `kind` (catalog_databases), dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/catalog.sqlite"
        return
    url, drop = postgres_database("cat")
    try:
        yield url
    finally:
        drop()


@pytest.fixture(params=catalog_databases())
def catalog_url(request, tmp_path):
    """The URL of an empty catalog database of each kind."""
    with _catalog_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=catalog_databases())
def catalog(request, tmp_path):
    """An empty Catalog on each catalog database (a test may narrow the kinds with an
    indirect parametrization)."""
    from pithos.catalog import Catalog

    with _catalog_database(request.param, tmp_path) as url:
        cat = Catalog(url)
        yield cat
        cat.close()


@pytest.fixture
def worker_offload():
    """An offload that says its callers share an event loop, as a server worker's does (the
    catalog then caches its look-ups and grants, and batches on PostgreSQL)."""
    from concurrent.futures import ThreadPoolExecutor

    from pithos.core.offload import Offload

    pool, spawner = ThreadPoolExecutor(2), ThreadPoolExecutor(2)
    yield Offload(pool, cooperative=True, spawner=spawner, owned=(pool, spawner))
    pool.shutdown()
    spawner.shutdown()


@pytest.fixture
def container(catalog):
    """(account id, ContainerInfo) of container "c" of account "acct" in `catalog`."""
    acct = catalog.ensure_account("acct")
    catalog.create_container(acct, "c")
    return acct, catalog.container(acct, "c")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A module lists the configurations its server runs in: SERVER_CONFIGS = ("embedded",
    # "scaleout"); the default is the embedded one only.
    if "pithos_server" in metafunc.fixturenames:
        configs = getattr(metafunc.module, "SERVER_CONFIGS", ("embedded",))
        metafunc.parametrize("pithos_server", configs, indirect=True, scope="module")


@pytest.fixture(scope="module")
def pithos_server(request, tmp_path_factory):
    """A live server; "embedded" (local blocks, SQLite) or "scaleout" (RADOS, PostgreSQL)."""
    config = getattr(request, "param", "embedded")
    cleanup = None
    blocks = catalog = None
    if config == "scaleout":
        blocks, catalog, cleanup = scaleout_storage("srv")
    server = PithosServer(tmp_path_factory.mktemp("pithos-data"), blocks=blocks,
                          catalog=catalog)
    server.config = config
    yield server
    server.stop()
    if cleanup is not None:
        cleanup()


CEPH_CONF = os.environ.get("PITHOS_CEPH_CONF", "/var/tmp/pithos-ceph/ceph.conf")
CEPH_POOL = os.environ.get("PITHOS_CEPH_POOL", "pithos")


@pytest.fixture(scope="module")
def cluster():
    """A connected librados handle on the test cluster (scripts/ceph up), or a skip saying why
    there is none (which PITHOS_REQUIRE_ALL turns into a failure in CI)."""
    try:
        import rados
    except ImportError:
        pytest.skip("the rados module is not importable (run scripts/ceph up)")
    if not os.path.exists(CEPH_CONF):
        pytest.skip(f"no Ceph cluster: {CEPH_CONF} is absent (run scripts/ceph up)")
    handle = rados.Rados(conffile=CEPH_CONF, conf={"client_mount_timeout": "5"})
    try:
        handle.connect(timeout=5)
    except rados.Error as exc:
        pytest.skip(f"the Ceph cluster of {CEPH_CONF} is not reachable: {exc}")
    if not handle.pool_exists(CEPH_POOL):
        handle.shutdown()
        pytest.skip(f"the Ceph cluster has no pool {CEPH_POOL}")
    yield handle
    handle.shutdown()

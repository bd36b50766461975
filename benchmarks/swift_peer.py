"""A real single-node OpenStack Swift on loopback, as the baseline of swift_bench.py.

What runs: memcached (tempauth keeps its tokens there, and the proxy caches account and
container info there: a Swift without it is not a Swift anyone deploys), and the proxy (with
tempauth), account, container and object servers, each a `swift-*-server CONF` process with
`workers` workers, over one-replica rings of one device under the work directory. No
replicator, auditor, updater or expirer runs: they are background jobs, and on one device with
one replica they would have nothing to do but compete for the CPU.

Swift lives in its own virtualenv (benchmarks/.swift-venv by default), built on first use from
PyPI; it is never installed into the project's venv. Its one system dependency beyond Python
is memcached, which this module installs with apt-get when it runs as root and finds none.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench_http import HttpError, swift_auth

SWIFT_VERSION = "2.38.3"
TEST_USER = "test:tester"
TEST_KEY = "testing"


def free_port() -> int:
    """A port nobody listens on now. Racy in principle, fine on a quiet loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """One server process in its own session, so that stopping it also stops the workers it
    forked, and Ctrl-C at the terminal reaches only the benchmark, which then tears down."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process of this service's session."""
        return session_cpu_seconds(self.proc.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.alive():
            # The session id is the leader's pid: the group holds the workers too.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        else:
            # Workers of a leader that died may linger in its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


_TICKS = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(sid: int) -> float:
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def wait_for_auth(auth_url: str, services: list[Service], timeout_s: float) -> tuple[str, str]:
    """Poll v1.0 auth until it answers with a token: that needs the whole stack up."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        for service in services:
            if not service.alive():
                raise RuntimeError(
                    f"{service.name} exited with {service.proc.returncode}:\n" + service.log_tail()
                )
        try:
            return swift_auth(auth_url, TEST_USER, TEST_KEY)
        except (HttpError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    tails = "\n".join(f"--- {s.name}:\n{s.log_tail()}" for s in services)
    raise RuntimeError(f"auth at {auth_url} not ready after {timeout_s}s ({last})\n{tails}")


def ensure_swift_venv(venv: Path, version: str = SWIFT_VERSION) -> Path:
    """Create `venv` with swift==version unless it already has it; returns its bin dir.
    PyPI's PyECLib wheel bundles liberasurecode, so no system library is needed."""
    bin_dir = venv / "bin"
    python = bin_dir / "python"
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('swift'))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return bin_dir
    print(f"installing swift=={version} into {venv} ...", file=sys.stderr, flush=True)
    # The base interpreter, not the project's venv: Swift must not see the project's packages.
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", "--clear", str(venv)])
    run([str(python), "-m", "pip", "install", "-q", f"swift=={version}"])
    return bin_dir


def ensure_memcached() -> str:
    found = shutil.which("memcached")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("Swift's tempauth needs memcached: apt-get install memcached")
    print("installing memcached with apt-get ...", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "memcached"], env=env)
    found = shutil.which("memcached")
    if not found:
        raise RuntimeError("apt-get installed memcached but it is not on PATH")
    return found


def check_xattrs(directory: Path) -> bool:
    """Swift's object server keeps object metadata in user xattrs and refuses to work without
    them."""
    probe = directory / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.swift.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


_COMMON = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = {workers}
user = {user}
swift_dir = {swift_dir}
devices = {devices}
mount_check = false
# WARNING, not Swift's default INFO: Swift would log one line per request (proxy access log
# and object server request log) to syslog, which this benchmark's server does not do.
log_level = WARNING
log_name = {name}
"""

_BACKEND = """
[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

# The middleware that give the features pithos serves too (tempauth, listings formats,
# server-side copy, SLO, DLO), in the order of Swift's proxy-server.conf-sample.
_PROXY = """
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats tempauth
    copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcache_port}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""

_SWIFT_CONF = """\
[swift-hash]
swift_hash_path_suffix = swift-bench-suffix
swift_hash_path_prefix = swift-bench-prefix

[storage-policy:0]
name = Policy-0
default = yes
"""


class SwiftPeer:
    """Swift's four servers plus memcached, configured and run under `work_dir`."""

    name = "swift"

    def __init__(
        self, work_dir: Path, venv: Path, workers: int, proxy_conf: str | None = None
    ) -> None:
        """`proxy_conf`: the proxy's pipeline and filters in place of the benchmark's (the
        conformance run wants more middleware and users); `{memcache_port}` is filled in."""
        self.work_dir = work_dir
        self.venv = venv
        self.workers = workers
        self.proxy_conf = proxy_conf or _PROXY
        self.services: list[Service] = []
        self.auth_url = ""

    def start(self, timeout_s: float = 60.0) -> tuple[str, str]:
        """Install what is missing, write configs and rings, start everything and return
        (storage URL, token) once auth works."""
        bin_dir = ensure_swift_venv(self.venv)
        memcached = ensure_memcached()
        conf_dir = self.work_dir / "etc"
        devices = self.work_dir / "srv"
        logs = self.work_dir / "log"
        for d in (conf_dir, devices / "d1", logs):
            d.mkdir(parents=True, exist_ok=True)
        if not check_xattrs(devices / "d1"):
            raise RuntimeError(f"{devices} has no user xattrs, which Swift needs: use --loopback")
        (conf_dir / "swift.conf").write_text(_SWIFT_CONF)

        ports = {kind: free_port() for kind in ("proxy", "account", "container", "object")}
        memcache_port = free_port()
        user = getpass.getuser()
        for kind, port in ports.items():
            text = _COMMON.format(
                port=port,
                workers=self.workers,
                user=user,
                swift_dir=conf_dir,
                devices=devices,
                name=f"{kind}-server",
            )
            text += (self.proxy_conf if kind == "proxy" else _BACKEND).format(
                kind=kind, memcache_port=memcache_port
            )
            (conf_dir / f"{kind}-server.conf").write_text(text)
            if kind != "proxy":
                self._build_ring(bin_dir, conf_dir, kind, port)

        mc_argv = [memcached, "-l", "127.0.0.1", "-p", str(memcache_port), "-U", "0"]
        mc_argv += ["-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            mc_argv += ["-u", "root"]  # memcached refuses to run as root without -u
        self.services.append(Service("memcached", mc_argv, logs / "memcached.log"))
        for kind in ("account", "container", "object", "proxy"):
            conf = conf_dir / f"{kind}-server.conf"
            # -v also logs to stdout, which lands in the log file: there is no syslog here.
            argv = [str(bin_dir / f"swift-{kind}-server"), str(conf), "-v"]
            self.services.append(Service(f"swift-{kind}-server", argv, logs / f"{kind}.log"))
        self.auth_url = f"http://127.0.0.1:{ports['proxy']}/auth/v1.0"
        return wait_for_auth(self.auth_url, self.services, timeout_s)

    def _build_ring(self, bin_dir: Path, conf_dir: Path, kind: str, port: int) -> None:
        builder = str(conf_dir / f"{kind}.builder")
        tool = str(bin_dir / "swift-ring-builder")
        # 2^10 partitions, 1 replica, min_part_hours 1: one device holds every partition.
        run([tool, builder, "create", "10", "1", "1"])
        run([tool, builder, "add", f"r1z1-127.0.0.1:{port}/d1", "1"])
        # rebalance exits 1 for mere warnings; the ring file is what matters.
        subprocess.run([tool, builder, "rebalance"], capture_output=True, text=True)
        if not (conf_dir / f"{kind}.ring.gz").exists():
            raise RuntimeError(f"swift-ring-builder made no {kind} ring")

    def cpu_seconds(self) -> float:
        return sum(service.cpu_seconds() for service in self.services)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()

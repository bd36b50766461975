"""pithos serve on RADOS + PostgreSQL against Ceph's own RADOS Gateway (radosgw, its Swift
API), on the same Ceph cluster, same machine, same client, same run.

radosgw is Debian's package (installed with apt-get when missing, as root), run in the
foreground on the project's test cluster (scripts/ceph) with beast (`tcp_nodelay=1`) and 64
threads, and a Swift user test:tester (radosgw-admin user create + subuser with a swift key).
pithos serve runs with --workers workers over a fresh RADOS namespace and a fresh PostgreSQL
database (scaleout_bench.py's). The same client (bench_http.py) measures, interleaved:

    PUT and GET of 4 MiB objects (MB/s) at 4 and 16 clients,
    PUT and GET of 4 KiB objects (requests/s) at 8 and 32 clients,

each cell in `--rounds` rounds, the order of the two systems reversed from one round to the
next (and which goes first alternating from cell to cell); every object has unique content.
It prints both figures, pithos/radosgw per cell, and each side's server CPU per request: the
gateway's process (radosgw, or the pithos serve workers) plus the storage daemons' share (the
Ceph daemons of that ceph.conf for both; the PostgreSQL server for pithos).

    .venv/bin/python benchmarks/radosgw_bench.py                  # ~4 minutes
    .venv/bin/python benchmarks/radosgw_bench.py --size 4KiB      # the small cells only
    .venv/bin/python benchmarks/radosgw_bench.py --json out.json

At the end radosgw is stopped and the pools it used (`.rgw.root`, `default.rgw.*`) are
removed, with everything the run wrote; pithos's namespace and database go too.  One run on
the cluster at a time: it holds an flock on /var/tmp/pithos-ceph/bench.lock throughout (a
second run waits, saying so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import room
import swift_bench
from bench_http import CellResult, ObjectLoad, run_cell
from scaleout_bench import (
    ClusterWatch,
    ScaleoutPeer,
    backend_cpu,
    bench_lock,
    scaleout_storage,
)
from swift_bench import BUSY_OTHER_PCT, CONTAINER, Target, _pool, create_container, summarize, unit
from swift_peer import TEST_KEY, TEST_USER, Service, free_port, session_cpu_seconds, wait_for_auth

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1024 * 1024
KiB = 1024
# (size, label, client counts): the cells of issue 27.
CELLS = [(4 * MiB, "4 MiB", (4, 16)), (4 * KiB, "4 KiB", (8, 32))]
SYSTEMS = ("radosgw", "pithos")
# A second pithos of --pithos-b (another checkout, or a script that sets an environment
# variable before it runs pithos), measured in the same run for an A/B.
PITHOS_B = "pithos-b"
RGW_NAME = "client.rgw.pithosbench"
# The pools radosgw uses with its default zone, made here with few placement groups: the
# single OSD takes at most mon_max_pg_per_osd (250), and radosgw would make each with 32.
RGW_POOLS = {".rgw.root": 8, "default.rgw.control": 8, "default.rgw.meta": 8,
             "default.rgw.log": 8, "default.rgw.buckets.index": 8,
             "default.rgw.buckets.non-ec": 8, "default.rgw.buckets.data": 32}


def ceph(conf: str, *argv: str, check: bool = True) -> str:
    done = subprocess.run(["ceph", "-c", conf, "--connect-timeout", "20", *argv],
                          capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"ceph {' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def rgw_admin(conf: str, *argv: str) -> str:
    done = subprocess.run(["radosgw-admin", "-c", conf, *argv], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"radosgw-admin {' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def ensure_radosgw() -> str:
    """The radosgw binary, installed from Debian's package when missing (root only)."""
    found = shutil.which("radosgw")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("radosgw is not installed and installing it needs root "
                           "(apt-get install radosgw)")
    print("installing radosgw with apt-get", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq",
                  "--no-install-recommends", "radosgw"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    found = shutil.which("radosgw")
    if not found:
        raise RuntimeError("apt-get installed radosgw but it is not on PATH")
    return found


def remove_rgw_pools(conf: str) -> None:
    for pool in ceph(conf, "osd", "pool", "ls").split():
        if pool in RGW_POOLS or pool.startswith("default.rgw."):
            ceph(conf, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it",
                 check=False)


class RadosgwPeer:
    """radosgw in the foreground on the cluster of `conf`, with a Swift user; its CPU
    includes the Ceph daemons'."""

    def __init__(self, work_dir: Path, conf: str, threads: int) -> None:
        self.work_dir = work_dir
        self.conf = conf
        self.threads = threads
        self.name = "radosgw"
        self.services: list[Service] = []
        self.auth_url = ""
        self._backend_seen: dict[int, float] = {}
        self._backend_total = 0.0

    def start(self, timeout_s: float = 120.0) -> tuple[str, str]:
        binary = ensure_radosgw()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        conf = self.conf
        # A fresh gateway: pools of an earlier run (a bucket full of its objects) go first.
        remove_rgw_pools(conf)
        for pool, pgs in RGW_POOLS.items():
            ceph(conf, "osd", "pool", "create", pool, str(pgs), str(pgs))
            ceph(conf, "osd", "pool", "application", "enable", pool, "rgw")
        keyring = self.work_dir / "keyring"
        keyring.write_text(ceph(conf, "auth", "get-or-create", RGW_NAME, "mon", "allow rw",
                                "osd", "allow rwx"))
        uid, subuser = TEST_USER.split(":")[0], TEST_USER
        rgw_admin(conf, "user", "create", f"--uid={uid}", f"--display-name={uid}")
        rgw_admin(conf, "subuser", "create", f"--uid={uid}", f"--subuser={subuser}",
                  "--access=full")
        rgw_admin(conf, "key", "create", f"--subuser={subuser}", "--key-type=swift",
                  f"--secret={TEST_KEY}")
        port = free_port()
        run = self.work_dir / "run"
        run.mkdir(exist_ok=True)
        argv = [binary, "-f", "-c", conf, "-n", RGW_NAME, "--keyring", str(keyring),
                "--rgw-frontends", f"beast endpoint=127.0.0.1:{port} tcp_nodelay=1",
                "--rgw-thread-pool-size", str(self.threads),
                "--log-file", str(self.work_dir / "radosgw.log"), "--debug-rgw", "0",
                "--debug-ms", "0", "--admin-socket", str(run / "rgw.asok"),
                "--pid-file", str(run / "rgw.pid"), "--rgw-enable-usage-log", "false",
                "--rgw-dynamic-resharding", "false"]
        self.services.append(Service("radosgw", argv, self.work_dir / "stdout.log"))
        self.auth_url = f"http://127.0.0.1:{port}/auth/v1.0"
        return wait_for_auth(self.auth_url, self.services, timeout_s)

    def cpu_seconds(self) -> float:
        now = {pid: cpu for pid, cpu in backend_cpu(self.conf, -1).items()}
        for pid, cpu in now.items():
            self._backend_total += max(0.0, cpu - self._backend_seen.get(pid, 0.0))
        self._backend_seen = now
        return sum(session_cpu_seconds(s.proc.pid) for s in self.services) + \
            self._backend_total

    def stop(self) -> None:
        for service in self.services:
            service.stop()
        self.services.clear()

    def cleanup(self) -> None:
        remove_rgw_pools(self.conf)
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            ceph(self.conf, "auth", "del", RGW_NAME)


def cell_name(op: str, label: str, clients: int) -> str:
    return f"{op} {label} c={clients}"


def cell_order(sizes: list[str] | None) -> list[tuple[str, int, str, int]]:
    return [(op, size, label, clients) for size, label, counts in CELLS
            if not sizes or label.replace(" ", "") in sizes
            for op in ("PUT", "GET") for clients in counts]


def measure(targets: list[Target], args: argparse.Namespace, watch: ClusterWatch
            ) -> dict[str, dict[str, Any]]:
    """swift_bench.measure over this benchmark's cells: rounds in reversed order, pooled."""
    out = swift_bench.OUT
    results: dict[str, dict[str, Any]] = {t.peer.name: {} for t in targets}
    rounds = max(1, args.rounds)
    for index, (op, size, label, clients) in enumerate(cell_order(args.size)):
        name = cell_name(op, label, clients)
        turn = targets[index % len(targets) :] + targets[: index % len(targets)]
        pooled: dict[str, CellResult] = {}
        verified: dict[str, int] = {}
        disturbed: dict[str, str] = {}
        for r in range(rounds):
            for target in turn if r % 2 == 0 else list(reversed(turn)):
                load = target.loads[size]
                verified_before = load.verified
                before = watch.sample()
                result = run_cell(load.operations(op, clients), clients, args.warmup,
                                  args.seconds / rounds, target.peer.cpu_seconds)
                payload = result.payload_bytes * (1 + args.warmup * rounds / args.seconds)
                why = watch.disturbance(before, watch.sample(), payload)
                system = target.peer.name
                if why:
                    disturbed[system] = why
                pooled[system] = _pool(pooled.get(system), result)
                verified[system] = verified.get(system, 0) + load.verified - verified_before
        for target in turn:
            system = target.peer.name
            row = summarize(size, pooled[system], verified[system])
            row["cluster_disturbed"] = disturbed.get(system, "")
            results[system][name] = row
            print(f"  {system:8} {name:16} {row['value']:8.1f} {unit(size):5}"
                  f" p50 {row['p50_ms']:6.1f} ms p99 {row['p99_ms']:6.1f} ms"
                  f"  CPU ms/req {row['server_cpu_ms_per_req']:5.2f}"
                  f"  CPU % client {row['client_cpu_pct']:3.0f}"
                  f" server {row['server_cpu_pct']:3.0f} kernel {row['kernel_cpu_pct']:3.0f}"
                  f" other {row['other_cpu_pct']:3.0f}"
                  + (f"  CLUSTER DISTURBED: {row['cluster_disturbed']}"
                     if row["cluster_disturbed"] else "")
                  + (f"  ERRORS {row['errors']}: {row['first_errors'][0]}"
                     if row["errors"] else ""),
                  file=out, flush=True)
    return results


def print_table(results: dict[str, dict[str, Any]], sizes: list[str] | None
                ) -> dict[str, float]:
    out = swift_bench.OUT
    ratios: dict[str, float] = {}
    busy = disturbed = False
    print(file=out)
    print(f"{'cell':18} {'radosgw':>14} {'pithos':>14} {'pithos/rgw':>11}"
          f" {'CPU ms/req rgw':>15} {'pithos':>7}", file=out)
    for op, size, label, clients in cell_order(sizes):
        name = cell_name(op, label, clients)
        rows = [results.get(system, {}).get(name) for system in SYSTEMS]
        if not any(rows):
            continue
        line = f"{name:18}"
        for row in rows:
            line += f" {row['value']:8.1f} {unit(size):5}" if row else f" {'-':>14}"
        if rows[0] and rows[1]:
            ratio = rows[1]["value"] / rows[0]["value"] if rows[0]["value"] else 0.0
            ratios[name] = ratio
            line += f" {ratio:10.2f}x"
        else:
            line += f" {'-':>11}"
        for row in rows:
            line += f" {row['server_cpu_ms_per_req']:7.2f}" if row else f" {'-':>7}"
        other = max(row["other_cpu_pct"] for row in rows if row)
        if other > BUSY_OTHER_PCT:
            busy = True
            line += f"  * other CPU {other:.0f}%"
        if any(row and row.get("cluster_disturbed") for row in rows):
            disturbed = True
            line += "  ! cluster disturbed"
        print(line, file=out)
        b = results.get(PITHOS_B, {}).get(name)
        if b:
            line = f"{'  ' + PITHOS_B:18} {'':>14} {b['value']:8.1f} {unit(size):5}"
            line += f" {b['value'] / rows[0]['value']:10.2f}x" if rows[0] and \
                rows[0]["value"] else f" {'-':>11}"
            line += f" {'':>7} {b['server_cpu_ms_per_req']:7.2f}"
            if rows[1] and b["value"]:
                line += f"  pithos/pithos-b {rows[1]['value'] / b['value']:.2f}x"
            print(line, file=out)
    if busy:
        print(f"* other programs took more than {BUSY_OTHER_PCT:g}% of the machine's CPU (one "
              "core is 100%) during the cell: its figures are suspect.", file=out)
    if disturbed:
        print("! an OSD restarted, the cluster was paused, or another client moved data "
              "through the OSDs during the cell: its figures are void.", file=out)
    return ratios


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=SYSTEMS, help="run one system alone")
    p.add_argument("--size", action="append", choices=[c[1].replace(" ", "") for c in CELLS],
                   help="measure only the cells of this object size (repeatable)")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="measured seconds per cell and system, over all rounds")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds per cell, the systems' order reversed each round (default 2)")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds per round")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes of pithos serve (default: 2, the cores)")
    p.add_argument("--rgw-threads", type=int, default=64, help="radosgw's thread pool")
    p.add_argument("--verify-every", type=int, default=16,
                   help="verify each client's first and every Nth request (0: none)")
    p.add_argument("--work-dir", default=str(HERE / ".bench-work"))
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    p.add_argument("--pithos", default=str(REPO / ".venv" / "bin" / "pithos"))
    p.add_argument("--pithos-b", metavar="PATH",
                   help="a second pithos executable, measured in the same run as a third "
                        "system (pithos-b): an A/B of two trees or two settings")
    p.add_argument("--ceph-conf", help="ceph.conf of the cluster (default: PITHOS_CEPH_CONF)")
    p.add_argument("--pool", default=os.environ.get("PITHOS_CEPH_POOL", "pithos"))
    p.add_argument("--postgres-url", help="default: PITHOS_TEST_POSTGRES_URL")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-': stdout)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    swift_bench.OUT = out = sys.stderr if args.json == "-" else sys.stdout
    systems = [args.only] if args.only else list(SYSTEMS)
    if args.pithos_b:
        systems.append(PITHOS_B)
    started = time.monotonic()
    base = Path(args.work_dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="radosgw-", dir=base))
    try:
        with contextlib.ExitStack() as stack:
            # Before anything touches the cluster: another run's gateway has the same name
            # and pools (scaleout_bench.BENCH_LOCK).
            stack.enter_context(bench_lock("radosgw_bench"))
            # The pithos side's storage also finds the cluster's ceph.conf.
            blocks, catalog, conf, pg_port = stack.enter_context(scaleout_storage(args))
            # Every cell's objects of both systems stay until the end (~11 GB), and a run
            # killed before its clean-up leaves them in the cluster.
            room.require_osd(conf, 15 * room.GB, "radosgw_bench")
            watch = ClusterWatch(conf)
            stack.callback(watch.close)
            targets = []
            for system in systems:
                peer: Any
                if system == "radosgw":
                    peer = RadosgwPeer(work / system, conf, args.rgw_threads)
                    stack.callback(peer.cleanup)
                else:
                    if system == PITHOS_B:
                        # Its own namespace and database, as the first one's.
                        blocks, catalog, conf, pg_port = stack.enter_context(
                            scaleout_storage(args))
                    peer = ScaleoutPeer(work / system, Path(
                        args.pithos_b if system == PITHOS_B else args.pithos), args.workers,
                        blocks, catalog, conf, pg_port)
                    peer.name = system
                stack.callback(peer.stop)
                t0 = time.monotonic()
                storage_url, token = peer.start()
                print(f"{system} up in {time.monotonic() - t0:.1f}s at {peer.auth_url}",
                      file=out, flush=True)
                create_container(storage_url, token)
                loads = {size: ObjectLoad(storage_url, token, CONTAINER, size,
                                          args.verify_every) for size, _, _ in CELLS}
                targets.append(Target(peer, loads))
            results = measure(targets, args, watch)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    ratios = print_table(results, args.size)
    print(f"\n{len(systems)} system(s) in {time.monotonic() - started:.0f}s;"
          f" {args.seconds:g}s measured per cell in {args.rounds} round(s), each after"
          f" {args.warmup:g}s warm-up; pithos {args.workers} workers, radosgw"
          f" {args.rgw_threads} threads; CPU ms/req: the gateway and the storage daemons;"
          " MB = 10^6 bytes", file=out)
    if args.json:
        document = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "kernel": platform.release()},
            "settings": {"seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds,
                         "workers": args.workers, "rgw_threads": args.rgw_threads,
                         "verify_every": args.verify_every},
            "results": results,
            "ratios": ratios,
        }
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    failed = any(row["errors"] for rows in results.values() for row in rows.values())
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except RuntimeError as exc:
        sys.exit(f"radosgw_bench: {exc}")

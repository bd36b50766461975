"""pithos serve on the scale-out configuration (RADOS + PostgreSQL) against the embedded one
(local block directory + SQLite), same machine, same client, same run.

Both servers run with --workers worker processes; the scale-out one keeps its blocks in a
fresh namespace of the Ceph pool and its catalog in a fresh PostgreSQL database, both removed
at the end. The same client (bench_http.py) measures, cell by cell and alternating which
server goes first:

    PUT and GET of 4 MiB objects (MB/s) and of 4 KiB objects (requests/s),
    at 1 and 16 concurrent clients,

and prints both figures and the ratio scaleout/embedded per cell. Sampled requests are
verified as in swift_bench.py (PUT ETags against the MD5 sent, GET bodies byte for byte).

    .venv/bin/python benchmarks/scaleout_bench.py                 # ~3.5 minutes
    .venv/bin/python benchmarks/scaleout_bench.py --seconds 5     # quicker, noisier
    .venv/bin/python benchmarks/scaleout_bench.py --json out.json

Needs the Ceph cluster and PostgreSQL running (scripts/ceph up, scripts/postgres up); their
addresses come from --ceph-conf / --postgres-url, else PITHOS_CEPH_CONF /
PITHOS_TEST_POSTGRES_URL, else what those scripts report. The scale-out server's CPU column
includes the Ceph daemons and the PostgreSQL server, which do its storage work.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import swift_bench
from bench_http import ObjectLoad, run_cell
from pithos_peer import PithosPeer
from swift_bench import (
    BUSY_OTHER_PCT,
    CONTAINER,
    SIZES,
    Target,
    cell_name,
    cell_order,
    create_container,
    summarize,
    unit,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SYSTEMS = ("embedded", "scaleout")
# One benchmark on the test cluster at a time (this one and radosgw_bench.py): two at once
# collide (radosgw_bench's gateway name and pools, ClusterWatch's byte counts) and share the
# two cores.  Beside the cluster's state (scripts/ceph), whatever --ceph-conf says.
BENCH_LOCK = "/var/tmp/pithos-ceph/bench.lock"
_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def bench_lock(name: str, path: str = BENCH_LOCK) -> Iterator[None]:
    """Hold the cluster's benchmark lock (an exclusive flock on `path`) for the block, after
    waiting for whichever benchmark holds it, with a line saying so."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
            print(f"{name}: waiting for {path}, held by {holder} (one benchmark on the "
                  "cluster at a time)", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{name} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # (lets the lock go)


def _script_output(*argv: str) -> str:
    done = subprocess.run([str(REPO / "scripts" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else ""


def _processes() -> Iterator[tuple[int, int, bytes, float]]:
    """(pid, ppid, command line, CPU seconds) of every process."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        yield int(entry.name), int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / _TICKS


def backend_cpu(ceph_conf: str, pg_port: int, database: str | None = None
                ) -> dict[int, float]:
    """CPU seconds of each storage daemon the scale-out server uses: every process started
    with this ceph.conf (mon, mgr, osd) and the PostgreSQL server on `pg_port` (the
    postmaster and its children: backends, walwriter, checkpointer...).  With `database`,
    only the backends connected to it (`postgres: USER DATABASE ...`) among the backends:
    the server may also serve others' databases (a test suite running beside)."""
    procs = list(_processes())
    conf = ceph_conf.encode()
    port = f"-p {pg_port} ".encode()
    postmasters = {pid for pid, _, cmd, _ in procs if b"postgres" in cmd and port in cmd + b" "}

    def ours(cmd: bytes) -> bool:
        words = cmd.split()
        backend = len(words) >= 4 and words[0] == b"postgres:" and b"(" in words[3]
        return database is None or not backend or words[2] == database.encode()

    return {pid: cpu for pid, ppid, cmd, cpu in procs
            if (conf in cmd and b"ceph-" in cmd) or pid in postmasters
            or (ppid in postmasters and ours(cmd))}


class ScaleoutPeer(PithosPeer):
    """`pithos serve --blocks rados://... --catalog postgresql...`; its CPU includes the
    backend daemons'."""

    def __init__(self, work_dir: Path, pithos: Path, workers: int, blocks: str, catalog: str,
                 ceph_conf: str, pg_port: int) -> None:
        super().__init__(work_dir, pithos, workers, ["--blocks", blocks, "--catalog", catalog],
                         name="scaleout")
        self.ceph_conf = ceph_conf
        self.pg_port = pg_port
        # Backends of this database only: others may share the PostgreSQL server.
        self.database = catalog.rsplit("/", 1)[1]
        # Backend CPU as a running sum of per-process increments, so that a daemon restarted
        # meanwhile (its counter starts again from zero) never makes it go backwards.
        self._backend_seen: dict[int, float] = {}
        self._backend_total = 0.0

    def cpu_seconds(self) -> float:
        now = backend_cpu(self.ceph_conf, self.pg_port, self.database)
        for pid, cpu in now.items():
            self._backend_total += max(0.0, cpu - self._backend_seen.get(pid, 0.0))
        self._backend_seen = now
        return super().cpu_seconds() + self._backend_total


class ClusterWatch:
    """What else happened on the cluster during a scale-out cell. The OSD map epoch (asked
    of the monitor) moves when an OSD restarts or goes down, or when someone pauses the
    cluster (`ceph osd pause`, as tests/test_blockstore_rados.py does); the OSDs' byte
    counters (`perf dump`: op_in_bytes + op_out_bytes) show traffic beyond the cell's own
    (another client, e.g. `rados bench`, sharing the cluster)."""

    def __init__(self, ceph_conf: str) -> None:
        import rados

        self.cluster = rados.Rados(conffile=ceph_conf)
        self.cluster.connect(timeout=30)

    def _json(self, ret_out_err: tuple[int, bytes, str]) -> Any:
        ret, out, err = ret_out_err
        if ret != 0:
            raise RuntimeError(f"ceph command failed: {err}")
        return json.loads(out)

    def sample(self) -> tuple[int, int]:
        """(OSD map epoch, bytes all OSDs moved for clients so far)."""
        dump = self._json(self.cluster.mon_command(
            json.dumps({"prefix": "osd dump", "format": "json"}), b"", timeout=30))
        moved = 0
        for osd in dump["osds"]:
            if osd["up"]:
                perf = self._json(self.cluster.osd_command(
                    osd["osd"], json.dumps({"prefix": "perf dump"}), b"", timeout=30))["osd"]
                moved += perf["op_in_bytes"] + perf["op_out_bytes"]
        return int(dump["epoch"]), moved

    def disturbance(self, before: tuple[int, int], after: tuple[int, int], payload: float
                    ) -> str:
        """Why a cell's figures are void, or "" if they are not. `payload`: the bytes the
        cell's own requests carried over the whole cell (warm-up included)."""
        if after[0] != before[0]:
            return "OSD map changed (an OSD restarted or went down, or a pause)"
        foreign = after[1] - before[1] - 1.25 * payload
        if foreign > max(0.25 * payload, 64e6):
            return f"{foreign / 1e6:.0f} MB of other OSD traffic"
        return ""

    def close(self) -> None:
        self.cluster.shutdown()


@contextlib.contextmanager
def scaleout_storage(args: argparse.Namespace) -> Iterator[tuple[str, str, str, int]]:
    """(blocks URL, catalog URL, ceph.conf, PostgreSQL port): a fresh RADOS namespace and a
    fresh database, emptied and dropped at the end."""
    conf = args.ceph_conf or os.environ.get("PITHOS_CEPH_CONF") or _script_output("ceph", "conf")
    pg = (args.postgres_url or os.environ.get("PITHOS_TEST_POSTGRES_URL")
          or _script_output("postgres", "url"))
    if not conf or not os.path.exists(conf) or not pg:
        raise RuntimeError("the scale-out configuration needs a Ceph cluster and PostgreSQL: "
                           "scripts/ceph up and scripts/postgres up (or --ceph-conf and "
                           "--postgres-url)")
    from sqlalchemy import create_engine, text

    from pithos.blocker.urls import open_block_store

    name = f"bench_{secrets.token_hex(4)}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    blocks = f"rados://{args.pool}?conf={conf}&namespace={name}"
    try:
        yield blocks, pg.rsplit("/", 1)[0] + "/" + name, conf, urlsplit(pg).port or 5432
    finally:
        # Free the OSD's room: the benchmark writes gigabytes.
        with contextlib.suppress(Exception):
            store = open_block_store(blocks)
            try:
                hashes = [h for h, _ in store.iterate()]
                for i in range(0, len(hashes), 1024):
                    store.delete_many(hashes[i : i + 1024])
            finally:
                close = getattr(store, "close", None)
                if close is not None:
                    close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(targets: list[Target], args: argparse.Namespace, watch: ClusterWatch | None
            ) -> dict[str, dict[str, dict[str, Any]]]:
    """swift_bench.measure, plus the cluster check around each scale-out cell."""
    out = swift_bench.OUT
    results: dict[str, dict[str, Any]] = {t.peer.name: {} for t in targets}
    for index, (op, size, label, clients) in enumerate(cell_order()):
        name = cell_name(op, label, clients)
        turn = targets[index % len(targets) :] + targets[: index % len(targets)]
        for target in turn:
            load = target.loads[size]
            verified_before = load.verified
            cluster = watch if target.peer.name == "scaleout" else None
            before = cluster.sample() if cluster else (0, 0)
            result = run_cell(load.operations(op, clients), clients, args.warmup,
                              args.seconds, target.peer.cpu_seconds)
            row = summarize(size, result, load.verified - verified_before)
            payload = result.payload_bytes * (args.warmup + args.seconds) / args.seconds
            row["cluster_disturbed"] = (cluster.disturbance(before, cluster.sample(), payload)
                                        if cluster else "")
            results[target.peer.name][name] = row
            print(f"  {target.peer.name:8} {name:16} {row['value']:8.1f} {unit(size):5}"
                  f" p50 {row['p50_ms']:6.1f} ms p99 {row['p99_ms']:6.1f} ms"
                  f"  CPU % client {row['client_cpu_pct']:3.0f}"
                  f" server {row['server_cpu_pct']:3.0f} kernel {row['kernel_cpu_pct']:3.0f}"
                  f" other {row['other_cpu_pct']:3.0f}"
                  + (f"  CLUSTER DISTURBED: {row['cluster_disturbed']}"
                     if row["cluster_disturbed"] else "")
                  + (f"  ERRORS {row['errors']}: {row['first_errors'][0]}"
                     if row["errors"] else ""),
                  file=out, flush=True)
    return results


def print_table(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    out = swift_bench.OUT
    ratios: dict[str, float] = {}
    busy = disturbed = False
    print(file=out)
    print(f"{'cell':18} {'embedded':>14} {'scaleout':>14} {'scaleout/embedded':>18}", file=out)
    for op, size, label, clients in cell_order():
        name = cell_name(op, label, clients)
        line = f"{name:18}"
        rows = [results.get(system, {}).get(name) for system in SYSTEMS]
        for row in rows:
            line += f" {row['value']:8.1f} {unit(size):5}" if row else f" {'-':>14}"
        if rows[0] and rows[1]:
            ratio = rows[1]["value"] / rows[0]["value"] if rows[0]["value"] else 0.0
            ratios[name] = ratio
            line += f" {ratio:17.2f}x"
        other = max((row["other_cpu_pct"] for row in rows if row), default=0.0)
        if other > BUSY_OTHER_PCT:
            busy = True
            line += f"  * other CPU {other:.0f}%"
        if any(row and row.get("cluster_disturbed") for row in rows):
            disturbed = True
            line += "  ! cluster disturbed"
        print(line, file=out)
    if busy:
        print(f"* other programs took more than {BUSY_OTHER_PCT:g}% of the machine's CPU (one "
              "core is 100%) during the cell: its figures are suspect.", file=out)
    if disturbed:
        print("! during the scale-out cell an OSD restarted or went down, the cluster was "
              "paused, or another client moved data through the OSDs: its figures are void.",
              file=out)
    return ratios


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=SYSTEMS, help="run one configuration alone")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds per cell")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes of each pithos serve (default: 2, the cores)")
    p.add_argument("--verify-every", type=int, default=16,
                   help="verify each client's first and every Nth request (0: none)")
    p.add_argument("--work-dir", default=str(HERE / ".bench-work"),
                   help="where the embedded server's data goes")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    p.add_argument("--pithos", default=str(REPO / ".venv" / "bin" / "pithos"))
    p.add_argument("--ceph-conf", help="ceph.conf of the cluster (default: PITHOS_CEPH_CONF)")
    p.add_argument("--pool", default=os.environ.get("PITHOS_CEPH_POOL", "pithos"))
    p.add_argument("--postgres-url",
                   help="SQLAlchemy URL of a PostgreSQL database this may create databases "
                        "from (default: PITHOS_TEST_POSTGRES_URL)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-': stdout)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    swift_bench.OUT = out = sys.stderr if args.json == "-" else sys.stdout
    systems = [args.only] if args.only else list(SYSTEMS)
    started = time.monotonic()
    base = Path(args.work_dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scaleout-", dir=base))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(bench_lock("scaleout_bench"))
            targets = []
            watch: ClusterWatch | None = None
            for system in systems:
                if system == "embedded":
                    peer: PithosPeer = PithosPeer(work / system, Path(args.pithos), args.workers,
                                                  name="embedded")
                else:
                    blocks, catalog, conf, pg_port = stack.enter_context(scaleout_storage(args))
                    peer = ScaleoutPeer(work / system, Path(args.pithos), args.workers, blocks,
                                        catalog, conf, pg_port)
                    watch = ClusterWatch(conf)
                    stack.callback(watch.close)
                stack.callback(peer.stop)
                t0 = time.monotonic()
                storage_url, token = peer.start()
                print(f"{system} up in {time.monotonic() - t0:.1f}s at {peer.auth_url}",
                      file=out, flush=True)
                create_container(storage_url, token)
                loads = {size: ObjectLoad(storage_url, token, CONTAINER, size, args.verify_every)
                         for size, _ in SIZES}
                targets.append(Target(peer, loads))
            results = measure(targets, args, watch)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    ratios = print_table(results)
    print(f"\n{len(systems)} configuration(s) in {time.monotonic() - started:.0f}s;"
          f" {args.seconds:g}s measured per cell after {args.warmup:g}s warm-up;"
          f" {args.workers} workers each; MB = 10^6 bytes", file=out)
    if args.json:
        document = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "kernel": platform.release()},
            "settings": {"seconds": args.seconds, "warmup": args.warmup,
                         "workers": args.workers, "verify_every": args.verify_every},
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
        sys.exit(f"scaleout_bench: {exc}")

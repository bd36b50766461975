"""pithos serve against a real OpenStack Swift, same machine, same client, same run.

Brings up a single-node Swift (swift_peer.py: proxy with tempauth, account, container and object
servers, one-device one-replica rings, memcached) and `pithos serve` (pithos_peer.py), both with
--workers worker processes, then measures each with the same client (bench_http.py):

    PUT and GET of 4 MiB objects (MB/s) and of 4 KiB objects (requests/s),
    at 1 and 16 concurrent clients,

and prints both figures and the ratio pithos/swift per cell (the target is >= 2x everywhere).
Sampled requests are verified: PUT ETags against the MD5 sent, GET bodies byte for byte against
what was uploaded and against their ETag.

    .venv/bin/python benchmarks/swift_bench.py                  # both, ~4 minutes
    .venv/bin/python benchmarks/swift_bench.py --only swift     # or --only pithos
    .venv/bin/python benchmarks/swift_bench.py --json out.json  # also write the figures
    .venv/bin/python benchmarks/swift_bench.py --client-check   # the client's own ceiling
    .venv/bin/python benchmarks/swift_bench.py --memory steady  # VM memory host-backed first

--memory steady (root, ~1 minute more) switches the VM's free page reporting off and touches
all free memory before the servers start, and restores the reporting order at exit: see
vm_memory.py and the README.

The first run builds Swift's virtualenv (benchmarks/.swift-venv) from PyPI and, as root,
installs memcached with apt-get.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import room
from bench_http import CellResult, Connection, HttpError, ObjectLoad, run_cell, split_url
from pithos_peer import PithosPeer
from swift_peer import Service, SwiftPeer, check_xattrs, free_port, run
from vm_memory import describe_order, read_order
from vm_memory import restore as restore_memory
from vm_memory import steady as steady_memory

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1024 * 1024
KiB = 1024
SIZES = [(4 * MiB, "4 MiB"), (4 * KiB, "4 KiB")]
CONCURRENCY = [1, 16]
CONTAINER = "bench"
# Where the human-readable report goes: stderr when --json - takes stdout.
OUT = sys.stdout


def cell_name(op: str, label: str, clients: int) -> str:
    return f"{op} {label} c={clients}"


def cell_order(sizes: list[str] | None = None,
               ops: list[str] | None = None) -> list[tuple[str, int, str, int]]:
    """PUTs before GETs of each size: the GETs read back what the PUTs wrote.  `sizes`
    (labels such as "4 KiB") keeps only those sizes' cells, `ops` ("PUT", "GET") only those
    operations' (a GET cell alone reads what earlier cells of the run wrote: none)."""
    return [
        (op, size, label, clients)
        for size, label in SIZES
        if not sizes or label.replace(" ", "") in sizes
        for op in ("PUT", "GET")
        if not ops or op in ops
        for clients in CONCURRENCY
    ]


def headline(size: int, result: CellResult) -> float:
    """MB/s (10^6 bytes) for large objects, requests/s for small ones."""
    if size >= MiB:
        return result.payload_bytes / result.seconds / 1e6
    return result.requests / result.seconds


def unit(size: int) -> str:
    return "MB/s" if size >= MiB else "req/s"


def create_container(storage_url: str, token: str) -> None:
    host, port, base = split_url(storage_url)
    conn = Connection(host, port)
    try:
        # Swift may answer 503 while it autocreates the account under a busy machine (its
        # backend timeouts are short): a client would retry, so does this.
        for _ in range(10):
            resp = conn.request("PUT", f"{base}/{CONTAINER}", f"X-Auth-Token: {token}\r\n".encode())
            if resp.status in (201, 202):
                return
            time.sleep(0.5)
    finally:
        conn.close()
    raise HttpError(f"PUT container: {resp.status} {bytes(resp.body[:200])!r}")


@dataclass
class Target:
    """One running system and the objects the benchmark wrote to it."""

    peer: Any
    loads: dict[int, ObjectLoad]


def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every cell, each on every system in turn before the next cell: background load on a
    shared machine then hits both systems' figures alike instead of one system's whole run.

    A cell is measured in `--rounds` rounds of `--seconds / rounds` each, the order of the
    systems reversed from one round to the next (A B, then B A): a system measured right after
    the other's writes finds the disk still busy with them (on the development VM a 4 MiB PUT
    cell run after the other system's ran 30-40% slower than run first), and the reversed
    round gives the other system the same handicap.  The rounds' requests and latencies are
    pooled per system.  Which system goes first also alternates from cell to cell."""
    results: dict[str, dict[str, Any]] = {t.peer.name: {} for t in targets}
    rounds = max(1, args.rounds)
    for index, (op, size, label, clients) in enumerate(cell_order(args.size, args.op)):
        name = cell_name(op, label, clients)
        turn = targets[index % len(targets) :] + targets[: index % len(targets)]
        pooled: dict[str, CellResult] = {}
        verified: dict[str, int] = {}
        for r in range(rounds):
            for target in turn if r % 2 == 0 else list(reversed(turn)):
                load = target.loads[size]
                verified_before = load.verified
                result = run_cell(
                    load.operations(op, clients),
                    clients,
                    args.warmup,
                    args.seconds / rounds,
                    target.peer.cpu_seconds,
                )
                system = target.peer.name
                pooled[system] = _pool(pooled.get(system), result)
                verified[system] = verified.get(system, 0) + load.verified - verified_before
        for target in turn:
            system = target.peer.name
            row = summarize(size, pooled[system], verified[system])
            results[system][name] = row
            print(
                f"  {system:6} {name:16} {row['value']:8.1f} {unit(size):5}"
                f" p50 {row['p50_ms']:6.1f} ms p99 {row['p99_ms']:6.1f} ms"
                f"  CPU % client {row['client_cpu_pct']:3.0f}"
                f" server {row['server_cpu_pct']:3.0f} kernel {row['kernel_cpu_pct']:3.0f}"
                f" other {row['other_cpu_pct']:3.0f}"
                + (f"  ERRORS {row['errors']}: {row['first_errors'][0]}" if row["errors"] else ""),
                file=OUT,
                flush=True,
            )
    return results


def _pool(into: CellResult | None, more: CellResult) -> CellResult:
    """Two measurements of one cell on one system as one."""
    if into is None:
        return more
    for field_name in ("requests", "payload_bytes", "seconds", "verified", "client_cpu_s",
                       "server_cpu_s", "kernel_cpu_s", "other_cpu_s"):
        setattr(into, field_name, getattr(into, field_name) + getattr(more, field_name))
    into.errors.extend(more.errors)
    into.latencies_s.extend(more.latencies_s)
    return into


def summarize(size: int, result: CellResult, verified: int) -> dict[str, Any]:
    per_request = result.requests or 1
    return {
        "value": headline(size, result),
        "unit": unit(size),
        "requests": result.requests,
        "mb_per_s": result.payload_bytes / result.seconds / 1e6,
        "req_per_s": result.requests / result.seconds,
        "p50_ms": result.percentile_ms(0.50),
        "p99_ms": result.percentile_ms(0.99),
        "client_cpu_pct": 100 * result.client_cpu_s / result.seconds,
        "server_cpu_pct": 100 * result.server_cpu_s / result.seconds,
        "kernel_cpu_pct": 100 * result.kernel_cpu_s / result.seconds,
        "other_cpu_pct": 100 * result.other_cpu_s / result.seconds,
        "server_cpu_ms_per_req": 1000 * result.server_cpu_s / per_request,
        "verified": verified,
        "errors": len(result.errors),
        "first_errors": result.errors[:3],
    }


# Above this share of the machine's CPU spent by neither the client, nor the server under test,
# nor the kernel (other programs, then), a cell's figures are suspect.
BUSY_OTHER_PCT = 25.0


def print_table(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    busy = False
    print(file=OUT)
    print(f"{'cell':18} {'swift':>14} {'pithos':>14} {'pithos/swift':>13}", file=OUT)
    for op, size, label, clients in cell_order():
        name = cell_name(op, label, clients)
        line = f"{name:18}"
        rows = [results.get(system, {}).get(name) for system in ("swift", "pithos")]
        if not any(rows):
            continue
        for row in rows:
            line += f" {row['value']:8.1f} {unit(size):5}" if row else f" {'-':>14}"
        if rows[0] and rows[1]:
            ratio = rows[1]["value"] / rows[0]["value"] if rows[0]["value"] else 0.0
            ratios[name] = ratio
            line += f" {ratio:12.2f}x" + ("     " if ratio >= 2 else " < 2x")
        other = max(row["other_cpu_pct"] for row in rows if row)
        if other > BUSY_OTHER_PCT:
            busy = True
            line += f"  * other CPU {other:.0f}%"
        print(line, file=OUT)
    if busy:
        print(
            f"* other programs took more than {BUSY_OTHER_PCT:g}% of the machine's CPU (one core"
            " is 100%) during the cell: its figures are suspect.",
            file=OUT,
        )
    return ratios


@contextlib.contextmanager
def work_directory(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The directory both servers keep their data in, on one filesystem so the disk is the
    same for both. Swift needs user xattrs; where the filesystem lacks them (or --loopback
    asks), the directory is an ext4 image mounted on a loop device (root only)."""
    base = Path(args.work_dir)
    base.mkdir(parents=True, exist_ok=True)
    # The 4 MiB PUT cells write at up to ~1 GB/s for their seconds, both systems, both
    # rounds (~30 GB on the development VM); the others a few GB.
    large_puts = (not args.size or "4MiB" in args.size) and (not args.op or "PUT" in args.op)
    room.require_disk(base, (40 if large_puts else 5) * room.GB, "swift_bench")
    work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    mounted = False
    try:
        if args.loopback or not check_xattrs(work):
            if os.geteuid() != 0:
                raise RuntimeError(f"{work} lacks user xattrs; a loopback ext4 needs root")
            image = base / "loopback.img"
            with open(image, "wb") as f:
                f.truncate(args.loopback_gib * 1024**3)  # sparse: costs only what is written
            run(["mkfs.ext4", "-q", "-F", str(image)])
            run(["mount", "-o", "loop", str(image), str(work)])
            mounted = True
            print(f"data on a {args.loopback_gib} GiB loopback ext4 at {work}", file=sys.stderr)
        yield work
    finally:
        if mounted:
            subprocess.run(["umount", str(work)], check=False)
        if args.keep:
            print(f"kept {base / 'loopback.img' if mounted else work}", file=sys.stderr)
        else:
            (base / "loopback.img").unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)


def client_check(args: argparse.Namespace) -> None:
    """The same cells against a do-nothing server: the client's ceiling on this machine."""
    for size, label in SIZES:
        port = free_port()
        argv = [sys.executable, str(HERE / "bench_http.py"), "null-server", str(port), str(size)]
        log = Path(tempfile.mkstemp(prefix="null-server-", suffix=".log")[1])
        server = Service("null server", argv, log)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    Connection("127.0.0.1", port, timeout_s=1)._connect().close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            load = ObjectLoad(f"http://127.0.0.1:{port}/v1/AUTH_null", "x", "c", size, 0)
            for op in ("PUT", "GET"):
                for clients in CONCURRENCY:
                    result = run_cell(
                        load.operations(op, clients),
                        clients,
                        args.warmup,
                        args.seconds,
                        server.cpu_seconds,
                    )
                    row = summarize(size, result, 0)
                    print(
                        f"null server {cell_name(op, label, clients):16}"
                        f" {row['req_per_s']:9.0f} req/s {row['mb_per_s']:8.1f} MB/s"
                        f"  client CPU {row['client_cpu_pct']:4.0f}%"
                        f"  server CPU {row['server_cpu_pct']:4.0f}%",
                        flush=True,
                    )
        finally:
            server.stop()
            log.unlink(missing_ok=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["swift", "pithos"], help="run one system alone")
    p.add_argument("--size", action="append",
                   choices=[label.replace(" ", "") for _, label in SIZES],
                   help="measure only the cells of this object size (repeatable)")
    p.add_argument("--op", action="append", choices=["PUT", "GET"],
                   help="measure only the cells of this operation (repeatable; GET cells read"
                        " what the run's PUT cells wrote, so GET needs PUT)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds per cell, the systems' order reversed each round (default 2)")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds per cell")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of pithos serve and of each Swift server (default: 2, the cores)",
    )
    p.add_argument(
        "--verify-every",
        type=int,
        default=16,
        help="verify each client's first and every Nth request (0: none)",
    )
    p.add_argument("--work-dir", default=str(HERE / ".bench-work"), help="where data goes")
    p.add_argument("--keep", action="store_true", help="keep data and logs after the run")
    p.add_argument("--swift-venv", default=str(HERE / ".swift-venv"))
    p.add_argument("--pithos", default=str(REPO / ".venv" / "bin" / "pithos"))
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-': stdout)")
    p.add_argument("--loopback", action="store_true", help="put data on a loopback ext4 image")
    p.add_argument("--loopback-gib", type=int, default=32)
    p.add_argument(
        "--memory",
        choices=["as-is", "steady"],
        default="as-is",
        help="as-is: the VM's memory as found; steady (root): free page reporting off and all"
        " free memory host-backed before the servers start, restored at exit (vm_memory.py)",
    )
    p.add_argument(
        "--client-check",
        action="store_true",
        help="measure the client against a do-nothing server, then exit",
    )
    args = p.parse_args(argv)
    if args.op and "PUT" not in args.op:
        p.error("GET cells read what the run's PUT cells wrote: --op GET needs --op PUT too")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # A plain `kill` must tear the servers down too: make SIGTERM unwind like Ctrl-C.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    global OUT
    OUT = sys.stderr if args.json == "-" else sys.stdout
    if args.client_check:
        client_check(args)
        return 0

    systems = [args.only] if args.only else ["swift", "pithos"]
    started = time.monotonic()
    found = read_order()
    memory: dict[str, Any] = {"mode": args.memory, "page_reporting_order_found": found}
    with contextlib.ExitStack() as stack:
        if args.memory == "steady":
            # Before the servers: both then run on the same host-backed memory. The restore is
            # the first callback, so it runs last, after the servers are down, on every exit.
            state = steady_memory()
            stack.callback(restore_memory, state)
            memory.update(state.as_dict())
            print(f"memory: {state.describe()}", file=OUT, flush=True)
        else:
            print(f"memory: as-is, {describe_order(found)}", file=OUT, flush=True)
        work = stack.enter_context(work_directory(args))
        targets = []
        # Both up before either is measured: a server that cannot start fails the run at once.
        for system in systems:
            if system == "swift":
                peer: Any = SwiftPeer(work / "swift", Path(args.swift_venv), args.workers)
            else:
                peer = PithosPeer(work / "pithos", Path(args.pithos), args.workers)
            stack.callback(peer.stop)
            t0 = time.monotonic()
            storage_url, token = peer.start()
            print(
                f"{system} up in {time.monotonic() - t0:.1f}s at {peer.auth_url}",
                file=OUT,
                flush=True,
            )
            create_container(storage_url, token)
            loads = {
                size: ObjectLoad(storage_url, token, CONTAINER, size, args.verify_every)
                for size, _ in SIZES
            }
            targets.append(Target(peer, loads))
        results = measure(targets, args)

    ratios = print_table(results)
    print(
        f"\n{len(systems)} system(s) in {time.monotonic() - started:.0f}s;"
        f" {args.seconds:g}s measured per cell in {args.rounds} round(s), each after"
        f" {args.warmup:g}s warm-up;"
        f" {args.workers} workers each; memory {args.memory}; MB = 10^6 bytes",
        file=OUT,
    )
    if args.json:
        document = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "kernel": platform.release(),
            },
            "settings": {
                "seconds": args.seconds,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "workers": args.workers,
                "verify_every": args.verify_every,
                "memory": args.memory,
            },
            "memory": memory,
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
        # Our own start-up failures (a server that would not come up, a missing tool) carry
        # the log tail that explains them; a traceback would add nothing.
        sys.exit(f"swift_bench: {exc}")

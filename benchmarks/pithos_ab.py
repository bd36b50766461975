"""`pithos serve` alone, one cell, this checkout against another: for judging a change.

```
.venv/bin/python benchmarks/pithos_ab.py [--against DIR] [--op PUT|GET] [--size 4MiB]
                                         [--clients 16] [--seconds 8] [--rounds 3]
                                         [--workers 2] [--pretouch] [--keep-data]
                                         [--gc-every S] [--gc-compare]
                                         [--chunking fixed|cdc|compare]
```

Each run starts a fresh `pithos serve` (embedded defaults) under `benchmarks/.bench-work/`,
creates a container and measures one cell with swift_bench's client (`bench_http`), after a
1.5 s warm-up. With `--against DIR` (another checkout of the project, e.g. a `git worktree` of
the previous commit, with its native extensions built or copied in), the runs alternate
between DIR (A) and this checkout (B) for `--rounds` rounds, so drift of the machine hits both:
on the development VM, runs of the same build vary by 20% and more from minute to minute.
DIR's code is put first on the server's PYTHONPATH; the venv and `pithos` script are this
checkout's. `--this DIR` measures DIR as B instead of this checkout (a worktree of HEAD, when
the checkout has changes in progress).

Each line gives the rate, the CPU of server, client, kernel and other programs, and the
server's CPU milliseconds per request (the figure to compare when the cell is CPU-bound).

`--gc-every S` runs `pithos gc` on the server's data directory every S seconds while the cell
is measured (as an operator's cron would, with the default clock margin); `--gc-compare`
measures each tree twice per round, without and then with that collector, so the cost of
collecting beside uploads is a ratio of the same run.

Data is deleted after the series, not after each run: on a root ext4 without a journal, new
inodes cost a scan of recently deleted ones for a minute or more after a large delete, which
would slow the next run. `--keep-data` keeps it all (watch the disk: a 4 MiB PUT run writes
several GB). `--pretouch` first pre-touches the VM's free memory (vm_memory.steady).

`--chunking cdc` makes the container with `X-Container-Policy-Chunking: cdc` (PUTs cut into
content-defined chunks); `--chunking compare` measures each tree twice per round, into a
fixed-block container and then into a CDC one, so the policy's cost is a ratio of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from bench_http import Connection, ObjectLoad, run_cell, split_url
from pithos_peer import PithosPeer
from swift_bench import headline, unit

HERE = Path(__file__).resolve().parent
PITHOS = HERE.parent / ".venv" / "bin" / "pithos"
SIZES = {"4KiB": 4096, "64KiB": 65536, "1MiB": 1 << 20, "4MiB": 4 << 20, "16MiB": 16 << 20}


@contextlib.contextmanager
def collector(data_dir: Path, every_s: float) -> Iterator[list[int]]:
    """`pithos gc` on `data_dir` every `every_s` seconds (0: none) while the block runs;
    yields the list of the runs' exit statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s if statuses else 1.5):  # the first after the warm-up
            statuses.append(subprocess.run([str(PITHOS), "gc", "--data-dir", str(data_dir)],
                                           capture_output=True).returncode)

    thread = threading.Thread(target=loop, daemon=True)
    if every_s > 0:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        if every_s > 0:
            thread.join()


def one_run(args: argparse.Namespace, tree: Path | None, work: Path,
            gc_every_s: float = 0.0, chunking: str = "fixed") -> str:
    """Start a server from `tree` (None: this checkout), measure the cell (with `pithos gc`
    every `gc_every_s` seconds, if not 0), stop it."""
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = str(tree)
    else:
        os.environ.pop("PYTHONPATH", None)
    size = SIZES[args.size]
    peer = PithosPeer(Path(tempfile.mkdtemp(dir=work)), PITHOS, args.workers)
    try:
        url, token = peer.start()
        host, port, base = split_url(url)
        resp = Connection(host, port).request(
            "PUT", f"{base}/ab", f"X-Auth-Token: {token}\r\n"
            f"X-Container-Policy-Chunking: {chunking}\r\n".encode(), b"")
        if resp.status not in (201, 202):
            raise RuntimeError(f"PUT container: {resp.status}")
        load = ObjectLoad(url, token, "ab", size, 16)
        if args.op == "GET":  # something to read: the same objects a PUT cell writes
            fill_clients = args.fill_clients or args.clients
            run_cell(load.operations("PUT", fill_clients), fill_clients, 0.0,
                     args.fill if args.fill else max(2.0, args.seconds / 2), peer.cpu_seconds)
        with collector(peer.work_dir / "data", gc_every_s) as gc_runs:
            res = run_cell(load.operations(args.op, args.clients), args.clients, 1.5,
                           args.seconds, peer.cpu_seconds)
    finally:
        peer.stop()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    per_s = res.seconds or 1.0
    return (f"{args.op} {args.size} c={args.clients}: {headline(size, res):8.1f} "
            f"{unit(size)}  server {res.server_cpu_s / per_s * 100:3.0f}% "
            f"client {res.client_cpu_s / per_s * 100:3.0f}% "
            f"kernel {res.kernel_cpu_s / per_s * 100:3.0f}% "
            f"other {res.other_cpu_s / per_s * 100:3.0f}%  "
            f"server {res.server_cpu_s / max(res.requests, 1) * 1000:.2f} ms/request"
            + (f"  gc runs {len(gc_runs)} (failed {sum(1 for s in gc_runs if s)})"
               if gc_every_s else "")
            + (f"  ERRORS {len(res.errors)}: {res.errors[:2]}" if res.errors else ""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", type=Path, help="another checkout, measured as A")
    p.add_argument("--this", type=Path,
                   help="measure this tree as B instead of the installed checkout (e.g. a "
                        "worktree of HEAD while the checkout has changes in progress)")
    p.add_argument("--op", choices=["PUT", "GET"], default="PUT")
    p.add_argument("--size", choices=sorted(SIZES), default="4MiB")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fill", type=float, default=0.0,
                   help="GET: seconds of PUTs before (default: half of --seconds, at least 2); "
                        "more objects than a GET run reads keep its reads cold")
    p.add_argument("--fill-clients", type=int, default=0,
                   help="GET: clients of those PUTs (default: --clients)")
    p.add_argument("--gc-every", type=float, default=0.0, metavar="S",
                   help="run `pithos gc` every S seconds during the cell")
    p.add_argument("--gc-compare", action="store_true",
                   help="each tree twice per round: without, then with --gc-every (default 10)")
    p.add_argument("--chunking", choices=["fixed", "cdc", "compare"], default="fixed",
                   help="the container's X-Container-Policy-Chunking; compare: both, each "
                        "round")
    p.add_argument("--pretouch", action="store_true")
    p.add_argument("--keep-data", action="store_true")
    args = p.parse_args(argv)
    for tree in (args.against, args.this):
        if tree is not None and not (tree / "pithos" / "__init__.py").exists():
            p.error(f"{tree} is not a checkout of this project (no pithos/ package)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not PITHOS.exists():
        print(f"{PITHOS} not found: install the project first", file=sys.stderr)
        return 2
    if args.pretouch:
        import vm_memory
        print(vm_memory.steady().describe(), flush=True)
    base = HERE / ".bench-work"
    base.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ab-", dir=base))
    trees: list[tuple[str, Path | None]] = [
        ("B", args.this.resolve() if args.this is not None else None)]
    if args.against is not None:
        trees.insert(0, ("A", args.against.resolve()))
    failed = False
    try:
        for _ in range(args.rounds):
            for label, tree in trees:
                chunkings = ["fixed", "cdc"] if args.chunking == "compare" else [args.chunking]
                runs = [("", args.gc_every, c) for c in chunkings]
                if args.gc_compare:
                    runs = [(s, e, c) for c in chunkings
                            for s, e in ((" no gc", 0.0), (" gc", args.gc_every or 10.0))]
                for suffix, every, chunking in runs:
                    if args.chunking != "fixed":
                        suffix = f" {chunking}{suffix}"
                    line = one_run(args, tree, work, every, chunking)
                    failed |= "ERRORS" in line or ("failed 0)" not in line and every > 0)
                    print(f"{label}{suffix}: {line}", flush=True)
    finally:
        if args.keep_data:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

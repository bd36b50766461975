"""NBD benchmark: `archipelago serve` against qemu-nbd and nbdkit's file plugin, same client.

    .venv/bin/python benchmarks/nbd_bench.py [--size-gib 1] [--runtime 5] [--json]

Needs fio (with its nbd engine), qemu-utils and nbdkit (`apt-get install fio qemu-utils
nbdkit`).  Every target serves an export of the same size on 127.0.0.1; fio's nbd engine
(libnbd) is the one client.  Figures: sequential write and read MB/s (1 MiB requests, queue
depth 16), 4 KiB random read and write IOPS at queue depth 1 and 16, for

- a fresh volume (ours) vs a fresh sparse raw file (qemu-nbd --cache=writeback, nbdkit file);
- a clone of a filled snapshot (ours) vs the filled raw file (peers);

then the time to make 100 clones of a 10 GiB image.  It is a script, not a test: run it on an
otherwise idle machine; figures vary from run to run by about 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from archipelago import Volumes
from archipelago.testing import ServerProcess

GiB = 1 << 30
JOBS = [  # name, fio rw, block size, queue depth
    ("seq_write_MBps", "write", "1M", 16),
    ("seq_read_MBps", "read", "1M", 16),
    ("rand_write_4k_qd1_iops", "randwrite", "4k", 1),
    ("rand_write_4k_qd16_iops", "randwrite", "4k", 16),
    ("rand_read_4k_qd1_iops", "randread", "4k", 1),
    ("rand_read_4k_qd16_iops", "randread", "4k", 16),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def fio(uri: str, rw: str, bs: str, qd: int, size: int, runtime: int) -> float:
    out = subprocess.run(
        ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
         f"--iodepth={qd}", f"--size={size}", f"--runtime={runtime}", "--time_based",
         "--output-format=json", "--randrepeat=0"],
        capture_output=True, check=True, timeout=runtime + 120).stdout
    # The nbd engine prints "fio: connected to NBD server" before the JSON.
    job = json.loads(out[out.index(b"{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    if rw in ("read", "write"):
        return round(side["bw_bytes"] / 1e6, 1)
    return round(side["iops"], 0)


def run_jobs(uri: str, size: int, runtime: int) -> dict[str, float]:
    return {name: fio(uri, rw, bs, qd, size, runtime) for name, rw, bs, qd in JOBS}


@contextlib.contextmanager
def qemu_nbd(path: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["qemu-nbd", "-f", "raw", "--cache=writeback", "-t", "-e", "16",
                             "-b", "127.0.0.1", "-p", str(port), "-x", "raw", path])
    try:
        wait_port(port)
        yield f"nbd://127.0.0.1:{port}/raw"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def nbdkit_file(path: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "file",
                             f"file={path}"])
    try:
        wait_port(port)
        yield f"nbd://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


def fill(uri: str, size: int, work: str) -> None:
    src = os.path.join(work, "fill.raw")
    with open(src, "wb") as f:
        for _ in range(size // (64 << 20)):
            f.write(os.urandom(64 << 20))
    subprocess.run(["nbdcopy", src, uri], check=True, timeout=600)
    os.unlink(src)


def clone_timing(data_dir: str) -> dict[str, float]:
    vols = Volumes.local(data_dir)
    try:
        vols.create("img10g", 10 * GiB)
        with contextlib.closing(vols.open("img10g")) as vol:
            vol.write(0, os.urandom(64 << 20))  # some real blocks, the rest zero blocks
        vols.snapshot("img10g", "img10g-snap")
        t0 = time.perf_counter()
        for i in range(100):
            vols.clone("img10g-snap", f"c10g-{i}")
        api_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(100):
            with contextlib.closing(vols.open(f"c10g-{i}")) as vol:
                vol.read(0, 4096)
        first_open_s = time.perf_counter() - t0
    finally:
        vols.close()
    return {"clone_100_of_10GiB_s": round(api_s, 3),
            "open_and_read_100_clones_s": round(first_open_s, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio job")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-nbdkit", action="store_true")
    args = ap.parse_args()
    for tool in ("fio", "qemu-nbd", "nbdcopy") + (() if args.skip_nbdkit else ("nbdkit",)):
        if shutil.which(tool) is None:
            sys.exit(f"nbd_bench: {tool} is not installed (apt-get install fio qemu-utils "
                     "libnbd-bin nbdkit)")
    size = int(args.size_gib * GiB)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as work:
        data_dir = os.path.join(work, "data")
        os.makedirs(data_dir)
        vols = Volumes.local(data_dir)
        vols.create("fresh", size)
        vols.create("filled", size)
        vols.close()
        with ServerProcess(data_dir) as srv:
            results["ours_fresh"] = run_jobs(srv.uri("fresh"), size, args.runtime)
            fill(srv.uri("filled"), size, work)
        vols = Volumes.local(data_dir)
        vols.snapshot("filled", "filled-snap")
        vols.clone("filled-snap", "clone")
        vols.close()
        with ServerProcess(data_dir) as srv:
            results["ours_clone"] = run_jobs(srv.uri("clone"), size, args.runtime)

        raw = os.path.join(work, "raw.img")
        with open(raw, "wb") as f:
            f.truncate(size)
        with qemu_nbd(raw) as uri:
            results["qemu_nbd_fresh"] = run_jobs(uri, size, args.runtime)
        if not args.skip_nbdkit:
            os.unlink(raw)
            with open(raw, "wb") as f:
                f.truncate(size)
            with nbdkit_file(raw) as uri:
                results["nbdkit_fresh"] = run_jobs(uri, size, args.runtime)
        with qemu_nbd(raw) as uri:
            fill(uri, size, work)
            results["qemu_nbd_filled"] = run_jobs(uri, size, args.runtime)
        if not args.skip_nbdkit:
            with nbdkit_file(raw) as uri:
                results["nbdkit_filled"] = run_jobs(uri, size, args.runtime)
        results["clones"] = clone_timing(data_dir)

    ratios = {}
    for ours, peer in (("ours_fresh", "qemu_nbd_fresh"), ("ours_clone", "qemu_nbd_filled")):
        ratios[f"{ours}/{peer}"] = {k: round(results[ours][k] / max(results[peer][k], 1e-9), 2)
                                    for k in results[ours]}
    results["ratios"] = ratios  # type: ignore[assignment]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    names = [n for n, *_ in JOBS]
    cols = [c for c in results if c not in ("clones", "ratios")]
    print(f"{'figure':26}" + "".join(f"{c:>17}" for c in cols))
    for n in names:
        print(f"{n:26}" + "".join(f"{results[c][n]:>17}" for c in cols))
    print()
    for key, r in ratios.items():
        print(f"{key}: " + ", ".join(f"{k} {v}x" for k, v in r.items()))
    print(results["clones"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

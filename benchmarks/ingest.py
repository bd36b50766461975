"""Ingest benchmark: our durable ingest (Mapper.build_many over a LocalBlockStore) against
borg, the blake3 hash rate and the disk's durable sequential write rate, on one generated data
set.

Run by hand with the project's venv (the ingest runs in a child process that imports pithos):

    .venv/bin/python benchmarks/ingest.py [--size-mb 1024] [--workdir DIR] [--json]

Everything is written under a fresh temporary directory (inside --workdir, default /work/scratch
when it exists, else the system temp dir) which is removed at the end unless --keep is given.
The store, the borg repository, the disk-rate file and the data set all live there, on the same
file system, so every phase uses the same disk.  Progress goes to stderr; the report (or one
JSON object with --json) to stdout.  MB are 10^6 bytes, MiB 2^20.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import blake3

MiB = 1 << 20
KiB = 1 << 10
BLOCK = 4 * MiB  # the store's block size, and the alignment of shared / sparse regions
TARGET_OURS_VS_BORG = 1.3
TARGET_OURS_VS_FLOOR = 0.8


def log(msg: str) -> None:
    print(f"[ingest-bench] {msg}", file=sys.stderr, flush=True)


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


# -- data set ---------------------------------------------------------------------------------

@dataclass
class DataSet:
    root: str
    files: list[str] = field(default_factory=list)  # in ingest order
    kinds: dict[str, int] = field(default_factory=dict)  # kind -> file count
    logical_bytes: int = 0  # sum of apparent sizes (holes count as zeros)


class _Content:
    """Deterministic incompressible bytes: the blake3 XOF keyed by seed and a label, so that
    any piece of any file can be regenerated (and two labels never share content) without
    holding it in memory.  About 1.4 GB/s, far faster than random.randbytes."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def write(self, f: BinaryIO, label: str, size: int) -> None:
        xof = blake3.blake3(f"{self.seed}:{label}".encode())
        for off in range(0, size, BLOCK):
            f.write(xof.digest(length=min(BLOCK, size - off), seek=off))


def _copy_range(src: str, dst_f: BinaryIO, length: int) -> None:
    with open(src, "rb") as s:
        while length > 0:
            piece = s.read(min(BLOCK, length))
            if not piece:
                break
            dst_f.write(piece)
            length -= len(piece)


def generate(root: str, size: int, seed: int) -> DataSet:
    """A mixed data set of about `size` logical bytes (sizes scale with `size`; at 1 GiB):

    - ~7 %  many small files, 1-64 KiB, a tenth of them copies of earlier ones
    - ~25 % medium files, 100 KiB-8 MiB (log-uniform), plus ~5 % copies of some of them
    - ~38 % four large files: A and B unique; C = a big unaligned prefix of A + a new tail;
            D = a new 4 MiB region, then B's 4 MiB regions (now shifted by 4 MiB, still
            aligned) with a quarter of them replaced - a re-written image
    - ~25 % one sparse VM-image-like file: all holes but 1/8 of its 4 MiB-aligned extents
    """
    rng = random.Random(seed)
    content = _Content(seed)
    ds = DataSet(root)
    os.makedirs(root)

    def add(rel: str, kind: str) -> str:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ds.files.append(path)
        ds.kinds[kind] = ds.kinds.get(kind, 0) + 1
        return path

    # Small files: the per-file cost (open, a block, a page, syncs) dominates here.
    budget = int(size * 0.07)
    small: list[str] = []
    i = 0
    while budget > 0:
        path = add(f"small/{i // 200:03d}/f{i:05d}.dat", "small")
        with open(path, "wb") as f:
            if small and rng.random() < 0.1:
                src = rng.choice(small)
                _copy_range(src, f, os.path.getsize(src))
            else:
                n = rng.randint(KiB, 64 * KiB)
                content.write(f, f"small{i}", n)
                small.append(path)
        budget -= os.path.getsize(path)
        i += 1

    # Medium files, then copies of some of them elsewhere in the tree (whole-file dedup).
    budget = int(size * 0.25)
    medium: list[str] = []
    i = 0
    while budget > 0:
        n = int(math.exp(rng.uniform(math.log(100 * KiB), math.log(8 * MiB))))
        n = min(n, max(budget, 100 * KiB))
        path = add(f"medium/m{i:04d}.bin", "medium")
        with open(path, "wb") as f:
            content.write(f, f"medium{i}", n)
        medium.append(path)
        budget -= n
        i += 1
    budget = int(size * 0.05)
    i = 0
    while budget > 0 and medium:
        src = rng.choice(medium)
        path = add(f"copies/c{i:04d}-{os.path.basename(src)}", "medium copy")
        shutil.copyfile(src, path)
        budget -= os.path.getsize(path)
        i += 1

    # Large files and the two derived from them (prefix sharing, aligned-region sharing).
    def jitter(frac: float) -> int:
        return max(BLOCK, int(size * frac * rng.uniform(0.9, 1.1)))

    a = add("large/a.img", "large")
    with open(a, "wb") as f:
        content.write(f, "large-a", jitter(0.14))
    b = add("large/b.img", "large")
    with open(b, "wb") as f:
        content.write(f, "large-b", jitter(0.08))
    c = add("large/c-prefix-of-a.img", "large shared")
    with open(c, "wb") as f:
        n = jitter(0.08)
        prefix = min(int(n * 0.75), os.path.getsize(a))  # unaligned on purpose
        _copy_range(a, f, prefix)
        content.write(f, "large-c-tail", n - prefix)
    d = add("large/d-edit-of-b.img", "large shared")
    with open(d, "wb") as f, open(b, "rb") as src:
        content.write(f, "large-d-head", BLOCK)
        j = 0
        while region := src.read(BLOCK):
            if rng.random() < 0.25:
                content.write(f, f"large-d-edit{j}", len(region))
            else:
                f.write(region)
            j += 1

    # The sparse image: holes are never written, so the file takes 1/8 of its apparent size.
    vm = add("vm/disk.img", "sparse image")
    apparent = max(BLOCK, (size // 4) // BLOCK * BLOCK)
    extents = apparent // BLOCK
    with open(vm, "wb") as f:
        f.truncate(apparent)
        for k in sorted(rng.sample(range(extents), max(1, extents // 8))):
            f.seek(k * BLOCK)
            content.write(f, f"vm{k}", BLOCK)

    ds.logical_bytes = sum(os.path.getsize(p) for p in ds.files)
    return ds


# -- page cache ---------------------------------------------------------------------------------

def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache, so the next phase reads its source from disk
    (and does not inherit the previous phase's dirty pages to write back).  Needs root."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def preread(ds: DataSet) -> None:
    """With --warm, or when the cache cannot be dropped: read everything so every phase reads
    its source from cache alike (the data set must fit in RAM for this to mean anything)."""
    for path in ds.files:
        with open(path, "rb", buffering=0) as f:
            while f.read(BLOCK):
                pass


def before_phase(ds: DataSet, can_drop: bool) -> None:
    if not (can_drop and drop_caches()):
        os.sync()
        preread(ds)


# -- sizes ------------------------------------------------------------------------------------

def du(path: str) -> dict[str, int]:
    """Allocated bytes (what `du` reports), apparent bytes and file count under `path`."""
    alloc = apparent = files = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            alloc += st.st_blocks * 512
            if name in filenames:
                apparent += st.st_size
                files += 1
    return {"allocated_bytes": alloc, "apparent_bytes": apparent, "files": files}


# -- phase a: our ingest, in a child process ----------------------------------------------------

def child_ingest(store_dir: str, list_file: str) -> None:
    """Runs in the child: a fresh store, every file through ONE build_many call.  A process of
    its own, so its peak RSS is the ingest's alone (not the data generator's or borg's)."""
    from pithos.blocker.blocker import Blocker
    from pithos.blocker.local import LocalBlockStore
    from pithos.mapper import codec
    from pithos.mapper.mapper import Mapper

    with open(list_file) as f:
        paths = json.load(f)
    rss_before = _proc_status_kib("VmRSS")

    from pithos.cli.files import open_ahead

    def streams() -> Iterator[BinaryIO]:
        # As `pithos store put` does: files opened a few ahead, with kernel read-ahead.
        return open_ahead(paths)

    t0 = time.perf_counter()
    blocker = Blocker(LocalBlockStore(store_dir))
    mapper = Mapper(blocker)
    roots = 0
    total = 0
    for _root, size in mapper.build_many(streams()):
        roots += 1
        total += size
    seconds = time.perf_counter() - t0
    blocker.close()
    json.dump({
        "seconds": seconds,
        "roots": roots,
        "bytes": total,
        "rss_before_ingest_kib": rss_before,
        "peak_rss_kib": _proc_status_kib("VmHWM"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "native_codec": codec.IS_NATIVE,
    }, sys.stdout)


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def run_measured(cmd: list[str], out_path: str,
                 env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a command to completion: (wall seconds, peak RSS KiB of that process from wait4,
    its stdout).  wait4 gives this child's own rusage, unlike RUSAGE_CHILDREN, which is the
    max over every child reaped so far."""
    with open(out_path + ".out", "w") as out, open(out_path + ".err", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(out_path + ".out") as f:
        stdout = f.read()
    if proc.returncode != 0:
        with open(out_path + ".err") as f:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{f.read()[-3000:]}")
    return seconds, usage.ru_maxrss, stdout


def phase_ours(ds: DataSet, work: str, name: str) -> dict[str, Any]:
    store = tempfile.mkdtemp(prefix=f"store-{name}-", dir=work)
    list_file = os.path.join(work, f"files-{name}.json")
    with open(list_file, "w") as f:
        json.dump(ds.files, f)
    wall, wait4_rss, out = run_measured(
        [sys.executable, os.path.abspath(__file__), "--ingest-child", store, list_file],
        out_path=os.path.join(work, f"ours-{name}"))
    res = json.loads(out)
    if res["roots"] != len(ds.files) or res["bytes"] != ds.logical_bytes:
        raise RuntimeError(f"ingest returned {res['roots']} maps / {res['bytes']} bytes, "
                           f"expected {len(ds.files)} / {ds.logical_bytes}")
    res.update(mb_s=mb_s(ds.logical_bytes, res["seconds"]), process_wall_seconds=wall,
               wait4_maxrss_kib=wait4_rss, store=du(store))
    shutil.rmtree(store)
    return res


# -- phase b: borg ------------------------------------------------------------------------------

def phase_borg(ds: DataSet, work: str, can_drop: bool) -> dict[str, Any]:
    """`borg init -e none` (untimed), then `borg create -C none` timed.  Fresh repo and fresh
    cache / config / security directories, so nothing is remembered from an earlier run."""
    base = tempfile.mkdtemp(prefix="borg-", dir=work)
    repo = os.path.join(base, "repo")
    env = dict(os.environ)
    env.update({
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        "BORG_BASE_DIR": os.path.join(base, "home"),
        "BORG_CACHE_DIR": os.path.join(base, "cache"),
        "BORG_CONFIG_DIR": os.path.join(base, "config"),
        "BORG_SECURITY_DIR": os.path.join(base, "security"),
    })
    subprocess.run(["borg", "init", "-e", "none", repo], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    version = subprocess.run(["borg", "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    before_phase(ds, can_drop)  # init wrote a little; start create from a clean cache
    seconds, rss, _ = run_measured(["borg", "create", "-C", "none", f"{repo}::a", ds.root],
                                   env=env, out_path=os.path.join(base, "create"))
    res = {"seconds": seconds, "mb_s": mb_s(ds.logical_bytes, seconds), "peak_rss_kib": rss,
           "repo": du(repo), "version": version}
    shutil.rmtree(base)
    return res


# -- phase c: blake3 hash rate ------------------------------------------------------------------

def phase_hash(ds: DataSet, piece_bytes: int = 256 * MiB) -> dict[str, Any]:
    """blake3 of every 4 MiB chunk (chunked per file, as the mapper does) on os.cpu_count()
    threads.  Data is read into memory a piece at a time outside the timer, so this is the
    hashing rate alone.  The distinct non-zero chunks also give the ideal dedup size."""
    threads = os.cpu_count() or 2
    pool = ThreadPoolExecutor(max_workers=threads)
    hashed = 0
    hash_seconds = 0.0
    read_seconds = 0.0  # reported apart: both ingests have to read the source too
    unique: dict[bytes, int] = {}
    chunks: list[bytes] = []

    def flush() -> None:
        nonlocal hashed, hash_seconds
        t0 = time.perf_counter()
        digests = list(pool.map(lambda c: blake3.blake3(c).digest(), chunks))
        hash_seconds += time.perf_counter() - t0
        hashed += sum(len(c) for c in chunks)
        for d, c in zip(digests, chunks, strict=True):
            if c.strip(b"\0"):  # zero chunks are holes: never stored as data
                unique[d] = len(c)
        chunks.clear()

    for path in ds.files:
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK):
                chunks.append(chunk)
                if len(chunks) * BLOCK >= piece_bytes:
                    read_seconds += time.perf_counter() - t0
                    flush()
                    t0 = time.perf_counter()
        read_seconds += time.perf_counter() - t0
    flush()
    pool.shutdown()
    return {"threads": threads, "bytes": hashed, "seconds": hash_seconds,
            "mb_s": mb_s(hashed, hash_seconds), "read_seconds": read_seconds,
            "read_mb_s": mb_s(hashed, read_seconds),
            "unique_nonzero_block_bytes": sum(unique.values()),
            "unique_nonzero_blocks": len(unique)}


# -- phase d: disk sequential durable write rate ------------------------------------------------

def phase_disk(work: str, size: int, runs: int = 3) -> dict[str, Any]:
    """Write `size` bytes in 4 MiB writes to one new file next to the store, then fsync; the
    best of `runs`.  The data is generated before the timer (unique, incompressible, up to
    1 GiB and then repeated) so only the write and the sync are measured."""
    pool_bytes = min(size, 1 << 30)
    xof = blake3.blake3(b"disk-rate")
    data = [xof.digest(length=BLOCK, seek=off) for off in range(0, pool_bytes, BLOCK)]
    path = os.path.join(work, "disk-rate.bin")
    rates = []
    for _ in range(runs):
        os.sync()
        written = 0
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            i = 0
            while written < size:
                chunk = data[i % len(data)]
                n = min(len(chunk), size - written)
                view = memoryview(chunk)[:n]
                while view:
                    view = view[os.write(fd, view):]
                written += n
                i += 1
            os.fsync(fd)
        finally:
            os.close(fd)
        seconds = time.perf_counter() - t0
        os.unlink(path)
        rates.append(mb_s(written, seconds))
    return {"bytes": size, "runs_mb_s": rates, "mb_s": max(rates),
            "seconds": size / max(rates) / 1e6}


# -- report -------------------------------------------------------------------------------------

def report(r: dict[str, Any]) -> str:
    """The human-readable table."""
    ds, ours, borg, h, disk = r["dataset"], r["ours"], r["borg"], r["hash"], r["disk"]
    q, ratios = r["ours_quarter"], r["ratios"]

    def mib(n: int) -> str:
        return f"{n / MiB:,.1f} MiB"

    def rss(kib: int) -> str:
        return f"{kib / 1024:.1f} MiB"

    def runs(x: dict[str, Any]) -> str:
        return ", ".join(f"{v:.1f}" for v in x["runs_mb_s"])

    def row(name: str, rate: float, seconds: float, note: str = "") -> str:
        return f"{name:<46}{rate:>9.1f}{seconds:>9.2f}  {note}".rstrip()

    def space(label: str, nbytes: int) -> str:
        return f"  {label:<43}{mib(nbytes):>14}"

    def mark(value: float, target: float) -> str:
        return f"{value:5.2f}  (target >= {target}: {'met' if value >= target else 'MISSED'})"

    n = len(ours["runs_mb_s"])
    which = f"median of {n}" if n > 1 else "1 run"
    return "\n".join([
        f"data set: {mib(ds['logical_bytes'])} logical in {ds['files']} files "
        f"({', '.join(f'{v} {k}' for k, v in ds['kinds'].items())}); seed {r['seed']}",
        f"page cache: {r['cache_mode']}",
        f"{'native' if ours['native_codec'] else 'pure-Python'} map codec; {r['cpus']} CPUs; "
        f"{borg['version']}",
        "",
        f"{'phase (MB = 10^6 bytes, of logical data)':<46}{'MB/s':>9}{'seconds':>9}",
        row("ours: Mapper.build_many -> LocalBlockStore", ours["mb_s"], ours["seconds"],
            f"{which} (runs: {runs(ours)})"),
        row("borg create -C none (repo -e none)", borg["mb_s"], borg["seconds"],
            f"{which} (runs: {runs(borg)})"),
        row(f"blake3, 4 MiB chunks, {h['threads']} threads, in memory", h["mb_s"], h["seconds"]),
        row("disk: 4 MiB writes + fsync, new file", disk["mb_s"], disk["seconds"],
            f"best of {len(disk['runs_mb_s'])} (runs: {runs(disk)})"),
        row("(for context) reading the data set", h["read_mb_s"], h["read_seconds"],
            "4 MiB reads; not part of any ratio"),
        "",
        f"ours / borg:              {mark(ratios['ours_vs_borg'], r['targets']['ours_vs_borg'])}",
        f"ours / min(hash, disk):   {mark(ratios['ours_vs_floor'], r['targets']['ours_vs_floor'])}"
        f"  min is {ratios['floor']}",
        "",
        "peak RSS (VmHWM of the ingest process; highest over runs):",
        f"  ours, {mib(ds['logical_bytes']):>13} data set: {rss(ours['peak_rss_kib']):>10}"
        f"   (before ingesting: {rss(ours['rss_before_ingest_kib'])})",
        f"  ours, {mib(q['bytes']):>13} data set: {rss(q['peak_rss_kib']):>10}"
        f"   (before ingesting: {rss(q['rss_before_ingest_kib'])}; {q['mb_s']:.1f} MB/s)",
        f"  borg, {mib(ds['logical_bytes']):>13} data set: {rss(borg['peak_rss_kib']):>10}",
        "",
        "space (allocated, as du reports):",
        space("data set, logical:", ds["logical_bytes"]),
        space("data set, on disk (sparse holes are free):", ds["on_disk"]["allocated_bytes"]),
        space("ideal: distinct non-zero 4 MiB file chunks:", h["unique_nonzero_block_bytes"]),
        space("ours, block store:", ours["store"]["allocated_bytes"])
        + f"   ({ours['store']['files']} files, {mib(ours['store']['apparent_bytes'])} apparent;"
        " includes map pages and one zero block)",
        space("borg, repository:", borg["repo"]["allocated_bytes"]),
        f"total benchmark time: {r['total_seconds']:.0f} s",
    ])


def repeated(n: int, what: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a phase `n` times; the median run (by MB/s) stands for it, all rates are kept.
    Peak RSS is the highest of all runs."""
    runs = []
    for i in range(n):
        runs.append(run())
        log(f"  {what} run {i + 1}/{n}: {runs[-1]['mb_s']:.1f} MB/s")
    chosen = dict(sorted(runs, key=lambda r: r["mb_s"])[(n - 1) // 2])
    chosen["runs_mb_s"] = [r["mb_s"] for r in runs]
    chosen["peak_rss_kib"] = max(r["peak_rss_kib"] for r in runs)
    return chosen


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mb * MiB
    parent = args.workdir or ("/work/scratch" if os.path.isdir("/work/scratch") else None)
    if parent:
        os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ingest-bench-", dir=parent)
    log(f"work directory {work}")
    t_start = time.perf_counter()
    try:
        log(f"generating ~{args.size_mb} MiB data set (seed {args.seed})")
        ds = generate(os.path.join(work, "data"), size, args.seed)
        can_drop = not args.warm and drop_caches()
        cache_mode = ("dropped before each phase (sync; echo 3 > drop_caches): every phase "
                      "reads the source from disk" if can_drop else
                      f"{'--warm' if args.warm else 'could not drop'}: everything pre-read "
                      "before each phase, every phase reads the source from cache")
        log(f"{len(ds.files)} files, {ds.logical_bytes / MiB:.1f} MiB logical; cache "
            f"{'dropped' if can_drop else 'warm'}")

        def ours_full() -> dict[str, Any]:
            before_phase(ds, can_drop)
            return phase_ours(ds, work, "full")

        log("phase a: ours (child process)")
        ours = repeated(args.repeat, "ours", ours_full)
        log("phase b: borg")
        borg = repeated(args.repeat, "borg", lambda: phase_borg(ds, work, can_drop))

        log("phase c: blake3")
        before_phase(ds, can_drop)
        hashed = phase_hash(ds)
        log(f"  {hashed['mb_s']:.1f} MB/s (reading: {hashed['read_mb_s']:.1f} MB/s)")

        log("phase d: disk")
        before_phase(ds, can_drop)
        disk = phase_disk(work, ds.logical_bytes)
        log(f"  {', '.join(f'{x:.1f}' for x in disk['runs_mb_s'])} MB/s")

        on_disk = du(ds.root)
        shutil.rmtree(ds.root)  # room for the second data set; its figures are taken

        # A quarter-size data set (same mix, same seed) only to show that peak RSS does not
        # grow with the amount ingested.
        log("phase a again on a quarter-size data set (peak RSS)")
        quarter = generate(os.path.join(work, "data-quarter"), size // 4, args.seed)
        before_phase(quarter, can_drop)
        ours_q = phase_ours(quarter, work, "quarter")
        ours_q["bytes"] = quarter.logical_bytes
        log(f"  {ours_q['mb_s']:.1f} MB/s")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    floor = min(hashed["mb_s"], disk["mb_s"])
    return {
        "seed": args.seed,
        "cache_mode": cache_mode,
        "cpus": os.cpu_count(),
        "dataset": {"logical_bytes": ds.logical_bytes, "files": len(ds.files),
                    "kinds": ds.kinds, "on_disk": on_disk},
        "ours": ours,
        "ours_quarter": ours_q,
        "borg": borg,
        "hash": hashed,
        "disk": disk,
        "ratios": {"ours_vs_borg": ours["mb_s"] / borg["mb_s"],
                   "ours_vs_floor": ours["mb_s"] / floor,
                   "floor": "disk" if disk["mb_s"] <= hashed["mb_s"] else "hash"},
        "targets": {"ours_vs_borg": TARGET_OURS_VS_BORG, "ours_vs_floor": TARGET_OURS_VS_FLOOR},
        "total_seconds": time.perf_counter() - t_start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024,
                   help="logical size of the data set in MiB (default 1024)")
    p.add_argument("--workdir", help="parent of the temporary work directory (default "
                   "/work/scratch if it exists, else the system temp dir); same disk as the "
                   "store is the point")
    p.add_argument("--seed", type=int, default=1, help="data set seed (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of ours and of borg on the full data set; the median (the lower "
                   "one for an even count) is reported (default 3; the disk rate is always "
                   "the best of 3)")
    p.add_argument("--warm", action="store_true",
                   help="do not drop the page cache: pre-read the data set before each phase, "
                   "so no phase pays for reading the source from disk")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--ingest-child", nargs=2, metavar=("STORE", "LIST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ingest_child:
        child_ingest(*args.ingest_child)
        return
    if args.size_mb < 16:
        p.error("--size-mb must be at least 16")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if shutil.which("borg") is None:
        p.error("borg is not installed")
    result = benchmark(args)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(report(result))


if __name__ == "__main__":
    main()

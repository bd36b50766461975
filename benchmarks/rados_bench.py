"""RadosBlockStore against `rados bench`: 4 MiB blocks, 16 in flight, same cluster, same run.

    .venv/bin/python benchmarks/rados_bench.py [--conf CONF] [--pool POOL] [--seconds 30]
                                               [--rounds 2] [--in-flight 16] [--batch 64]
                                               [--json]

Each round runs, for --seconds each:

- write: `rados bench -p POOL S write -t 16 -b 4M --no-cleanup` and ours,
  `RadosBlockStore.put_many` of distinct 4 MiB blocks in batches of --batch (the Blocker's
  batch, 64) with --in-flight aio ops (the store's queue depth);
- read: `rados bench -p POOL S seq -t 16` (reads back what its write stored) and ours,
  `get_many` of the blocks just put, in the same batches, for at most S seconds (like `seq`,
  which stops when it has read everything).  Every block read is compared with what was written.

Odd rounds run rados bench first, even rounds ours first, so that a disk that is faster or
slower after a pause favours neither.  Both sides' objects are removed at the end of a round.
Only the store's calls are timed: making the blocks is the caller's business and naming them
(hashing) the Blocker's, so a block is named by a hash of its counter.

MB/s here is what `rados bench` prints as "Bandwidth (MB/sec)": MiB per second.  Prints every
figure, then the ratios ours / rados bench over all rounds (total bytes / total time; target
>= 0.9 for both).  The cluster is the one `scripts/ceph up` makes unless --conf says otherwise.
Each side writes at most 30% of the pool's free room (`rados bench --max-objects`), so a fast
disk ends a write phase early rather than fill the OSD (a full bluestore OSD stops).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pithos.blocker.rados import RadosBlockStore
from pithos.core.hashing import block_hash

MIB = 1024 * 1024
BLOCK = 4 * MIB


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def room_in_blocks(conf: str, pool: str) -> int:
    out = subprocess.run(["ceph", "-c", conf, "df", "-f", "json"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    (stats,) = [p["stats"] for p in json.loads(out)["pools"] if p["name"] == pool]
    return int(stats["max_avail"] * 0.3) // BLOCK


class RadosBench:
    """The `rados bench` side: MiB/s as it reports them."""

    def __init__(self, conf: str, pool: str, seconds: int, in_flight: int,
                 max_objects: int) -> None:
        self.conf, self.pool, self.seconds = conf, pool, seconds
        self.in_flight, self.max_objects = in_flight, max_objects

    def _run(self, mode: str, *extra: str) -> float:
        cmd = ["rados", "-c", self.conf, "bench", "-p", self.pool, str(self.seconds), mode,
               "-t", str(self.in_flight), *extra]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             timeout=self.seconds * 4 + 120).stdout
        match = re.search(r"Bandwidth \(MB/sec\):\s*([0-9.]+)", out)
        if not match:
            raise SystemExit(f"cannot parse the output of {' '.join(cmd)}:\n{out}")
        return float(match.group(1))

    def write(self) -> float:
        return self._run("write", "-b", str(BLOCK), "--no-cleanup",
                         "--max-objects", str(self.max_objects))

    def read(self) -> float:
        return self._run("seq")

    def cleanup(self) -> None:
        subprocess.run(["rados", "-c", self.conf, "-p", self.pool, "cleanup"], check=True,
                       capture_output=True, timeout=600)


class StoreBench:
    """Our side: RadosBlockStore in its own namespace."""

    def __init__(self, conf: str, pool: str, seconds: int, in_flight: int, batch: int,
                 max_blocks: int) -> None:
        self.store = RadosBlockStore(pool, conf, namespace=f"bench-{uuid.uuid4().hex}",
                                     queue_depth=in_flight, read_size=BLOCK)
        self.seconds, self.batch, self.max_blocks = seconds, batch, max_blocks
        self.base = bytearray(os.urandom(BLOCK))
        self.hashes: list[bytes] = []

    def _block(self, n: int) -> bytes:
        # Distinct blocks without 4 MiB of fresh randomness each: a counter up front.
        self.base[:8] = n.to_bytes(8, "big")
        return bytes(self.base)

    def write(self) -> float:
        put_s = 0.0
        while put_s < self.seconds and len(self.hashes) + self.batch <= self.max_blocks:
            n = len(self.hashes)
            items = [(block_hash(k.to_bytes(8, "big")), self._block(k))
                     for k in range(n, n + self.batch)]
            start = time.perf_counter()
            self.store.put_many(items)
            put_s += time.perf_counter() - start
            self.hashes.extend(h for h, _ in items)
            del items
        return len(self.hashes) * BLOCK / MIB / put_s

    def read(self) -> float:
        done = 0
        get_s = 0.0
        while done < len(self.hashes) and get_s < self.seconds:
            start = time.perf_counter()
            got = self.store.get_many(self.hashes[done:done + self.batch])
            get_s += time.perf_counter() - start
            for k, data in enumerate(got, start=done):
                if len(data) != BLOCK or data[:8] != k.to_bytes(8, "big"):
                    raise SystemExit(f"block {k} read back wrong")
            done += len(got)
            del got
        return done * BLOCK / MIB / get_s

    def cleanup(self) -> None:
        for i in range(0, len(self.hashes), 256):
            self.store.delete_many(self.hashes[i:i + 256])
        self.hashes = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conf", default=os.environ.get("PITHOS_CEPH_CONF",
                                                         "/var/tmp/pithos-ceph/ceph.conf"))
    parser.add_argument("--pool", default=os.environ.get("PITHOS_CEPH_POOL", "pithos"))
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    room = room_in_blocks(args.conf, args.pool)
    rb = RadosBench(args.conf, args.pool, args.seconds, args.in_flight, room)
    sb = StoreBench(args.conf, args.pool, args.seconds, args.in_flight, args.batch, room)
    rounds = []
    try:
        for r in range(args.rounds):
            sides = [("rados bench", rb), ("RadosBlockStore", sb)]
            if r % 2:
                sides.reverse()
            figures: dict[str, float] = {}
            for phase in ("write", "read"):
                for name, side in sides:
                    log(f"round {r + 1}: {name} {phase} ...")
                    figures[f"{name} {phase}"] = getattr(side, phase)()
            rounds.append(figures)
            log(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in figures.items()))
            rb.cleanup()
            sb.cleanup()
    finally:
        rb.cleanup()
        sb.cleanup()
        sb.store.close()

    # Rates are per-phase; the overall figure weighs each round's equal-length phases equally.
    def mean(key: str) -> float:
        return sum(f[key] for f in rounds) / len(rounds)

    result = {
        "block_bytes": BLOCK, "in_flight": args.in_flight, "batch": args.batch,
        "seconds": args.seconds, "rounds": rounds,
        "rados_bench_write_MBps": round(mean("rados bench write"), 1),
        "rados_bench_seq_MBps": round(mean("rados bench read"), 1),
        "put_MBps": round(mean("RadosBlockStore write"), 1),
        "get_MBps": round(mean("RadosBlockStore read"), 1),
    }
    result["put_ratio"] = round(result["put_MBps"] / result["rados_bench_write_MBps"], 3)
    result["get_ratio"] = round(result["get_MBps"] / result["rados_bench_seq_MBps"], 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"4 MiB blocks, {args.in_flight} in flight, {args.seconds} s per phase, "
          f"{args.rounds} round(s) (MB/s as rados bench counts it: MiB/s)")
    for r, f in enumerate(rounds, start=1):
        print(f"  round {r}: write {f['rados bench write']:7.1f} vs put "
              f"{f['RadosBlockStore write']:7.1f}   seq {f['rados bench read']:7.1f} vs get "
              f"{f['RadosBlockStore read']:7.1f}")
    print(f"  write  rados bench {result['rados_bench_write_MBps']:8.1f}   put_many "
          f"{result['put_MBps']:8.1f}   ratio {result['put_ratio']:.2f}  (target >= 0.9)")
    print(f"  read   rados bench {result['rados_bench_seq_MBps']:8.1f}   get_many "
          f"{result['get_MBps']:8.1f}   ratio {result['get_ratio']:.2f}  (target >= 0.9)")


if __name__ == "__main__":
    main()

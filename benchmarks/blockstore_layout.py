"""Which local layout for blocks: one file per block or a packfile?

Measures, in one run on the disk under --dir, the time to make N blocks durable three ways:
a file per block (write, fdatasync, rename, then fsync of the touched directories, on 1, 4 and 16
threads) and appends to one packfile with one fdatasync per batch, for 4 MiB and 4 KiB blocks.
The figures chose LocalBlockStore's design (docs/design.md, "Local layout").  `--store` measures
LocalBlockStore itself instead: `put_many` and `get_many` of 4,000 blocks of 16 KiB (a CDC
upload's chunks) in batches of 256, packed and as a file each, alternating, same run.

    python benchmarks/blockstore_layout.py [--dir DIR] [--store] [--rounds 3]
"""

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def per_file(d, n, size, threads, batch=16):
    bufs = [os.urandom(size) for _ in range(8)]
    for i in range(256):
        os.makedirs(f"{d}/{i:02x}", exist_ok=True)

    def one(i):
        name = f"{d}/{i % 256:02x}/blk{i}"
        fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, bufs[i % 8])
        os.fdatasync(fd)
        os.close(fd)
        os.rename(name + ".tmp", name)
        return i % 256

    def sync_dir(i):
        fd = os.open(f"{d}/{i:02x}", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        for b in range(0, n, batch):
            dirs = set(pool.map(one, range(b, min(n, b + batch))))
            list(pool.map(sync_dir, dirs))
        return time.perf_counter() - start


def packfile(d, n, size, batch=16):
    bufs = [os.urandom(size) for _ in range(8)]
    fd = os.open(f"{d}/pack", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    start = time.perf_counter()
    for b in range(0, n, batch):
        for i in range(b, min(n, b + batch)):
            os.write(fd, bufs[i % 8])
        os.fdatasync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def store_put_get(d, items, pack_max, batch=256):
    from pithos.blocker import LocalBlockStore

    store = LocalBlockStore(f"{d}/blocks", pack_max=pack_max)
    try:
        start = time.perf_counter()
        for b in range(0, len(items), batch):
            store.put_many(items[b:b + batch])
        put = time.perf_counter() - start
        start = time.perf_counter()
        for b in range(0, len(items), batch):
            store.get_many([h for h, _ in items[b:b + batch]])
        return put, time.perf_counter() - start
    finally:
        store.close()


def store_rows(args):
    from pithos.core.hashing import block_hash

    n, size = 4000, 16 * 1024
    for r in range(args.rounds):
        for label, pack_max in (("a file per block", 0), ("packed", 64 * 1024)):
            items = [(block_hash(x), x) for x in (os.urandom(size) for _ in range(n))]
            d = tempfile.mkdtemp(dir=args.dir)
            put, get = store_put_get(d, items, pack_max)
            shutil.rmtree(d)
            print(f"round {r + 1} {label:17} put_many {put:6.2f} s {put / n * 1e6:6.0f} us/block "
                  f"{n * size / put / 1e6:5.0f} MB/s; get_many {get / n * 1e6:4.0f} us/block")


def report(label, n, size, elapsed):
    print(f"{label:40} {elapsed / n * 1e6:9.0f} us/block {n * size / elapsed / 1e6:8.0f} MB/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="a directory on the disk to measure")
    ap.add_argument("--store", action="store_true",
                    help="LocalBlockStore's put_many/get_many, packed and a file per block")
    ap.add_argument("--rounds", type=int, default=3, help="--store: rounds (default 3)")
    args = ap.parse_args()
    if args.store:
        store_rows(args)
        return
    for size, n, batch in ((4 << 20, 200, 16), (4096, 2000, 64)):
        label = f"{size >> 10} KiB"
        for threads in (1, 4, 16):
            d = tempfile.mkdtemp(dir=args.dir)
            report(f"{label} file per block, {threads} threads", n, size,
                   per_file(d, n, size, threads, batch))
            shutil.rmtree(d)
        d = tempfile.mkdtemp(dir=args.dir)
        report(f"{label} packfile, 1 sync per {batch}", n, size, packfile(d, n, size, batch))
        shutil.rmtree(d)


if __name__ == "__main__":
    main()

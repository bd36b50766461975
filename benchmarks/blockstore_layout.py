"""Which local layout for blocks: one file per block or a packfile?

Measures, in one run on the disk under --dir, the time to make N blocks durable three ways:
a file per block (write, fdatasync, rename, then fsync of the touched directories, on 1, 4 and 16
threads) and appends to one packfile with one fdatasync per batch, for 4 MiB and 4 KiB blocks.
The figures chose LocalBlockStore's design (docs/design.md, "Local layout").

    python benchmarks/blockstore_layout.py [--dir DIR]
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


def report(label, n, size, elapsed):
    print(f"{label:40} {elapsed / n * 1e6:9.0f} us/block {n * size / elapsed / 1e6:8.0f} MB/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="a directory on the disk to measure")
    args = ap.parse_args()
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

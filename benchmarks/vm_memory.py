"""The guest memory state a benchmark runs in, on a VM whose host takes freed memory back.

On the development VM (a Firecracker guest) a virtio balloon with *free page reporting* hands
every page the guest frees back to the host within seconds; the next first touch of such a page
costs a host fault (~2.7 ms per MiB there). A server that keeps written data in the page cache
pays that on every page-cache page it grows into, one that drops what it writes (Swift:
fadvise DONTNEED per object) mostly does not. Bare metal, or a VM with preallocated memory,
has no such cost. This module can switch reporting off and make all free memory host-backed
once, so that a run measures the software rather than the hypervisor's lazy memory:

    .venv/bin/python benchmarks/vm_memory.py status [--dir DIR]   # order + page-cache growth

swift_bench.py --memory steady uses steady()/restore() below.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
PAGE = mmap.PAGESIZE

# The kernel reports free blocks of at least 2^order pages to the host (9: 2 MiB blocks).
ORDER_PATH = Path("/sys/module/page_reporting/parameters/page_reporting_order")
# Above the buddy allocator's largest order (10), so no free block is ever large enough to be
# reported: reporting stops without unloading anything.
ORDER_OFF = 11
# What pre-touching leaves free, so nothing else on the machine runs short meanwhile.
DEFAULT_MARGIN = GiB
# Pre-touch in pieces this size, checking MemAvailable before each: if another program's
# memory grows meanwhile we stop early instead of pushing the machine into the OOM killer.
CHUNK = GiB


def read_order() -> int | None:
    """The reporting order, or None where the kernel has no free page reporting."""
    try:
        return int(ORDER_PATH.read_text().strip())
    except FileNotFoundError:
        return None


def write_order(order: int) -> None:
    """Set the reporting order (root only) and check that the kernel took it."""
    try:
        ORDER_PATH.write_text(f"{order}\n")
    except OSError as exc:
        raise RuntimeError(f"cannot write {order} to {ORDER_PATH}: {exc}") from exc
    if read_order() != order:
        raise RuntimeError(f"{ORDER_PATH} reads {read_order()} after writing {order}")


def describe_order(order: int | None) -> str:
    if order is None:
        return "no free page reporting (not a ballooned VM)"
    if order > 10:
        return f"free page reporting off (order {order})"
    return (
        f"free page reporting on (order {order}: free blocks of {(PAGE << order) // 1024} KiB"
        " go back to the host)"
    )


def mem_available() -> int:
    """MemAvailable in bytes: free memory plus what the kernel can reclaim (clean cache)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def pretouch(margin: int = DEFAULT_MARGIN) -> tuple[int, float]:
    """Touch MemAvailable minus `margin` through anonymous memory, then free it all.

    Writing one byte per page makes the host back each page (the costly first fault, paid
    here once instead of inside a measured cell) and evicts reclaimable page cache on the way.
    With reporting off the pages stay host-backed after they are freed. Every chunk stays
    mapped until the end, so each new chunk reaches memory not touched yet.
    Returns (bytes touched, seconds)."""
    started = time.monotonic()
    chunks: list[mmap.mmap] = []
    touched = 0
    try:
        target = mem_available() - margin
        while touched < target:
            # Less if something else grew meanwhile: leave it the room.
            size = min(CHUNK, target - touched, mem_available() - margin)
            size -= size % PAGE
            if size <= 0:
                break
            chunk = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            chunks.append(chunk)
            chunk[::PAGE] = b"\1" * (size // PAGE)  # one byte per page, the loop in C
            touched += size
    finally:
        for chunk in chunks:
            chunk.close()
    return touched, time.monotonic() - started


@dataclass
class Steady:
    """What steady() changed, for restore() and the report."""

    order_was: int | None
    touched: int
    seconds: float

    def describe(self) -> str:
        if self.order_was is None:
            what = "no free page reporting here (not a ballooned VM)"
        elif self.order_was > 10:
            what = f"free page reporting already off (order {self.order_was})"
        else:
            what = f"free page reporting off (was {self.order_was})"
        return f"{what}, {self.touched // MiB} MiB pre-touched in {self.seconds:.0f} s"

    def as_dict(self) -> dict[str, object]:
        return {
            "page_reporting_order_during_run": None if self.order_was is None else ORDER_OFF,
            "pretouched_mib": self.touched // MiB,
            "pretouch_s": round(self.seconds, 1),
        }


def steady(margin: int = DEFAULT_MARGIN) -> Steady:
    """Reporting off (if the kernel has it), then every free page host-backed.

    Order matters: with reporting still on, what pretouch() frees would go straight back to
    the host. If this fails it restores the order itself; once it returns, the caller must
    call restore() with the result, also on error."""
    order = read_order()
    if order is not None:
        if os.geteuid() != 0:
            raise RuntimeError(f"--memory steady writes {ORDER_PATH}: run as root")
        write_order(ORDER_OFF)
    try:
        touched, seconds = pretouch(margin)
    except BaseException:  # Ctrl-C in the minute this takes: the caller has nothing to restore
        if order is not None:
            write_order(order)
        raise
    return Steady(order, touched, seconds)


def restore(state: Steady) -> None:
    """Put the reporting order back as it was before steady()."""
    if state.order_was is not None and read_order() != state.order_was:
        write_order(state.order_was)


def page_cache_growth(directory: Path, size: int = 512 * MiB) -> float:
    """MiB/s of writing `size` bytes into a new file without fsync: the rate at which the page
    cache grows into free memory (~350-750 MiB/s on the development VM when the host must
    back the pages first, ~5,000 when they are backed already). The file is deleted; its
    pages are freed, and with reporting on go back to the host again."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(4 * MiB)
    fd, name = tempfile.mkstemp(prefix="page-cache-growth-", dir=directory)
    try:
        started = time.monotonic()
        for _ in range(size // len(block)):
            os.write(fd, block)
        seconds = time.monotonic() - started
    finally:
        os.close(fd)
        os.unlink(name)
    return size / MiB / seconds


def status(directory: Path) -> None:
    print(describe_order(read_order()))
    print(f"MemAvailable {mem_available() // MiB} MiB")
    rate = page_cache_growth(directory)
    print(f"page cache growth: {rate:,.0f} MiB/s (512 MiB written to {directory}, no fsync)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="reporting order and page-cache growth rate")
    s.add_argument("--dir", default=str(Path(__file__).resolve().parent / ".bench-work"),
                   help="where the 512 MiB test file goes (default: the benchmarks' work dir)")
    args = p.parse_args(argv)
    if args.command == "status":
        status(Path(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

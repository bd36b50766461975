"""Compute's disks against qemu's own ways: provisioning, boot time and memory.

    .venv/bin/python benchmarks/compute_bench.py [--workdir DIR] [--disks 10] [--image-mib 1024]
                                                 [--boots 3] [--vms 4] [--json] [--keep]

1. Provisioning `--disks` disks from one `--image-mib` image (half random data, half zeros,
   as a used root file system is): thin clones of its map (`Volumes.clone_root`, what the
   agent does), `qemu-img create -f qcow2 -b image.raw` overlays, and full copies
   (`qemu-img convert`, sparse: zeros take no space). Time for all of them and the bytes
   they add on disk (allocated blocks, not apparent sizes).
2. Boot time of the tiny guest (scripts/guest-image) from start to "marker written" (the
   guest read its disk, wrote a marker, flushed it): from a thin clone served over NBD by
   `archipelago serve`, against the same guest on a local qcow2 overlay. `--boots` of each,
   interleaved; medians. Target: NBD >= 0.9x, i.e. at most 10% slower.
3. Memory: `--vms` guests at once on the NBD server; each qemu's RSS and the NBD server's RSS
   growth per VM.

Not a test: nothing is asserted. Runs qemu under TCG on a kvm-pvm host (compute.qemu's
choice) and needs qemu-system-x86 and qemu-utils.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from archipelago import Volumes  # noqa: E402
from archipelago.testing import ServerProcess  # noqa: E402
from compute.qemu import FileDisk, NbdDisk, Vm, VmSpec, detect_accel  # noqa: E402

MiB = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def allocated(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, timeout=3600).stdout.decode()


def make_image(path: str, size_mib: int) -> None:
    """Half random (a used file system's data), half zeros (sparse)."""
    with open(path, "wb") as f:
        left = size_mib // 2
        while left:
            f.write(os.urandom(MiB))
            left -= 1
        f.truncate(size_mib * MiB)
        f.flush()
        os.fsync(f.fileno())


def provisioning(work: str, disks: int, image_mib: int) -> dict[str, object]:
    image = os.path.join(work, "image.raw")
    log(f"making a {image_mib} MiB image ...")
    make_image(image, image_mib)
    data = os.path.join(work, "data")
    root_hex = run(sys.executable, "-m", "pithos.cli.main", "store", "put", image,
                   "--data-dir", data).split()[0]
    out: dict[str, object] = {"image_mib": image_mib, "disks": disks}

    vols = Volumes.local(data)
    try:
        before = allocated(os.path.join(data, "volumes"))
        t0 = time.perf_counter()
        for i in range(disks):
            vols.clone_root(bytes.fromhex(root_hex), f"disk{i}")
        out["clone_s"] = time.perf_counter() - t0
        out["clone_bytes"] = allocated(os.path.join(data, "volumes")) - before
    finally:
        vols.close()

    ov = os.path.join(work, "overlays")
    os.makedirs(ov)
    t0 = time.perf_counter()
    for i in range(disks):
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "raw",
            os.path.join(ov, f"disk{i}.qcow2"))
    out["qcow2_s"] = time.perf_counter() - t0
    out["qcow2_bytes"] = allocated(ov)

    cp = os.path.join(work, "copies")
    os.makedirs(cp)
    t0 = time.perf_counter()
    for i in range(disks):
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", image,
            os.path.join(cp, f"disk{i}.raw"))
    os.sync()
    out["copy_s"] = time.perf_counter() - t0
    out["copy_bytes"] = allocated(cp)
    shutil.rmtree(cp)
    return out


def guest() -> dict[str, str]:
    text = run(str(REPO / "scripts" / "guest-image"))
    return dict(line.split(" ", 1) for line in text.splitlines())


def boot_once(spec: VmSpec, accel: str) -> float:
    vm = Vm(spec)
    t0 = time.perf_counter()
    vm.start(accel=accel)
    try:
        m = vm.wait_console(r"PITHOS-MARKER-WRITTEN", 120)
        took = time.perf_counter() - t0
        if m is None:
            raise RuntimeError(f"no marker: {vm.console()[-2000:]}")
        vm.wait_exit(60)
        return took
    finally:
        vm.kill()


def boots(work: str, g: dict[str, str], n: int, accel: str) -> dict[str, object]:
    data = os.path.join(work, "bootdata")
    root_hex = run(sys.executable, "-m", "pithos.cli.main", "store", "put", g["disk"],
                   "--data-dir", data).split()[0]
    nbd_s, qcow_s = [], []
    with ServerProcess(data) as srv:
        for i in range(n):
            vols = Volumes.local(data)
            try:
                vols.clone_root(bytes.fromhex(root_hex), f"boot{i}")
            finally:
                vols.close()
            overlay = os.path.join(work, f"boot{i}.qcow2")
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", g["disk"], "-F", "raw",
                overlay)
            common = dict(kernel=g["kernel"], initrd=g["initrd"], network=False,
                          append=f"quiet pithos.marker=B{i} pithos.net=0")
            nbd_s.append(boot_once(VmSpec(
                name=f"nbd{i}", state_dir=os.path.join(work, f"n{i}"),
                disks=(NbdDisk(export=f"boot{i}", port=srv.port),), **common), accel))
            qcow_s.append(boot_once(VmSpec(
                name=f"qcow{i}", state_dir=os.path.join(work, f"q{i}"),
                disks=(FileDisk(overlay, format="qcow2"),), **common), accel))
            log(f"boot {i}: nbd {nbd_s[-1]:.2f} s, qcow2 {qcow_s[-1]:.2f} s")
    nbd, qcow = statistics.median(nbd_s), statistics.median(qcow_s)
    return {"boots": n, "nbd_s": nbd_s, "qcow2_s": qcow_s, "nbd_median_s": nbd,
            "qcow2_median_s": qcow, "speed_ratio": qcow / nbd}


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory(work: str, g: dict[str, str], n: int, accel: str) -> dict[str, object]:
    data = os.path.join(work, "memdata")
    root_hex = run(sys.executable, "-m", "pithos.cli.main", "store", "put", g["disk"],
                   "--data-dir", data).split()[0]
    vols = Volumes.local(data)
    try:
        for i in range(n):
            vols.clone_root(bytes.fromhex(root_hex), f"mem{i}", size=1 << 30)
    finally:
        vols.close()
    vms = []
    with ServerProcess(data) as srv:
        base = rss(srv.proc.pid)
        try:
            for i in range(n):
                vm = Vm(VmSpec(name=f"mem{i}", state_dir=os.path.join(work, f"m{i}"),
                               kernel=g["kernel"], initrd=g["initrd"], network=False,
                               append=f"quiet pithos.marker=M{i} pithos.net=0 "
                                      "pithos.after=wait",
                               disks=(NbdDisk(export=f"mem{i}", port=srv.port),)))
                vm.start(accel=accel)
                vms.append(vm)
            for vm in vms:
                if vm.wait_console("PITHOS-GUEST-READY", 180) is None:
                    raise RuntimeError(vm.console()[-2000:])
            time.sleep(2)
            qemu = [vm.rss_bytes() or 0 for vm in vms]
            server = rss(srv.proc.pid)
        finally:
            for vm in vms:
                vm.kill()
    return {"vms": n, "qemu_rss_mib": [round(r / MiB) for r in qemu],
            "qemu_rss_mean_mib": statistics.mean(qemu) / MiB,
            "nbd_server_rss_base_mib": base / MiB, "nbd_server_rss_mib": server / MiB,
            "nbd_server_rss_per_vm_mib": (server - base) / n / MiB}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--disks", type=int, default=10)
    ap.add_argument("--image-mib", type=int, default=1024)
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--vms", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cb-", dir=args.workdir)
    accel, why = detect_accel()
    try:
        g = guest()
        result = {"accel": accel, "accel_reason": why,
                  "provisioning": provisioning(work, args.disks, args.image_mib),
                  "boot": boots(work, g, args.boots, accel),
                  "memory": memory(work, g, args.vms, accel)}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    p, b, m = result["provisioning"], result["boot"], result["memory"]
    assert isinstance(p, dict) and isinstance(b, dict) and isinstance(m, dict)
    print(f"accelerator: {accel} ({why})")
    print(f"provisioning {p['disks']} disks from a {p['image_mib']} MiB image:")
    for kind, label in (("clone", "thin clones (ours)"), ("qcow2", "qcow2 overlays"),
                        ("copy", "full copies")):
        print(f"  {label:20} {p[kind + '_s']:8.3f} s  {p[kind + '_bytes'] / MiB:10.2f} MiB")
    print(f"boot to marker written (median of {b['boots']}): NBD {b['nbd_median_s']:.2f} s, "
          f"qcow2 overlay {b['qcow2_median_s']:.2f} s, NBD speed {b['speed_ratio']:.2f}x")
    print(f"memory with {m['vms']} VMs: qemu RSS {m['qemu_rss_mean_mib']:.0f} MiB each; NBD "
          f"server {m['nbd_server_rss_base_mib']:.0f} -> {m['nbd_server_rss_mib']:.0f} MiB "
          f"({m['nbd_server_rss_per_vm_mib']:.1f} MiB per VM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

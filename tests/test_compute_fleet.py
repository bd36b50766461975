"""Ten servers from one image on `pithos serve --compute`: their disks are thin clones (the
time they took is printed, not asserted), each boots, writes its own marker to its own disk
and prints it on its console; once they are stopped each disk holds its own marker and the
image reads as it was registered; the store grew by about what the guests wrote, not ten
disks; once they are deleted nothing pins the image's blocks, and `pithos gc` reclaims them
when the image goes too.

About 10 x 230 MB of qemu under TCG on two cores: the boots overlap, ~1 min in all."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from archipelago import Volumes
from tests.compute_helpers import (
    MARKER_OFFSET,
    REPO,
    Cloud,
    MiB,
    guest_files,
    needs_qemu,
    qemu_pids,
)

pytestmark = needs_qemu
SERVERS = 10


def allocated_bytes(path: str) -> int:
    """What the files under `path` take on disk (sparse files count what they hold)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def store_bytes(data_dir: str) -> int:
    return allocated_bytes(os.path.join(data_dir, "blocks")) + \
        allocated_bytes(os.path.join(data_dir, "volumes"))


def block_files(data_dir: str) -> set[str]:
    out = set()
    for _, dirs, files in os.walk(os.path.join(data_dir, "blocks")):
        dirs[:] = [d for d in dirs if d not in ("tmp", "trash", "quarantine")]
        out.update(f for f in files if len(f) == 64)
    return out


def gc(data_dir: str, dry_run: bool = False) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "pithos.cli.main", "gc", "--json",
                          "--clock-margin", "0", "--data-dir", data_dir]
                         + (["--dry-run"] if dry_run else []),
                         capture_output=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr.decode()
    return dict(json.loads(out.stdout))


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    c = Cloud(agent_args=f"--ram-mib {SERVERS * 256 + 256} --vcpus {SERVERS * 2}")
    try:
        yield c
    finally:
        c.close()


def test_ten_servers_from_one_image(cloud: Cloud) -> None:
    guest = guest_files()
    image = cloud.guest_image(guest)
    before = store_bytes(cloud.data_dir)
    image_blocks = block_files(cloud.data_dir)

    ids = []
    t0 = time.monotonic()
    for i in range(SERVERS):
        r = cloud.create(f"f{i}", image, metadata={"marker": f"FLEET-{i}", "after": "wait"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["server"]["id"])
    for sid in ids:
        cloud.wait_status(sid, "ACTIVE")
    active_s = time.monotonic() - t0
    clone_s = []
    for sid in ids:
        with open(os.path.join(cloud.data_dir, "compute", "vms", sid, "server.json")) as f:
            clone_s.append(float(json.load(f)["disk_ready_s"]))
    for i, sid in enumerate(ids):
        cloud.wait_console(sid, f"PITHOS-MARKER-WRITTEN: FLEET-{i}\\b", timeout_s=300)
    booted_s = time.monotonic() - t0
    rss = []
    for pid in qemu_pids(cloud.dir):
        with open(f"/proc/{pid}/status") as f:
            rss += [int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")]
    print(f"\n{SERVERS} disks cloned in {sum(clone_s):.3f} s in all (slowest "
          f"{max(clone_s):.3f} s); all ACTIVE after {active_s:.1f} s, all markers written "
          f"after {booted_s:.1f} s; qemu RSS {sum(rss) / len(rss) / MiB:.0f} MiB each")

    for sid in ids:
        r = cloud.action(sid, {"os-stop": None})
        assert r.status_code == 202, r.text
    for sid in ids:
        cloud.wait_status(sid, "SHUTOFF", timeout_s=120)

    # Each disk holds its own marker (read through archipelago, the disks' own store).
    vols = Volumes.local(cloud.data_dir, lease_wait_s=15)
    try:
        for i, sid in enumerate(ids):
            vol = vols.open(f"server-{sid}")
            try:
                marker = bytes(vol.read(MARKER_OFFSET, 64)).split(b"\n")[0]
            finally:
                vol.close()
            assert marker == f"PITHOS-MARKER:FLEET-{i}".encode(), (i, marker)
    finally:
        vols.close()
    # The image is as it was registered.
    r = requests.get(f"{cloud.url}/image/v2/images/{image}/file", headers=cloud.h(),
                     timeout=120)
    assert r.status_code == 200
    with open(guest["disk"], "rb") as f:
        assert r.content == f.read()
    # Ten 1 GiB disks, and the store grew by what the guests wrote (a marker, some bitmap
    # pages each), not by ten disks nor even by one image.
    grown = store_bytes(cloud.data_dir) - before
    print(f"the store grew by {grown / MiB:.2f} MiB for {SERVERS} disks of 1 GiB")
    assert grown < 64 * MiB

    roots_with_servers = int(gc(cloud.data_dir, dry_run=True)["roots"])
    for sid in ids:
        cloud.delete(sid)
    assert not [v for v in cloud.volumes() if v.startswith("server-")]
    # The disks were roots of their own (their volumes name the image's map); now they are
    # not, and what they wrote is gone with their deltas.
    assert int(gc(cloud.data_dir, dry_run=True)["roots"]) == roots_with_servers - SERVERS
    assert store_bytes(cloud.data_dir) - before < 1 * MiB
    assert not qemu_pids(cloud.dir)
    # Nothing of the servers pins the image's blocks: once the image goes, gc takes them.
    for img in [image, *(requests.get(f"{cloud.url}/image/v2/images?name={n}",
                                      headers=cloud.h(), timeout=30).json()["images"][0]["id"]
                         for n in ("guest-kernel", "guest-ramdisk"))]:
        r = requests.delete(f"{cloud.url}/image/v2/images/{img}", headers=cloud.h(),
                            timeout=30)
        assert r.status_code == 204, r.text
    # Deleted objects keep their history until it is purged (the object service's rule).
    r = requests.delete(f"{cloud.url}/v1/AUTH_admin/images?until={time.time() + 1:.0f}",
                        headers=cloud.h(), timeout=30)
    assert r.status_code in (204, 404), r.text
    report = gc(cloud.data_dir)
    assert report["swept"] and report["reclaimed_blocks"] > 0, report
    left = block_files(cloud.data_dir)
    assert not (image_blocks & left), "blocks of the deleted image survived gc"

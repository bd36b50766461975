"""kill -9 of `pithos sync` in the middle of a transfer, then a restart: it finishes, the
folder never held a half file, nothing is duplicated or lost, and a download resumes from the
chunks its temporary file already holds."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time

from sync_helpers import Device, assert_agree

MiB = 1 << 20
SIZE = 128 * MiB


def start(device: Device) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pithos.cli.main", "sync", device.folder, device.container,
         "--auth-url", device.creds.auth_url, "--user", device.creds.user,
         "--key", device.creds.key],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 120) -> bool:
    """Poll until `predicate()` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("timed out")


def stored_bytes(server) -> int:
    """Bytes in the server's local store (block files and packs of small blocks)."""
    root = os.path.join(str(server.data_dir), "blocks")
    total = 0
    for where, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # (a temporary file renamed)
                total += os.stat(os.path.join(where, name)).st_size
    return total


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def finish(device: Device) -> str:
    proc = device.cli()
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def test_kill_9_mid_upload_then_restart(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "crash-up")
    data = random.Random(5).randbytes(SIZE)
    a.write("big.bin", data)
    a.write("small.txt", b"small")
    before = stored_bytes(pithos_server)
    proc = start(a)
    # Killed once the server holds 24 MiB of its chunks (so at least two of its 8 MiB
    # ?blocks requests were answered: one file's batches go one after the other).
    assert wait_for(lambda: stored_bytes(pithos_server) >= before + 24 * MiB, proc), \
        proc.communicate()
    assert proc.poll() is None, "the upload ended before the kill: make the file bigger"
    kill(proc)
    out = finish(a)
    sent = int(re.search(r"(\d+) bytes sent", out).group(1))
    # What the first run had sent is not sent again.
    assert sent <= SIZE + len(b"small") - 16 * MiB, sent
    b = Device(pithos_server, tmp_path / "b", "crash-up")
    b.sync()
    remote = assert_agree(pithos_server, a, b, container="crash-up")
    assert sorted(remote) == ["big.bin", "small.txt"] and remote["big.bin"] == data


def test_kill_9_mid_download_then_restart_resumes(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "crash-down")
    data = random.Random(6).randbytes(SIZE)
    a.write("big.bin", data)
    a.sync()
    b = Device(pithos_server, tmp_path / "b", "crash-down")
    tmp_dir = os.path.join(b.folder, ".pithos-sync", "tmp")

    def partial() -> int:
        try:
            return max((os.path.getsize(os.path.join(tmp_dir, n)) for n in os.listdir(tmp_dir)),
                       default=0)
        except OSError:
            return 0

    proc = start(b)
    assert wait_for(lambda: partial() >= 16 * MiB, proc), proc.communicate()
    assert proc.poll() is None, "the download ended before the kill: make the file bigger"
    kill(proc)
    held = partial()
    # Never a half file in the folder: the data is only in the temporary file.
    assert not os.path.exists(b.path("big.bin"))
    out = finish(b)
    fetched = int(re.search(r"(\d+) fetched", out).group(1))
    assert fetched <= SIZE - held + 64 * 1024, (fetched, held)  # the rest, not it all again
    assert os.listdir(tmp_dir) == []
    remote = assert_agree(pithos_server, a, b, container="crash-down")
    assert list(remote) == ["big.bin"]


def test_kill_9_mid_first_sync_of_many_files_then_restart(pithos_server, tmp_path):
    """A first sync of many new files (each sent as soon as the scan hashed it, eight at
    once, their chunks read into batches): killed midway, the restart finishes; nothing is
    lost or duplicated, and what was stored before the kill is not sent again."""
    a = Device(pithos_server, tmp_path / "a", "crash-many")
    rng = random.Random(7)
    files = {f"d{i % 4}/f{i:02d}.bin": rng.randbytes(rng.randint(1 * MiB, 3 * MiB))
             for i in range(48)}
    files |= {f"small/s{i}.txt": b"small %d\n" % i * (i + 1) for i in range(8)}
    for rel, data in files.items():
        a.write(rel, data)
    total = sum(len(d) for d in files.values())
    before = stored_bytes(pithos_server)
    proc = start(a)
    assert wait_for(lambda: stored_bytes(pithos_server) >= before + 32 * MiB, proc), \
        proc.communicate()
    assert proc.poll() is None, "the first sync ended before the kill: make the files bigger"
    kill(proc)
    out = finish(a)
    sent = int(re.search(r"(\d+) bytes sent", out).group(1))
    assert sent <= total - 24 * MiB, (sent, total)
    b = Device(pithos_server, tmp_path / "b", "crash-many")
    b.sync()
    remote = assert_agree(pithos_server, a, b, container="crash-many")
    assert remote == files

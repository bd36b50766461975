"""kill -9 of a `pithos store put` loop at random moments, repeated: every put that returned
(printed its root) reads back intact, and fsck is clean."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

MiB = 1 << 20


def test_kill_9_during_puts_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(42)
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(60):
        size = rng.choice([0, 100, 5000, MiB, 3 * MiB, 4 * MiB + 1, 9 * MiB])
        path = src / f"f{i:02}"
        path.write_bytes(rng.randbytes(size))
        files.append(path)
    data_dir = tmp_path / "data"
    acknowledged = {}  # root -> sha256 of the content
    for _ in range(6):
        batch = rng.sample(files, 25)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pithos.cli.main", "store", "--data-dir", str(data_dir),
             "put", *map(str, batch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Kill at a random moment after the first put was acknowledged (so every round has
        # something to check, however slowly the interpreter starts on a busy machine).
        first = proc.stdout.readline() if rng.random() < 0.8 else b""
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        for line in (first + out).decode().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a torn last line was never acknowledged
                root, _, name = parts
                with open(name, "rb") as f:
                    acknowledged[root] = hashlib.sha256(f.read()).hexdigest()
    assert acknowledged, "the puts never got far enough to acknowledge anything"
    for root, digest in acknowledged.items():
        got = subprocess.run([sys.executable, "-m", "pithos.cli.main", "store", "--data-dir",
                              str(data_dir), "get", root], capture_output=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256(got.stdout).hexdigest() == digest
    fsck = subprocess.run([sys.executable, "-m", "pithos.cli.main", "store", "--data-dir",
                           str(data_dir), "fsck"], capture_output=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert os.listdir(data_dir / "blocks")

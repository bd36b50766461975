"""kill -9 of `archipelago serve` during a write load from qemu-io, then restart: every write
acknowledged before the last acknowledged FLUSH reads back; every other byte is the old or one
of the newer values, never garbage.

qemu-io runs its commands in order and prints one "wrote" line per completed write, so a write
whose line appeared after a `flush` command proves that flush was acknowledged."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import pytest
from conftest import readable

from archipelago.testing import ServerProcess

MiB, KiB = 1 << 20, 1 << 10
SIZE = 16 * MiB
REGION = 256 * KiB
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in ("qemu-io", "nbdcopy",
                                                                      "qemu-img", "stdbuf")),
                                reason="qemu-utils / libnbd-bin not installed")


def _cli(data_dir, *args):
    subprocess.run([sys.executable, "-m", "archipelago.cli", *args, "--data-dir",
                    str(data_dir)], check=True, capture_output=True, timeout=60)


def _read_all(srv: ServerProcess, name: str, path) -> bytes:
    subprocess.run(["nbdcopy", srv.uri(name), str(path)], check=True, capture_output=True,
                   timeout=60)
    return path.read_bytes()


def _plan(rng: random.Random, n: int, round_no: int) -> list[tuple[str, int, int, int]]:
    """("write", offset, length, pattern) and ("flush", 0, 0, 0) commands."""
    cmds: list[tuple[str, int, int, int]] = []
    for k in range(n):
        region = rng.randrange(SIZE // REGION)
        offset = region * REGION + rng.choice([0, 0, 512, 4096 + 1000])
        length = rng.choice([4 * KiB, 64 * KiB, 100_000])
        cmds.append(("write", offset, length, 1 + (round_no * 97 + k) % 250))
        if rng.random() < 0.1:
            cmds.append(("flush", 0, 0, 0))
    return cmds


def _check(got: bytes, durable: bytearray, pending: list[tuple[int, int, int]]) -> None:
    """Each byte is its durable value or the pattern of a write issued after the last
    acknowledged flush that covers it."""
    cands: dict[int, set[int]] = {}  # 4 KiB chunk -> patterns that may be there
    for offset, length, pattern in pending:
        for c in range(offset // 4096, (offset + length - 1) // 4096 + 1):
            cands.setdefault(c, set()).add(pattern)
    for c in range(SIZE // 4096):
        lo, hi = c * 4096, (c + 1) * 4096
        if got[lo:hi] == durable[lo:hi]:
            continue
        allowed = cands.get(c, set())
        for i in range(lo, hi):
            if got[i] != durable[i]:
                assert got[i] in allowed, (
                    f"garbage at byte {i}: {got[i]} (durable {durable[i]}, "
                    f"pending {sorted(allowed)})")


def test_kill_9_during_writes_keeps_flushed_data(tmp_path):
    rng = random.Random(5)
    data_dir = tmp_path / "data"
    os.makedirs(data_dir)
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(SIZE))
    # A clone over an imported image: writes exercise the base-and-delta path.
    _cli(data_dir, "volume", "create", "img", "--size", "16M", "--block-size", "1M")
    srv = ServerProcess(str(data_dir))
    try:
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image),
                        srv.uri("img")], check=True, capture_output=True, timeout=60)
        _cli(data_dir, "volume", "snapshot", "img", "img-snap")
        _cli(data_dir, "volume", "clone", "img-snap", "vm")
        durable = bytearray(image.read_bytes())
        acked_total = 0
        for round_no in range(4):
            cmds = _plan(rng, 600, round_no)
            args = ["stdbuf", "-oL", "qemu-io", "-f", "raw"]
            for kind, offset, length, pattern in cmds:
                args += ["-c", f"write -P {pattern} {offset} {length}" if kind == "write"
                         else "flush"]
            args.append(srv.uri("vm"))
            client = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert client.stdout is not None
            stop_after = rng.randrange(30, 500)
            seen = 0
            buf = b""
            deadline = time.monotonic() + 60
            while seen < stop_after and time.monotonic() < deadline:
                if not readable(client.stdout, 1):
                    continue
                chunk = os.read(client.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                seen = buf.count(b"wrote ")
            srv.kill()  # kill -9 in the middle of the load
            client.kill()
            client.wait(timeout=10)
            client.stdout.close()
            seen = buf.count(b"wrote ")
            acked_total += seen
            # Writes 0..seen-1 completed; a flush is acknowledged if a later write completed.
            writes = [c for c in cmds if c[0] == "write"]
            last_flush_writes = 0  # writes before the last acknowledged flush
            count = 0
            for kind, *_ in cmds:
                if kind == "write":
                    count += 1
                    if count > seen:
                        break
                elif count < seen:
                    last_flush_writes = count
            for _, offset, length, pattern in writes[:last_flush_writes]:
                durable[offset:offset + length] = bytes([pattern]) * length
            pending = [(o, n, p) for _, o, n, p in writes[last_flush_writes:]]

            srv = ServerProcess(str(data_dir))
            got = _read_all(srv, "vm", tmp_path / f"round{round_no}.raw")
            _check(got, durable, pending)
            durable = bytearray(got)  # read back, then flushed on disconnect: the new base
        assert acked_total > 100, "the load never got going"
        # The snapshot the clone came from never changed.
        assert _read_all(srv, "img-snap", tmp_path / "snap.raw") == image.read_bytes()
    finally:
        srv.stop()

"""Leftovers are collected (issue 19): a writer killed mid-block leaves a temporary file in the
LocalBlockStore's tmp/; `pithos store fsck` reports it and `pithos gc` removes it, and never a
temporary file whose writer lives, however long it has been paused: liveness is the writer's
flock on its file (pithos.blocker.tmpfiles), not the file's age.  Several processes write at
once: `pithos serve` workers, and writers of their own."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import time

from conftest import PithosServer
from swift_helpers import TIMEOUT_S, login, request

from pithos.core.hashing import block_hash

MiB = 1 << 20

# A writer of one streamed block: writes its first MiB, says its pid, waits for a line on
# stdin, then writes the rest and commits.
WRITER = """
import random, sys
from pithos.blocker import LocalBlockStore
from pithos.core.hashing import block_hash
store = LocalBlockStore(sys.argv[1])
data = random.Random(int(sys.argv[2])).randbytes(3 << 20)
writer = store.open_writer()
writer.write(data[:1 << 20])
print("writing", flush=True)
sys.stdin.readline()
writer.write(data[1 << 20:])
writer.commit(block_hash(data))
print("committed", flush=True)
"""


def pithos(data_dir, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", *args, "--data-dir",
                           str(data_dir), "--json"], capture_output=True, timeout=300)
    assert proc.stderr == b"", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def tmp_files(data_dir) -> list[str]:
    return sorted(os.listdir(data_dir / "blocks" / "tmp"))


def start_writer(data_dir, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir / "blocks"), str(seed)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    return proc


def file_of(data_dir, pid: int) -> str:
    (name,) = [n for n in tmp_files(data_dir) if f".{pid}." in n]
    return name


def test_gc_removes_a_killed_writers_temporary_file_never_a_paused_ones(tmp_path):
    data_dir = tmp_path / "data"
    assert pithos(data_dir, "store", "stats")[0] == 0
    killed, paused = start_writer(data_dir, 1), start_writer(data_dir, 2)
    dead_file, paused_file = file_of(data_dir, killed.pid), file_of(data_dir, paused.pid)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    paused.send_signal(signal.SIGSTOP)
    try:
        os.utime(data_dir / "blocks" / "tmp" / paused_file, (0, 0))  # age tells nothing
        code, report = pithos(data_dir, "store", "fsck")
        assert code == 0  # a leftover is garbage, not damage
        assert report["stale_tmp_files"] == [f"tmp/{dead_file}"]
        code, dry = pithos(data_dir, "gc", "--dry-run")
        assert dry["leftovers"] == [f"tmp/{dead_file}"] and dead_file in tmp_files(data_dir)
        code, gc = pithos(data_dir, "gc")
        assert code == 0 and gc["leftovers"] == [f"tmp/{dead_file}"]
        assert tmp_files(data_dir) == [paused_file]
    finally:
        paused.send_signal(signal.SIGCONT)
    # The paused writer goes on as if nothing happened.
    out, _ = paused.communicate("commit\n", timeout=60)
    assert paused.returncode == 0 and out == "committed\n"
    data = random.Random(2).randbytes(3 * MiB)
    hex_ = block_hash(data).hex()
    assert (data_dir / "blocks" / hex_[:2] / hex_).read_bytes() == data
    assert tmp_files(data_dir) == []
    assert pithos(data_dir, "gc")[1]["leftovers"] == []


def stall_upload(server, login_, path: str, data: bytes, sent: int
                 ) -> http.client.HTTPConnection:
    """A PUT of `data` that has sent its first `sent` bytes and waits."""
    conn = http.client.HTTPConnection("127.0.0.1", int(server.port), timeout=TIMEOUT_S)
    conn.putrequest("PUT", path)
    conn.putheader("X-Auth-Token", login_.token)
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[:sent])
    return conn


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("PPid:")).split()[1])


def wait_for_streams(data_dir, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        streams = [n for n in tmp_files(data_dir) if n.startswith("stream.")]
        if len(streams) >= count:
            return streams
        assert time.monotonic() < deadline, f"uploads never reached the store: {streams}"
        time.sleep(0.05)


def test_gc_collects_what_a_killed_server_worker_left_while_another_server_uploads(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    a = PithosServer(data_dir)
    b = PithosServer(data_dir)
    conns = []
    try:
        me_a, me_b = login(a), login(b)
        assert request(a, "PUT", f"{me_a.path}/c", token=me_a.token).status == 201
        data = os.urandom(6 * MiB)
        conns.append(stall_upload(a, me_a, f"{me_a.path}/c/killed", data, 2 * MiB))
        conns.append(stall_upload(b, me_b, f"{me_b.path}/c/lives", data, 2 * MiB))
        streams = wait_for_streams(data_dir, 2)
        writers = {int(name.split(".")[1]): name for name in streams}
        (victim,) = [pid for pid in writers if parent_of(pid) == a.proc.pid]
        os.kill(victim, signal.SIGKILL)  # the worker of server a, mid-upload
        dead = writers.pop(victim)
        (live,) = writers.values()

        code, report = pithos(data_dir, "store", "fsck")
        assert report["stale_tmp_files"] == [f"tmp/{dead}"]
        code, gc = pithos(data_dir, "gc")
        assert code == 0 and gc["leftovers"] == [f"tmp/{dead}"]
        assert dead not in tmp_files(data_dir) and live in tmp_files(data_dir)

        # The upload to server b, whose temporary file was left alone, completes.
        conns[1].send(data[2 * MiB:])
        assert conns[1].getresponse().status == 201
        reply = request(b, "GET", f"{me_b.path}/c/lives", token=me_b.token)
        assert reply.status == 200 and reply.body == data
        assert tmp_files(data_dir) == []
    finally:
        for conn in conns:
            conn.close()
        a.stop()
        b.stop()

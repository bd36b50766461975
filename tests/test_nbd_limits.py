"""What a client may cost `archipelago serve` (issue 26): connections that never handshake, a
handshake that stalls, too many connections at once, and the buffer pools behind it.

The server runs as a real subprocess; its memory is read from /proc/PID/status."""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from conftest import readable

from archipelago.nbd.buffers import BufferPool
from archipelago.testing import ServerProcess

MiB = 1 << 20
pytestmark = pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-utils not installed")
# How long a test waits for something the server must do (a bound, not a measurement).
WAIT_S = 30.0


def _cli(data_dir, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "archipelago.cli", *args, "--data-dir", str(data_dir)],
                   check=True, capture_output=True, timeout=60)


def _qemu_io(uri: str, *commands: str) -> str:
    cmd = ["qemu-io", "-f", "raw"]
    for c in commands:
        cmd += ["-c", c]
    proc = subprocess.run([*cmd, uri], capture_output=True, timeout=60)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out
    assert "Pattern verification failed" not in out and "error" not in out.lower(), out
    return out


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)


def _greeted(port: int) -> socket.socket:
    """A connection the server took (it sent its greeting)."""
    s = _connect(port)
    assert _recv(s, 18)[:16] == b"NBDMAGICIHAVEOPT"
    return s


def _go(port: int, name: bytes) -> socket.socket:
    """A connection through OPT_GO, ready for requests."""
    s = _greeted(port)
    payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 7, len(payload))
              + payload)
    while True:
        _, _, kind, length = struct.unpack(">QIII", _recv(s, 20))
        _recv(s, length)
        if kind == 1:
            return s
        assert not kind & 1 << 31, kind


def _read(s: socket.socket, offset: int, length: int, handle: int = 1) -> bytes:
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, handle, offset, length))
    magic, error, got = struct.unpack(">IIQ", _recv(s, 16))
    assert (magic, error, got) == (0x67446698, 0, handle)
    return _recv(s, length)


def _closed_by_server(s: socket.socket) -> bool:
    """True once the server has closed `s` (EOF or reset), waiting up to WAIT_S; whatever the
    server sent before (its greeting) is skipped."""
    s.settimeout(WAIT_S)
    try:
        while s.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed too
    return True


def test_readiness_is_seen_on_descriptors_past_1023():
    """The tests here hold hundreds of sockets in a worker that ran many servers before:
    select(2) refused their descriptors past 1023 (CI failed two tests so); poll does not."""
    import fcntl
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    a, b = socket.socketpair()
    high = socket.socket(fileno=fcntl.fcntl(a.fileno(), fcntl.F_DUPFD, 1100))
    try:
        assert high.fileno() >= 1100
        assert not readable(high, 0)
        b.send(b"x")
        assert readable(high, 5)
        assert _still_open(high)
        b.close()
        high.recv(1)
        assert not _still_open(high)  # its end: closed by the other side
    finally:
        high.close()
        a.close()
        b.close()


def _still_open(s: socket.socket) -> bool:
    """No EOF waiting to be read: the server keeps it."""
    return not readable(s, 0) or s.recv(1, socket.MSG_PEEK) != b""


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    os.makedirs(path)
    _cli(path, "volume", "create", "v", "--size", "4M")
    return path


def test_idle_connections_hold_no_buffers(data_dir):
    """300 connections that never handshake and 100 idle after a 1 MiB read each: a normal
    client is still served and the server's memory stays bounded (each used to cost 4 MiB,
    1,000 of them 4 GiB)."""
    with ServerProcess(str(data_dir), args=["--max-connections", "1000",
                                            "--handshake-timeout", "600"]) as srv:
        _qemu_io(srv.qemu_uri("v"), "write -P 0x5c 0 4M")
        silent = [_greeted(srv.port) for _ in range(300)]
        served = [_go(srv.port, b"v") for _ in range(100)]
        for i, s in enumerate(served):
            assert _read(s, (i % 4) * MiB, MiB, handle=i) == b"\x5c" * MiB
        _qemu_io(srv.qemu_uri("v"), "read -P 0x5c 0 4M")
        rss = _rss_mib(srv.proc.pid)
        assert rss < 400, f"{rss:.0f} MiB with 400 idle connections"
        assert all(_still_open(s) for s in silent + served)  # none was refused or cut
        assert _read(served[0], 0, 4096) == b"\x5c" * 4096  # idle ones still work
        for s in silent + served:
            s.close()
        assert srv.proc.poll() is None


def test_stalled_handshakes_end_after_the_timeout_idle_transmission_does_not(data_dir):
    """--handshake-timeout 1: a client that sends nothing, stops part-way through the
    handshake, or keeps trickling bytes without finishing it, is disconnected; a client that
    finished its handshake and then stays idle much longer is kept and served."""
    with ServerProcess(str(data_dir), args=["--handshake-timeout", "1"]) as srv:
        idle = _go(srv.port, b"v")
        stalled = {name: _greeted(srv.port) for name in
                   ("silent", "flags only", "half an option header", "half an option",
                    "trickling")}
        stalled["before the greeting is read"] = _connect(srv.port)
        stalled["flags only"].sendall(struct.pack(">I", 3))
        stalled["half an option header"].sendall(struct.pack(">I", 3) + b"IHAVEOPT\0\0")
        stalled["half an option"].sendall(struct.pack(">I", 3) + b"IHAVEOPT"
                                          + struct.pack(">II", 7, 1000) + bytes(10))
        trickle = stalled["trickling"]
        stop = threading.Event()

        def trickling() -> None:
            try:
                trickle.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 3, 60))
                while not stop.wait(0.2):
                    trickle.sendall(b"x")  # never the 60th byte within the timeout
            except OSError:
                pass

        t = threading.Thread(target=trickling)
        t.start()
        try:
            for name, s in stalled.items():
                assert _closed_by_server(s), f"{name}: still open"
        finally:
            stop.set()
            t.join()
        # Idle in transmission for longer than the handshake timeout: kept and served.
        time.sleep(2)
        assert _still_open(idle)
        assert _read(idle, 0, 4096) == bytes(4096)
        _qemu_io(srv.qemu_uri("v"), "read -P 0 0 64k")
        for s in [idle, *stalled.values()]:
            s.close()


def test_connection_limit(data_dir, tmp_path):
    """--max-connections 4: the fifth connection is closed at once (no greeting) and the log
    says why; once two end, new connections are taken again."""
    log = tmp_path / "serve.log"
    with ServerProcess(str(data_dir), args=["--max-connections", "4"],
                       log_path=str(log)) as srv:
        held = [_greeted(srv.port) for _ in range(4)]
        extra = _connect(srv.port)
        assert _closed_by_server(extra)
        extra.close()
        text = srv.log()
        assert "connection limit reached (4 connections)" in text, text
        for s in held[:2]:
            s.close()
        deadline = time.monotonic() + WAIT_S
        while True:  # the server notices the two ends a moment later
            s = _connect(srv.port)
            try:
                greeting = s.recv(18)
            except OSError:
                greeting = b""
            if greeting.startswith(b"NBDMAGIC"):
                break
            s.close()
            assert time.monotonic() < deadline, "no connection taken after two ended"
            time.sleep(0.1)
        s.close()
        _qemu_io(srv.qemu_uri("v"), "write -P 3 0 64k", "read -P 3 0 64k")
        assert all(_still_open(h) for h in held[2:])
        for h in held:
            h.close()
        assert srv.proc.poll() is None


def test_buffer_pool_stays_under_its_limit_and_reuses():
    pool = BufferPool(4 * MiB, min_bytes=64 * 1024)
    a = pool.get(3 * MiB)  # a 4 MiB buffer: the whole limit
    assert len(a) == 4 * MiB and pool.allocated_bytes == 4 * MiB
    assert pool.try_get(1) is None
    got: list[bytearray] = []
    waiter = threading.Thread(target=lambda: got.append(pool.get(100)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waits for a buffer to come back
    pool.put(a)  # kept? no: more than a quarter of the limit; freed, then the waiter gets one
    waiter.join(WAIT_S)
    assert [len(b) for b in got] == [64 * 1024]
    assert pool.allocated_bytes == 64 * 1024
    pool.put(got[0])  # kept for reuse
    assert pool.get(60_000) is got[0]
    assert len(pool.get(100_000)) == 128 * 1024
    with pytest.raises(ValueError):
        pool.get(5 * MiB)


def _request(cmd: int, handle: int, offset: int, length: int, data: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", 0x25609513, 0, cmd, handle, offset, length) + data


def test_pipelined_requests_share_small_pools(tmp_path):
    """--buffer-memory 64M (16 MiB of receive buffers, 48 of request data): four connections
    pipeline reads and writes of every size up to 32 MiB at once; each reply carries its own
    data (a buffer is reused only after its reply is sent) and nobody waits forever for one."""
    data_dir = tmp_path / "data"
    os.makedirs(data_dir)
    _cli(data_dir, "volume", "create", "big", "--size", "64M")
    rng = random.Random(26)
    content = bytearray(rng.randbytes(64 * MiB))
    image = tmp_path / "image.raw"
    image.write_bytes(content)
    with ServerProcess(str(data_dir), args=["--buffer-memory", "64M"]) as srv:
        subprocess.run(["nbdcopy", str(image), srv.uri("big")], check=True, timeout=120)
        sizes = [4096, 70 * 1024, 100 * 1024, 200 * 1024, 300 * 1024, MiB, 32 * MiB]
        errors: list[BaseException] = []

        def client(k: int) -> None:
            try:
                s = _go(srv.port, b"big")
                # Each connection writes in its own 16 MiB quarter and reads mostly there.
                lo, hi = k * 16 * MiB, (k + 1) * 16 * MiB
                plan = []
                crng = random.Random(k)
                for i in range(40):
                    size = crng.choice(sizes)
                    if size > MiB:
                        plan.append((0, i, crng.randrange(64 * MiB - size + 1), size))
                    elif crng.random() < 0.3:
                        plan.append((1, i, lo + crng.randrange(16 * MiB - size),
                                     crng.randbytes(size)))
                    else:
                        plan.append((0, i, lo + crng.randrange(16 * MiB - size), size))

                def send() -> None:
                    for cmd, i, off, arg in plan:
                        s.sendall(_request(1, i, off, len(arg), arg) if cmd == 1
                                  else _request(0, i, off, arg))

                sender = threading.Thread(target=send)
                sender.start()
                mine = bytearray(content)  # its quarter as it must read it
                for cmd, i, off, arg in plan:
                    magic, error, handle = struct.unpack(">IIQ", _recv(s, 16))
                    assert (magic, error, handle) == (0x67446698, 0, i)
                    if cmd == 1:
                        mine[off:off + len(arg)] = arg
                        continue
                    got = _recv(s, arg)
                    a, b = max(off, lo), min(off + arg, hi)  # others write outside it
                    if a < b:
                        assert got[a - off:b - off] == mine[a:b], (k, i, off, arg)
                sender.join()
                s.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors[0]
        assert srv.proc.poll() is None


def test_a_request_stalled_half_way_ends_its_connection(tmp_path):
    """In-process server with a 1 s stall timeout: a WRITE whose payload stops coming and a
    header cut in two end their connections; a connection idle between requests for longer
    stays and is served; the pools are whole again afterwards."""
    from archipelago import Volumes
    from archipelago.nbd.server import Limits, NbdServer

    vols = Volumes.local(str(tmp_path / "data"))
    vols.create("v", 4 * MiB)
    server = NbdServer(vols, port=0, limits=Limits(stall_timeout_s=1.0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = int(server.address.rpartition(":")[2])
    try:
        payload_stalls, header_stalls, idle = (_go(port, b"v") for _ in range(3))
        payload_stalls.sendall(_request(1, 1, 0, MiB) + bytes(1000))
        header_stalls.sendall(_request(0, 1, 0, 4096)[:10])
        assert _closed_by_server(payload_stalls)
        assert _closed_by_server(header_stalls)
        time.sleep(1.5)
        assert _read(idle, 0, 4096) == bytes(4096)
        idle.close()
        deadline = time.monotonic() + WAIT_S
        while server.data_pool._waiters or server._conns:  # the connections finish
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for pool in (server.recv_pool, server.data_pool):
            assert pool.allocated_bytes == pool._kept_bytes  # everything was given back
    finally:
        server.stop()
        vols.close()


def test_thousands_of_pipelined_requests_get_their_replies(data_dir):
    """Replies gathered for many small requests at once (more than one sendmsg takes) all go
    out, in order: 3,000 unknown commands and 3,000 zero-length reads sent in one piece."""
    with ServerProcess(str(data_dir)) as srv:
        s = _go(srv.port, b"v")
        n = 3000
        s.sendall(b"".join(_request(9 if i % 2 else 0, i, 0, 0) for i in range(2 * n)))
        for i in range(2 * n):
            magic, error, handle = struct.unpack(">IIQ", _recv(s, 16))
            assert (magic, error, handle) == (0x67446698, 22 if i % 2 else 0, i)
        s.close()

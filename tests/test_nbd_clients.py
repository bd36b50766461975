"""`archipelago serve` against real NBD clients: qemu-img, qemu-io, nbdcopy, nbdinfo.

The server runs as a subprocess on 127.0.0.1 (a free port) or a Unix socket; the CLI and the
Python API work on the same data directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading

import pytest

from archipelago import Volumes
from archipelago.testing import ServerProcess

MiB = 1 << 20
TOOLS = ["qemu-img", "qemu-io", "nbdcopy", "nbdinfo"]
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="qemu-utils / libnbd-bin not installed")


def run(*cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): "
                             f"{proc.stdout.decode()[-2000:]} {proc.stderr.decode()[-2000:]}")
    return proc


def cli(data_dir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "archipelago.cli", *args[:2], *args[2:], "--data-dir",
           str(data_dir)]
    return run(*cmd, check=check)


def qemu_io(uri: str, *commands: str, check: bool = True,
            readonly: bool = False) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw"] + (["-r"] if readonly else [])
    for c in commands:
        args += ["-c", c]
    proc = run(*args, uri, check=check)
    if check:
        out = proc.stdout.decode() + proc.stderr.decode()
        assert "Pattern verification failed" not in out and "error" not in out.lower(), out
    return proc


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def server(data_dir):
    os.makedirs(data_dir, exist_ok=True)
    srv = ServerProcess(str(data_dir))
    yield srv
    srv.stop()


def test_nbdinfo_lists_exports_and_constraints(data_dir, server):
    cli(data_dir, "volume", "create", "disk", "--size", "64M")
    info = json.loads(run("nbdinfo", "--json", server.uri("disk")).stdout)
    export = info["exports"][0]
    assert export["export-size"] == 64 * MiB
    assert export["is_read_only"] is False
    assert export["can_flush"] and export["can_fua"] and export["can_trim"]
    assert export["can_zero"] and export["can_multi_conn"]
    assert export["block_size_minimum"] == 1
    assert export["block_size_preferred"] == 4096
    assert export["block_size_maximum"] == 32 * MiB
    listed = run("nbdinfo", "--list", "--json", server.uri("")).stdout
    assert [e["export-name"] for e in json.loads(listed)["exports"]] == ["disk"]


def test_exports_appear_and_disappear_without_restart(data_dir, server):
    assert run("nbdinfo", server.uri("later"), check=False).returncode != 0
    cli(data_dir, "volume", "create", "later", "--size", "1M")
    assert "export-size: 1048576" in run("nbdinfo", server.uri("later")).stdout.decode()
    cli(data_dir, "volume", "delete", "later")
    assert run("nbdinfo", server.uri("later"), check=False).returncode != 0


def test_qemu_io_patterns_unaligned_zero_and_trim(data_dir, server):
    cli(data_dir, "volume", "create", "v", "--size", "16M")
    uri = server.qemu_uri("v")
    qemu_io(uri, "write -P 0xa1 0 1M", "write -P 0xb2 1000 5000", "write -z 512k 64k",
            "discard 768k 4k", "write -P 0xc3 -f 15M 1M", "flush")
    qemu_io(uri, "read -P 0xa1 0 1000", "read -P 0xb2 1000 5000", "read -P 0xa1 6000 100000",
            "read -P 0 512k 64k", "read -P 0 768k 4k", "read -P 0xa1 772k 252k",
            "read -P 0 1M 14M", "read -P 0xc3 15M 1M")


def test_qemu_img_create_convert_info(data_dir, server, tmp_path):
    cli(data_dir, "volume", "create", "q", "--size", "64M")
    run("qemu-img", "create", "-f", "qcow2", server.qemu_uri("q"), "32M")
    info = json.loads(run("qemu-img", "info", "--output=json", server.qemu_uri("q")).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 32 * MiB
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(5 * MiB) + bytes(3 * MiB))
    cli(data_dir, "volume", "create", "r", "--size", "8M")
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), server.qemu_uri("r"))
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), server.qemu_uri("r"))
    out = tmp_path / "out.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", server.qemu_uri("r"), str(out))
    assert out.read_bytes() == src.read_bytes()


def test_nbdcopy_in_and_out_multi_conn(data_dir, server, tmp_path):
    cli(data_dir, "volume", "create", "n", "--size", "32M")
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(32 * MiB))
    run("nbdcopy", "--connections=4", str(src), server.uri("n"))
    out = tmp_path / "out.raw"
    run("nbdcopy", "--connections=4", server.uri("n"), str(out))
    assert out.read_bytes() == src.read_bytes()


def test_unix_socket(data_dir, tmp_path):
    os.makedirs(data_dir)
    cli(data_dir, "volume", "create", "u", "--size", "1M")
    with ServerProcess(str(data_dir), unix_path=str(tmp_path / "nbd.sock")) as srv:
        qemu_io(srv.qemu_uri("u"), "write -P 7 0 4k")
        qemu_io(srv.qemu_uri("u"), "read -P 7 0 4k")


def test_snapshot_exports_are_read_only(data_dir, server):
    cli(data_dir, "volume", "create", "v", "--size", "4M")
    qemu_io(server.qemu_uri("v"), "write -P 0x11 0 4M")
    cli(data_dir, "volume", "snapshot", "v", "v-snap")
    info = json.loads(run("nbdinfo", "--json", server.uri("v-snap")).stdout)
    assert info["exports"][0]["is_read_only"] is True
    qemu_io(server.qemu_uri("v-snap"), "read -P 0x11 0 4M", readonly=True)
    proc = qemu_io(server.qemu_uri("v-snap"), "write -P 1 0 4k", check=False)
    assert b"Permission denied" in proc.stdout + proc.stderr


def test_many_connections_and_exports_at_once(data_dir, server):
    for i in range(6):
        cli(data_dir, "volume", "create", f"m{i}", "--size", "8M")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            uri = server.qemu_uri(f"m{i % 6}")
            off = (i // 6) * 2
            qemu_io(uri, f"write -P {i + 1} {off}M 2M", f"read -P {i + 1} {off}M 2M")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]


def test_must_show_import_snapshot_100_clones(data_dir, server, tmp_path):
    """Import a raw image with qemu-img convert, snapshot it, make 100 clones, write different
    data to each; every clone reads its own writes, the snapshot is unchanged, and the store
    grew by about what was written."""
    image = tmp_path / "image.raw"
    image.write_bytes(os.urandom(24 * MiB) + bytes(8 * MiB))
    cli(data_dir, "volume", "create", "base", "--size", "32M")
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image),
        server.qemu_uri("base"))
    cli(data_dir, "volume", "snapshot", "base", "golden")

    def stored_bytes() -> int:
        total = 0
        for root, _, files in os.walk(data_dir):
            for f in files:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
        return total

    before = stored_bytes()
    cli(data_dir, "volume", "clone", "golden", "clone0")
    vols = Volumes.local(str(data_dir))
    try:
        for i in range(1, 100):
            vols.clone("golden", f"clone{i}")
    finally:
        vols.close()
    written = 0
    for i in range(100):
        off = (i % 32) * MiB + 4096 * (i // 32)
        qemu_io(server.qemu_uri(f"clone{i}"), f"write -P {i + 1} {off} 64k")
        written += 64 * 1024
    for i in range(100):
        off = (i % 32) * MiB + 4096 * (i // 32)
        qemu_io(server.qemu_uri(f"clone{i}"), f"read -P {i + 1} {off} 64k")
        if i % 10 == 0:  # and the rest of the clone is the image
            expect = tmp_path / "expect.raw"
            data = bytearray(image.read_bytes())
            data[off:off + 65536] = bytes([i + 1]) * 65536
            expect.write_bytes(data)
            run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(expect),
                server.qemu_uri(f"clone{i}"))
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), server.qemu_uri("golden"))
    grown = stored_bytes() - before
    # 100 heads (a 4 KiB file each) and bitmaps, plus what was written.
    assert grown < written + 100 * 3 * 4096 + MiB, (grown, written)
    assert grown >= written


# -- protocol errors from a hand-made (misbehaving) client -------------------------------------

def _handshake(port: int, name: bytes) -> tuple[socket.socket, int, int]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    hello = _recv(s, 18)
    assert hello[:16] == b"NBDMAGICIHAVEOPT"
    s.sendall(struct.pack(">I", 3))
    payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(payload)) + payload)
    size = flags = 0
    while True:
        _, _, kind, length = struct.unpack(">QIII", _recv(s, 20))
        data = _recv(s, length)
        if kind == 3 and struct.unpack(">H", data[:2])[0] == 0:
            size, flags = struct.unpack(">QH", data[2:])
        if kind == 1:
            return s, size, flags
        if kind & 1 << 31:
            raise LookupError(kind)


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _request(s, cmd, offset, length, flags=0, payload=b"", handle=7) -> int:
    s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, cmd, handle, offset, length) + payload)
    magic, error, got = struct.unpack(">IIQ", _recv(s, 16))
    assert magic == 0x67446698 and got == handle
    if cmd == 0 and error == 0:
        _recv(s, length)
    return error


def test_protocol_errors_get_nbd_errors_and_never_crash(data_dir, server):
    cli(data_dir, "volume", "create", "e", "--size", "1M")
    qemu_io(server.qemu_uri("e"), "write -P 9 0 1M")
    cli(data_dir, "volume", "snapshot", "e", "e-snap")
    with pytest.raises(LookupError) as unknown:
        _handshake(server.port, b"nope")
    assert unknown.value.args[0] == (1 << 31) + 6  # NBD_REP_ERR_UNKNOWN

    s, size, _ = _handshake(server.port, b"e")
    assert size == MiB
    assert _request(s, 0, MiB - 10, 20) == 22  # read past the end: EINVAL
    assert _request(s, 1, MiB - 10, 20, payload=bytes(20)) == 28  # write past: ENOSPC
    assert _request(s, 9, 0, 0) == 22  # unknown command: EINVAL
    assert _request(s, 0, 0, 16, flags=1 << 5) == 22  # unknown flag: EINVAL
    assert _request(s, 4, 0, 4096) == 0  # trim
    assert _request(s, 6, 4096, 4096, flags=1 | 2) == 0  # write zeroes, FUA + NO_HOLE
    assert _request(s, 3, 0, 0) == 0  # flush
    assert _request(s, 1, 8192, 4, payload=b"abcd", flags=1) == 0  # FUA write
    s.sendall(b"garbage" * 10)  # out of step: the server hangs up on this client only
    with pytest.raises((ConnectionError, OSError)):
        _recv(s, 16)
    s.close()

    ro, _, flags = _handshake(server.port, b"e-snap")
    assert flags & 2  # NBD_FLAG_READ_ONLY
    assert _request(ro, 1, 0, 4, payload=b"abcd") == 1  # EPERM
    assert _request(ro, 4, 0, 4096) == 1
    ro.close()

    # Unknown options are refused politely; then the server still serves everybody.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    _recv(s, 18)
    s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 42, 0))
    _, _, kind, length = struct.unpack(">QIII", _recv(s, 20))
    assert kind == (1 << 31) + 1  # NBD_REP_ERR_UNSUP
    _recv(s, length)  # its message
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 2, 0))  # NBD_OPT_ABORT
    assert struct.unpack(">QIII", _recv(s, 20))[2] == 1  # NBD_REP_ACK
    s.close()
    qemu_io(server.qemu_uri("e"), "read -P 0 0 8k", "read -P 9 12k 1000k")


def test_corrupt_block_reads_as_eio(data_dir, server):
    cli(data_dir, "volume", "create", "c", "--size", "4M")
    qemu_io(server.qemu_uri("c"), "write -P 0x5a 0 4M")
    snap = json.loads(cli(data_dir, "volume", "snapshot", "c", "c-snap", "--json").stdout)
    vols = Volumes.local(str(data_dir))
    try:
        block = next(iter(vols.mapper(4 * MiB).entries(bytes.fromhex(snap["root"]))))[0]
    finally:
        vols.close()
    path = data_dir / "blocks" / block.hex()[:2] / block.hex()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"bitrot")
    proc = qemu_io(server.qemu_uri("c-snap"), "read 0 4k", check=False, readonly=True)
    assert b"Input/output error" in proc.stdout + proc.stderr
    assert server.proc.poll() is None

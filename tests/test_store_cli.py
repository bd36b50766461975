"""`pithos store` end to end, as a user runs it: a real subprocess on a real data directory."""

import json
import os
import random

import pytest

MiB = 1 << 20


def stats(cli):
    return json.loads(cli("store", "stats", "--json").stdout)


def put(cli, path):
    root, size = cli("store", "put", str(path)).stdout.decode().split()
    return root, int(size)


@pytest.fixture(scope="module")
def file_64m(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "big.bin"
    path.write_bytes(random.Random(1).randbytes(64 * MiB))
    return path


def test_dedup_copy_and_corruption(pithos_cli, file_64m, tmp_path):
    root, size = put(pithos_cli, file_64m)
    assert size == 64 * MiB
    first = stats(pithos_cli)
    assert first["blocks"] == 16 + 1  # sixteen 4 MiB blocks and one map page

    # The same file again stores nothing new.
    assert put(pithos_cli, file_64m) == (root, size)
    assert stats(pithos_cli)[("blocks")] == first["blocks"]
    assert stats(pithos_cli)["bytes"] == first["bytes"]

    # A copy with one byte changed: one new 4 MiB block plus its (one) new map page.
    changed = bytearray(file_64m.read_bytes())
    changed[10 * MiB + 12345] ^= 0x55
    copy = tmp_path / "copy.bin"
    copy.write_bytes(changed)
    copy_root, _ = put(pithos_cli, copy)
    after = stats(pithos_cli)
    assert after["blocks"] == first["blocks"] + 2
    page_bytes = 16 + 16 * 36
    assert after["bytes"] == first["bytes"] + 4 * MiB + page_bytes

    out = tmp_path / "out.bin"
    pithos_cli("store", "get", copy_root, "-o", str(out))
    assert out.read_bytes() == bytes(changed)
    assert pithos_cli("store", "get", root).stdout == file_64m.read_bytes()
    assert pithos_cli("store", "fsck").returncode == 0

    # Damage one byte of one stored block on disk: get fails, fsck names the block.
    blocks_dir = pithos_cli.data_dir / "blocks"
    victim = sorted(p for p in blocks_dir.glob("??/*") if p.stat().st_size == 4 * MiB)[3]
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.seek(777)
        byte = f.read(1)
        f.seek(777)
        f.write(bytes([byte[0] ^ 1]))
    failed = pithos_cli("store", "get", root, "-o", str(tmp_path / "bad.bin"), check=False)
    failed_copy = pithos_cli("store", "get", copy_root, check=False)
    assert failed.returncode != 0 or failed_copy.returncode != 0
    for proc in (failed, failed_copy):
        if proc.returncode:
            assert b"corrupt" in proc.stderr and victim.name.encode() in proc.stderr
            assert proc.stderr.count(b"\n") == 1  # one clear line, no traceback
    assert not (tmp_path / "bad.bin").exists() or failed.returncode == 0
    fsck = pithos_cli("store", "fsck", "--json", check=False)
    assert fsck.returncode == 1
    report = json.loads(fsck.stdout)
    assert report["corrupt"] == [victim.name]
    assert report["clean"] is False


def test_stdin_and_several_files(pithos_cli, tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"hello")
    b = tmp_path / "b"
    b.write_bytes(b"")
    out = pithos_cli("store", "put", str(a), str(b)).stdout.decode().splitlines()
    assert [line.split()[1:] for line in out] == [["5", str(a)], ["0", str(b)]]
    root, size = pithos_cli("store", "put", "-", input=b"hello").stdout.decode().split()
    assert root == out[0].split()[0] and size == "5"
    assert pithos_cli("store", "get", root).stdout == b"hello"
    assert pithos_cli("store", "get", out[1].split()[0]).stdout == b""


@pytest.mark.parametrize("args, message", [
    (("store", "put", "/nonexistent/file"), b"no such file"),
    (("store", "put", "/"), b"not a regular file"),
    (("store", "get", "00" * 32), b"unknown root"),
    (("store", "get", "xyz"), b"not a blake3 hash"),
])
def test_errors_are_one_line(pithos_cli, args, message):
    proc = pithos_cli(*args, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


def test_get_of_a_data_block_is_not_a_map(pithos_cli, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"data")
    pithos_cli("store", "put", str(f))
    from pithos.core.hashing import block_hash
    proc = pithos_cli("store", "get", block_hash(b"data").hex(), check=False)
    assert proc.returncode == 1 and b"not a map page" in proc.stderr


def test_fsck_reports_missing_blocks(pithos_cli, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(os.urandom(5 * MiB))
    root, _ = put(pithos_cli, f)
    assert pithos_cli("store", "fsck").returncode == 0
    from pithos.core.hashing import block_hash
    lost = block_hash(f.read_bytes()[4 * MiB:]).hex()
    (pithos_cli.data_dir / "blocks" / lost[:2] / lost).unlink()
    proc = pithos_cli("store", "fsck", "--json", check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["missing"] == [{"hash": lost, "root": root}]
    text = pithos_cli("store", "fsck", check=False).stdout.decode()
    assert f"missing block {lost}" in text

"""rclone (the Debian package) against a real `pithos serve`: copy, check and sync of a local
tree with nested directories, empty files and unicode names, through Swift v1.0 auth and through
Keystone v3.  Issue 3, "Must show"."""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import subprocess

import pytest

# Issue 6: the same tests on the scale-out configuration (RADOS blocks, PostgreSQL catalog).
SERVER_CONFIGS = ("embedded", "scaleout")

MiB = 1024 * 1024
RCLONE = shutil.which("rclone") or "/usr/bin/rclone"

TREE = {
    "top.txt": b"top level\n",
    "empty": b"",
    "a/b/c/deep.bin": bytes(range(256)) * 1000,
    "a/b/empty-too": b"",
    "a/sibling.txt": b"sibling\n",
    "spaces in name/file (1).txt": b"spaces\n",
    "ünïcödé/日本語.txt": "こんにちは\n".encode(),
    "ünïcödé/emoji-🦉.md": b"# owl\n",
}


def six_mib(seed: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < 6 * MiB:
        out += hashlib.sha512(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:6 * MiB])


@pytest.fixture(scope="module", autouse=True)
def _drop_idle_connections(pithos_server):
    yield
    gc.collect()


@pytest.fixture(scope="module")
def conn(pithos_server):
    c = pithos_server.connection()
    yield c
    c.close()


@pytest.fixture(scope="module")
def rclone_env(pithos_server, tmp_path_factory):
    config = tmp_path_factory.mktemp("rclone") / "rclone.conf"
    config.write_text("")  # never a user's own configuration
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update({
        "RCLONE_CONFIG": str(config),
        "RCLONE_CONFIG_PITHOS_TYPE": "swift",
        "RCLONE_CONFIG_PITHOS_AUTH": pithos_server.auth_url,
        "RCLONE_CONFIG_PITHOS_USER": "test:tester",
        "RCLONE_CONFIG_PITHOS_KEY": "testing",
        "RCLONE_CONFIG_PITHOSV3_TYPE": "swift",
        "RCLONE_CONFIG_PITHOSV3_AUTH": f"{pithos_server.url}/v3",
        "RCLONE_CONFIG_PITHOSV3_AUTH_VERSION": "3",
        "RCLONE_CONFIG_PITHOSV3_USER": "tester",
        "RCLONE_CONFIG_PITHOSV3_KEY": "testing",
        "RCLONE_CONFIG_PITHOSV3_DOMAIN": "Default",
        "RCLONE_CONFIG_PITHOSV3_TENANT": "test",
        "RCLONE_CONFIG_PITHOSV3_TENANT_DOMAIN": "Default",
        # Large files in 1 MiB segments (a DLO), to cover rclone's chunked uploads.
        "RCLONE_CONFIG_PITHOSSEG_TYPE": "swift",
        "RCLONE_CONFIG_PITHOSSEG_AUTH": pithos_server.auth_url,
        "RCLONE_CONFIG_PITHOSSEG_USER": "test:tester",
        "RCLONE_CONFIG_PITHOSSEG_KEY": "testing",
        "RCLONE_CONFIG_PITHOSSEG_CHUNK_SIZE": "1Mi",
    })
    return env


def rclone(env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [RCLONE, *args, "--retries", "1", "--low-level-retries", "2", "--contimeout", "10s",
           "--timeout", "60s"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"rclone {args} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def make_tree(root) -> dict[str, bytes]:
    files = {**TREE, "big/six-mib.bin": six_mib(7)}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def remote_tree(conn, container: str) -> dict[str, tuple[int, str]]:
    _, listing = conn.get_container(container, full_listing=True)
    return {o["name"]: (o["bytes"], o["hash"]) for o in listing}


def local_tree(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            full = os.path.join(dirpath, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, root)] = fh.read()
    return out


def test_copy_check_sync(rclone_env, conn, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    rclone(rclone_env, "copy", str(src), "pithos:rc")
    assert remote_tree(conn, "rc") == {
        rel: (len(data), hashlib.md5(data).hexdigest()) for rel, data in files.items()}
    for rel in ("ünïcödé/日本語.txt", "empty", "a/b/c/deep.bin"):
        assert conn.get_object("rc", rel)[1] == files[rel]
    # check compares sizes and MD5s (the ETags) both ways.
    out = rclone(rclone_env, "check", str(src), "pithos:rc")
    assert "0 differences found" in out.stderr
    # ... and so it notices a change.
    (src / "a/sibling.txt").write_bytes(b"changed!\n")
    out = rclone(rclone_env, "check", str(src), "pithos:rc", check=False)
    assert out.returncode != 0 and "1 differences found" in out.stderr
    # sync: the changed file is uploaded, new ones added, removed ones deleted remotely.
    (src / "top.txt").unlink()
    shutil.rmtree(src / "a/b")
    (src / "new dir").mkdir()
    (src / "new dir/ново.txt").write_bytes(b"new\n")
    rclone(rclone_env, "sync", str(src), "pithos:rc")
    want = local_tree(src)
    assert remote_tree(conn, "rc") == {
        rel: (len(data), hashlib.md5(data).hexdigest()) for rel, data in want.items()}
    assert "top.txt" not in remote_tree(conn, "rc")
    assert conn.get_object("rc", "a/sibling.txt")[1] == b"changed!\n"
    out = rclone(rclone_env, "check", str(src), "pithos:rc")
    assert "0 differences found" in out.stderr
    # Back down again, through the Keystone v3 remote.
    dst = tmp_path / "dst"
    rclone(rclone_env, "copy", "pithosv3:rc", str(dst))
    assert local_tree(dst) == want
    rclone(rclone_env, "check", str(src), "pithosv3:rc")
    # lsf with the v3 remote sees the pseudo-directories.
    out = rclone(rclone_env, "lsf", "pithosv3:rc")
    assert sorted(out.stdout.split("\n")) == sorted(
        ["", "a/", "big/", "empty", "new dir/", "spaces in name/", "ünïcödé/"])


def test_chunked_upload_and_sync_delete(rclone_env, conn, tmp_path):
    src = tmp_path / "seg"
    src.mkdir()
    big = six_mib(9)
    name = "größe ✓.bin"  # in the segments' names and the manifest header too
    (src / name).write_bytes(big)
    (src / "small.txt").write_bytes(b"small\n")
    rclone(rclone_env, "copy", str(src), "pithosseg:rcseg")
    head = conn.head_object("rcseg", name)
    assert "x-object-manifest" in head  # rclone made a DLO of 1 MiB segments
    assert int(head["content-length"]) == len(big)
    assert conn.get_object("rcseg", name)[1] == big
    _, segs = conn.get_container("rcseg_segments")
    assert len(segs) == 6
    # check: sizes (a large object has no MD5 of its content for rclone to compare).
    rclone(rclone_env, "check", str(src), "pithosseg:rcseg")
    dst = tmp_path / "seg-down"
    rclone(rclone_env, "copy", "pithos:rcseg", str(dst))
    assert (dst / name).read_bytes() == big
    # sync after deleting the big file locally removes it and its segments remotely.
    (src / name).unlink()
    rclone(rclone_env, "sync", str(src), "pithosseg:rcseg")
    assert remote_tree(conn, "rcseg") == {
        "small.txt": (6, hashlib.md5(b"small\n").hexdigest())}
    assert conn.get_container("rcseg_segments")[1] == []

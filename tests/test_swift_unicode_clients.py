"""Issue 21, "Must show": the real clients terminate and round-trip with non-ASCII names
against a real `pithos serve`: `swift list --delimiter /`, `swift upload --segment-size`
(SLO and DLO) and `rclone lsf -R` (the Debian package, as tests/test_swift_rclone.py)."""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import subprocess

import pytest

from tests.swift_helpers import swift_cli

MiB = 1024 * 1024
NAMES = ["ünï/cödé/日本語.txt", "ünï/emoji-🦉.md", "ünï/z", "ascii/x", "top-ä"]
RCLONE = shutil.which("rclone") or "/usr/bin/rclone"


@pytest.fixture(scope="module", autouse=True)
def _drop_idle_connections(pithos_server):
    yield
    gc.collect()


@pytest.fixture(scope="module")
def tree(pithos_server):
    conn = pithos_server.connection()
    conn.put_container("ünï-tree")
    for name in NAMES:
        conn.put_object("ünï-tree", name, name.encode())
    yield conn
    conn.close()


def test_swift_list_delimiter_terminates_with_non_ascii_names(pithos_server, tree):
    out = swift_cli(pithos_server, "list", "ünï-tree", "--delimiter", "/", timeout=60).stdout
    assert out.split("\n")[:-1] == ["ascii/", "top-ä", "ünï/"]
    out = swift_cli(pithos_server, "list", "ünï-tree", "--delimiter", "/", "--prefix", "ünï/",
                    timeout=60).stdout
    assert out.split("\n")[:-1] == ["ünï/cödé/", "ünï/emoji-🦉.md", "ünï/z"]


@pytest.mark.parametrize("kind", ["--use-slo", "--use-dlo"])
def test_swift_upload_segment_size_non_ascii_round_trips(pithos_server, tree, tmp_path, kind):
    data = b"".join(hashlib.sha512(b"%d" % i).digest() for i in range(3 * MiB // 64 + 7))
    name = f"größe ✓ {kind[6:]}.bin"
    (tmp_path / "src").write_bytes(data)
    swift_cli(pithos_server, "upload", "ünï-lo", str(tmp_path / "src"), "--object-name", name,
              "--segment-size", str(MiB), kind)
    head = tree.head_object("ünï-lo", name)
    assert int(head["content-length"]) == len(data)
    assert ("x-static-large-object" in head) == (kind == "--use-slo")
    swift_cli(pithos_server, "download", "ünï-lo", name, "-o", str(tmp_path / "dst"))
    assert (tmp_path / "dst").read_bytes() == data
    assert name in swift_cli(pithos_server, "list", "ünï-lo", timeout=60).stdout.split("\n")
    swift_cli(pithos_server, "delete", "ünï-lo", name)
    _, segments = tree.get_container("ünï-lo_segments", prefix=name)
    assert segments == []


def test_rclone_lsf_recursive_terminates_with_non_ascii_names(pithos_server, tree, tmp_path):
    config = tmp_path / "rclone.conf"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update({"RCLONE_CONFIG": str(config), "RCLONE_CONFIG_P_TYPE": "swift",
                "RCLONE_CONFIG_P_AUTH": pithos_server.auth_url,
                "RCLONE_CONFIG_P_USER": "test:tester", "RCLONE_CONFIG_P_KEY": "testing"})
    proc = subprocess.run([RCLONE, "lsf", "-R", "p:ünï-tree", "--retries", "1",
                           "--contimeout", "10s", "--timeout", "60s"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:-1]) == sorted(
        [*NAMES, "ascii/", "ünï/", "ünï/cödé/"])

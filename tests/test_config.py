"""--blocks, --catalog and --config: every entry point finds its storage the same way."""

import json
import os
import subprocess
import sys

import pytest


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def test_blocks_and_catalog_urls_and_config_file(tmp_path):
    blocks = tmp_path / "elsewhere" / "blocks"
    catalog = f"sqlite:///{tmp_path}/elsewhere/cat.sqlite"
    f = tmp_path / "f"
    f.write_bytes(os.urandom(100_000))
    flags = ["--data-dir", str(tmp_path / "d"), "--blocks", f"file://{blocks}",
             "--catalog", catalog]
    root, _ = run("pithos.cli.main", "store", "put", str(f), *flags).stdout.split()
    assert any(blocks.glob("??/*")) and not (tmp_path / "d" / "blocks").exists()
    conf = tmp_path / "pithos.toml"
    conf.write_text(f'data_dir = "{tmp_path}/d"\nblocks = "file://{blocks}"\n'
                    f'catalog = "{catalog}"\n')
    got = run("pithos.cli.main", "store", "get", root.decode(), "--config", str(conf)).stdout
    assert got == f.read_bytes()
    run("pithos.cli.main", "user", "add", "a:b", "--key", "k", "--config", str(conf))
    assert os.path.exists(tmp_path / "elsewhere" / "cat.sqlite")
    users = json.loads(run("pithos.cli.main", "user", "list", "--json", "--config",
                           str(conf)).stdout)
    assert users == [{"account": "a", "user": "b", "admin": False}]
    run("archipelago.cli", "volume", "clone", "--from-root", root.decode(), "v", "--config",
        str(conf))
    listed = json.loads(run("archipelago.cli", "volume", "list", "--json", "--config",
                            str(conf)).stdout)
    assert [v["name"] for v in listed] == ["v"]
    assert json.loads(run("pithos.cli.main", "gc", "--json", "--config",
                          str(conf)).stdout)["reclaimed_blocks"] == 0


@pytest.mark.parametrize("flags, message", [
    (["--blocks", "ftp://x"], b"unknown block store URL"),
    (["--blocks", "rados://pool?color=red"], b"unknown rados URL parameter"),
    (["--config", "/nonexistent.toml"], b"cannot read"),
])
def test_bad_storage_settings_are_one_line(tmp_path, flags, message):
    proc = run("pithos.cli.main", "store", "stats", "--data-dir", str(tmp_path), *flags,
               check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert b"Traceback" not in proc.stderr

"""The sync client's errors (issue 24): permission denied on a file or a directory, a full disk
while downloading, links and special files.  Each is one clear line, skipped and retried on
the next run, never fatal, and nothing is lost: a path that cannot be read is never taken for
a deletion, and a download that fills the disk leaves no half file.  Runs the real `pithos
sync` command."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest
from sync_helpers import Device, assert_agree, container_files

T = 300


def run_cli(device: Device, prefix: tuple[str, ...] = (), preexec=None
            ) -> subprocess.CompletedProcess:
    cmd = [*prefix, sys.executable, "-m", "pithos.cli.main", "sync", device.folder,
           device.container, "--auth-url", device.creds.auth_url, "--user",
           device.creds.user, "--key", device.creds.key]
    return subprocess.run(cmd, capture_output=True, timeout=T, preexec_fn=preexec)


def lines_about(proc: subprocess.CompletedProcess, name: str) -> list[str]:
    return [ln for ln in proc.stderr.decode().splitlines() if name in ln]


def unprivileged() -> tuple[str, ...]:
    """A command prefix under which file permissions apply: nothing for a normal user; for
    root, setpriv without the capabilities that override them."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: permissions would not apply")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def test_permission_denied_file_and_directory(pithos_server, tmp_path):
    prefix = unprivileged()
    a = Device(pithos_server, tmp_path / "a", "err-perm")
    b = Device(pithos_server, tmp_path / "b", "err-perm")
    a.write("fine.txt", b"fine")
    a.write("locked/inner.txt", b"synced before the directory was locked")
    assert run_cli(a, prefix).returncode == 0
    a.write("secret.txt", b"not readable yet")
    os.chmod(a.path("secret.txt"), 0)
    os.chmod(a.path("locked"), 0)
    b.write("locked/from-b.txt", b"new on the other device")
    assert run_cli(b).returncode == 0
    try:
        proc = run_cli(a, prefix)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "Traceback" not in err, err
        # One line each, saying what and that it is retried.
        assert lines_about(proc, "secret.txt") == [
            "pithos sync: cannot read secret.txt: permission denied (skipped, will retry)"]
        assert lines_about(proc, "locked") == [
            "pithos sync: cannot list locked: permission denied (skipped, will retry)"]
        remote = container_files(pithos_server, "err-perm")
        # Nothing under the unreadable directory was taken for a deletion, nor downloaded.
        assert remote["locked/inner.txt"] == b"synced before the directory was locked"
        assert "locked/from-b.txt" in remote and "secret.txt" not in remote
    finally:
        os.chmod(a.path("locked"), 0o755)
        os.chmod(a.path("secret.txt"), 0o644)
    # Readable again: the next run does what was left.
    assert run_cli(a, prefix).returncode == 0
    assert a.read("locked/from-b.txt") == b"new on the other device"
    assert run_cli(b).returncode == 0
    assert_agree(pithos_server, a, b, container="err-perm")


@contextlib.contextmanager
def small_filesystem(size: str):
    """A tmpfs of `size` (root, and mounting allowed), else skip."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    where = tempfile.mkdtemp(prefix="pithos-full-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                          capture_output=True, timeout=30)
    if done.returncode != 0:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], capture_output=True, timeout=30)
        os.rmdir(where)


def test_disk_full_while_downloading(pithos_server, tmp_path):
    name = f"err-full-{uuid.uuid4().hex[:6]}"
    a = Device(pithos_server, tmp_path / "a", name)
    big = os.urandom(3 << 20)
    a.write("big.bin", big)
    a.write("small.txt", b"fits")
    assert run_cli(a).returncode == 0
    with small_filesystem("2m") as where:
        b = Device(pithos_server, os.path.join(where, "b"), name)
        proc = run_cli(b)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "Traceback" not in err, err
        assert lines_about(proc, "big.bin") == [
            "pithos sync: big.bin: disk full (skipped, will retry)"]
        # The rest came; no half file in the folder, and the space was given back.
        assert b.read("small.txt") == b"fits" and not os.path.exists(b.path("big.bin"))
        assert os.listdir(os.path.join(b.folder, ".pithos-sync", "tmp")) == []
        subprocess.run(["mount", "-o", "remount,size=16m", where], check=True, timeout=30)
        assert run_cli(b).returncode == 0
        assert b.read("big.bin") == big
        assert container_files(pithos_server, name)["big.bin"] == big


def _file_size_limit() -> None:
    # A write past the limit fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_file_size_limit_while_downloading(pithos_server, tmp_path):
    # Where no filesystem can be mounted, a file size limit fails the write alike.
    a = Device(pithos_server, tmp_path / "a", "err-fsize")
    b = Device(pithos_server, tmp_path / "b", "err-fsize")
    a.write("big.bin", os.urandom(2 << 20))
    a.write("small.txt", b"fits")
    assert run_cli(a).returncode == 0
    proc = run_cli(b, preexec=_file_size_limit)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
    assert lines_about(proc, "big.bin") == [
        "pithos sync: big.bin: disk full (the file size limit) (skipped, will retry)"]
    assert b.read("small.txt") == b"fits" and not os.path.exists(b.path("big.bin"))
    assert run_cli(b).returncode == 0
    assert_agree(pithos_server, a, b, container="err-fsize")


def test_links_and_special_files_are_skipped_with_a_line(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "err-links")
    a.write("real.txt", b"real")
    os.symlink("real.txt", a.path("link.txt"))
    os.symlink("/etc", a.path("outside"))
    os.mkfifo(a.path("pipe"))
    os.makedirs(a.path("empty/dir"))
    proc = run_cli(a)
    assert proc.returncode == 0, proc.stderr.decode()
    assert lines_about(proc, "link.txt") == [
        "pithos sync: skipping link.txt: a symbolic link (only regular files are synced)"]
    assert len(lines_about(proc, "outside")) == 1
    assert lines_about(proc, "pipe") == [
        "pithos sync: skipping pipe: not a regular file (only regular files are synced)"]
    # Only the regular file is in the container (empty directories are not synced).
    assert container_files(pithos_server, "err-links") == {"real.txt": b"real"}


def test_a_state_that_cannot_be_opened_is_one_line(pithos_server, tmp_path):
    """The folder's state cannot be made (a full disk: SQLite's "disk I/O error"; here a file
    where its directory goes): one line and exit 1, never a traceback."""
    a = Device(pithos_server, tmp_path / "a", "err-state")
    a.write("f.txt", b"f")
    with open(a.path(".pithos-sync"), "wb") as f:
        f.write(b"not a directory")
    proc = run_cli(a)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("pithos sync: cannot open the sync state in ")

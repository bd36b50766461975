"""`pithos sync` as a user runs it: credentials from the options or the swift CLI's
environment, remembered (mode 0600) after the first run; `status`; `--dry-run`;
`.pithosignore`; one line per error and the exit status (0 only when both sides agree)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from sync_helpers import Device, assert_agree, container_files

from pithos.sync.state import State


def pithos_sync(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "pithos.cli.main", "sync", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_first_run_remembers_the_credentials_in_a_private_state(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "cli-remember")
    a.write("x.txt", b"x")
    proc = a.cli()
    assert proc.returncode == 0, proc.stderr
    assert b"1 uploaded" in proc.stdout
    state_dir = os.path.join(a.folder, ".pithos-sync")
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(state_dir, "state.sqlite")).st_mode) == 0o600
    # Later runs need the folder only.
    a.write("y.txt", b"y")
    proc = pithos_sync(a.folder)
    assert proc.returncode == 0, proc.stderr
    assert container_files(pithos_server, "cli-remember") == {"x.txt": b"x", "y.txt": b"y"}
    # Another container for a folder already synced is refused.
    proc = pithos_sync(a.folder, "other")
    assert proc.returncode == 2 and "is synced with container cli-remember" in proc.stderr


def test_credentials_from_the_swift_environment(pithos_server, tmp_path):
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / "e.txt").write_bytes(b"e")
    env = {"ST_AUTH": pithos_server.auth_url, "ST_USER": "test:tester", "ST_KEY": "testing"}
    proc = pithos_sync(str(folder), "cli-env", env=env)
    assert proc.returncode == 0, proc.stderr
    assert container_files(pithos_server, "cli-env") == {"e.txt": b"e"}


def test_usage_and_login_errors_are_one_line(pithos_server, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    proc = pithos_sync(str(folder), "c", env={"ST_AUTH": "", "ST_USER": "", "ST_KEY": ""})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "missing auth-url, user, key" in proc.stderr
    proc = pithos_sync(str(folder), "c", "--auth-url", pithos_server.auth_url,
                       "--user", "test:tester", "--key", "wrong")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "login refused" in proc.stderr and "Traceback" not in proc.stderr
    proc = pithos_sync(str(tmp_path / "nope"), "c")
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    from conftest import free_port

    proc = pithos_sync(str(folder), "c", "--auth-url",
                       f"http://127.0.0.1:{free_port()}/auth/v1.0", "--user", "test:tester",
                       "--key", "testing")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "cannot reach" in proc.stderr and "Traceback" not in proc.stderr


def test_status_and_dry_run_change_nothing(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "cli-dry")
    a.write("first", b"1")
    assert a.cli().returncode == 0
    a.write("second", b"2")
    os.unlink(a.path("first"))
    proc = a.cli("--dry-run")
    assert proc.returncode == 1  # they do not agree yet
    assert b"would upload second" in proc.stdout and b"would delete-remote first" in proc.stdout
    assert container_files(pithos_server, "cli-dry") == {"first": b"1"}
    proc = pithos_sync("status", a.folder)
    assert proc.returncode == 0, proc.stderr
    assert "container: cli-dry" in proc.stdout and "testing" not in proc.stdout
    assert "pending: upload second" in proc.stdout
    assert "pending: delete-remote first" in proc.stdout
    assert a.cli().returncode == 0
    proc = pithos_sync("status", a.folder)
    assert "pending: nothing" in proc.stdout and "in agreement" in proc.stdout


def test_ignore_rules_both_ways(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "cli-ignore")
    b = Device(pithos_server, tmp_path / "b", "cli-ignore")
    for d in (a, b):
        d.write(".pithosignore", b"*.tmp\nbuild/\n!keep.tmp\n")
    a.write("notes.txt", b"n")
    a.write("scratch.tmp", b"s")
    a.write("keep.tmp", b"k")
    a.write("build/out.o", b"o")
    assert a.cli().returncode == 0
    assert sorted(container_files(pithos_server, "cli-ignore")) == [
        ".pithosignore", "keep.tmp", "notes.txt"]
    # A remote object an ignore rule matches is not downloaded either.
    conn = pithos_server.connection()
    conn.put_object("cli-ignore", "remote.tmp", b"r")
    conn.close()
    assert b.cli().returncode == 0
    assert sorted(b.files()) == [".pithosignore", "keep.tmp", "notes.txt"]


def test_a_path_that_cannot_be_done_is_one_line_and_the_rest_syncs(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "cli-errors")
    a.write("fine.txt", b"fine")
    # The server holds "clash/inner" but the folder has a file named "clash".
    conn = pithos_server.connection()
    conn.put_container("cli-errors")
    conn.put_object("cli-errors", "clash/inner", b"i")
    conn.close()
    a.write("clash", b"a file in the way")
    proc = a.cli()
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.decode().splitlines() if "clash/inner" in ln]
    assert lines and all("a file of the folder is in the way" in ln for ln in lines)
    assert "Traceback" not in proc.stderr.decode()
    files = container_files(pithos_server, "cli-errors")
    assert files["fine.txt"] == b"fine" and files["clash"] == b"a file in the way"


def test_one_sync_per_folder(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "cli-lock")
    state = State(a.folder)
    try:
        assert state.lock()
        proc = a.cli()
        assert proc.returncode == 1 and b"another pithos sync is running" in proc.stderr
    finally:
        state.close()
    assert a.cli().returncode == 0
    assert_agree(pithos_server, a, container="cli-lock")


def test_sync_does_not_import_the_server(pithos_server, tmp_path):
    """`pithos sync` is an HTTP client: a run imports neither the catalog nor SQLAlchemy
    (~0.3 s of CPU at every run; pithos.cli.main.sync_parser), nor the block store, the
    storage configuration or the mapper (~0.1 s more)."""
    a = Device(pithos_server, tmp_path / "a", "cli-light")
    a.write("x.txt", b"x")
    code = ("import sys; from pithos.cli.main import main; rc = main(sys.argv[1:]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy' "
            "or m.split('.')[:2] in (['pithos', 'catalog'], ['pithos', 'blocker'], "
            "['pithos', 'mapper'], ['pithos', 'config'])); "
            "print('heavy:', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "sync", a.folder, a.container,
                           "--auth-url", a.creds.auth_url, "--user", a.creds.user,
                           "--key", a.creds.key], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout, proc.stdout

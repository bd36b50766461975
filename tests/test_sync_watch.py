"""`pithos sync --watch`: a change in the folder reaches the container through filesystem
events, a change on the server reaches the folder by the periodic pass, and SIGTERM ends it
cleanly (exit 0)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from sync_helpers import Device, assert_agree, container_files


def eventually(predicate, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_watch_both_ways_then_sigterm(pithos_server, tmp_path):
    a = Device(pithos_server, tmp_path / "a", "watch")
    b = Device(pithos_server, tmp_path / "b", "watch")
    # --interval long enough that the local change travels by its event, not the timer.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pithos.cli.main", "sync", a.folder, "watch", "--watch",
         "--interval", "3", "--auth-url", a.creds.auth_url, "--user", a.creds.user,
         "--key", a.creds.key], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        eventually(lambda: container_files(pithos_server, "watch") == {})
        a.write("from-a/note.txt", b"written while watching")
        eventually(lambda: container_files(pithos_server, "watch").get("from-a/note.txt")
                   == b"written while watching")
        b.write("from-b.txt", b"from the other device")
        b.sync()
        eventually(lambda: a.files().get("from-b.txt") == b"from the other device")
        a.write("from-a/note.txt", b"edited while watching")
        eventually(lambda: container_files(pithos_server, "watch").get("from-a/note.txt")
                   == b"edited while watching")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    b.sync()
    assert_agree(pithos_server, a, b, container="watch")

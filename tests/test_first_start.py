"""`pithos serve`'s first start never loses the only credentials: the admin user is made only once
the server listens, and its key is shown again (a new one) at each start until it is used."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.conftest import free_port


def start(data_dir, port: int, log) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pithos.cli.main", "serve", "--data-dir", str(data_dir)],
        env={**os.environ, "PITHOS_LISTEN": f"127.0.0.1:{port}"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


class Serving:
    """`pithos serve` on a data directory, while it answers: the key it showed (or None) and its
    output.  The key is printed before the workers fork, so it is in the log once a worker
    answers."""

    def __init__(self, data_dir) -> None:
        self.port = free_port()
        self.log_path = f"{data_dir}.serve.{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = start(data_dir, self.port, self.log)

    @property
    def out(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    @property
    def key(self) -> str | None:
        keys = [line.split()[1] for line in self.out.splitlines()
                if line.strip().startswith("key:")]
        return keys[0] if keys else None

    def __enter__(self) -> Serving:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/info", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError(f"no server: {self.out}") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=30)
        self.log.close()

    def can_log_in(self, key: str) -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/auth/v1.0",
            headers={"X-Auth-User": "admin:admin", "X-Auth-Key": key})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False


def users(data_dir) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pithos.cli.main", "user", "list",
                          "--data-dir", str(data_dir)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return out.split()


def add_user(data_dir, spec: str, key: str) -> None:
    subprocess.run([sys.executable, "-m", "pithos.cli.main", "user", "add", spec, "--key", key,
                    "--admin", "--data-dir", str(data_dir)], check=True, capture_output=True,
                   timeout=60)


def test_a_start_that_cannot_listen_creates_no_user(tmp_path):
    data_dir = tmp_path / "data"
    with socket.socket() as busy, open(tmp_path / "busy.log", "wb") as log:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = start(data_dir, busy.getsockname()[1], log)
        proc.wait(timeout=120)
    assert proc.returncode != 0
    assert "key:" not in (tmp_path / "busy.log").read_text()
    assert users(data_dir) == []
    # The next start that can listen creates the admin and shows its key.
    with Serving(data_dir) as serving:
        assert serving.key is not None, serving.out
        assert serving.can_log_in(serving.key)
    assert users(data_dir) == ["admin:admin", "admin"]


def test_the_key_is_shown_anew_until_it_is_used_then_never(tmp_path):
    data_dir = tmp_path / "data"
    with Serving(data_dir) as first:
        pass  # its output is lost, say
    with Serving(data_dir) as second:
        assert first.key and second.key and first.key != second.key, second.out
        assert "pithos user add admin:admin --key NEW --admin" in second.out
        # Keys are stored hashed: the old one cannot be shown again, a new one replaces it.
        assert not second.can_log_in(first.key)
    with Serving(data_dir) as third:
        # A failed login is no use of the key: this start showed another.
        assert third.key and third.key != second.key
        assert not third.can_log_in(second.key)
        assert third.can_log_in(third.key)
    # Used once, the key is never replaced: no key shown, and it still works.
    with Serving(data_dir) as fourth:
        assert fourth.key is None and "admin:admin" not in fourth.out
        assert fourth.can_log_in(third.key)


def test_a_key_set_by_hand_is_never_replaced(tmp_path):
    data_dir = tmp_path / "data"
    with Serving(data_dir) as first:
        assert first.key
    add_user(data_dir, "admin:admin", "mine")
    with Serving(data_dir) as again:
        assert again.key is None, again.out
        assert again.can_log_in("mine")


def test_no_admin_is_made_where_the_operator_made_users_first(tmp_path):
    data_dir = tmp_path / "data"
    add_user(data_dir, "ops:alice", "k")
    with Serving(data_dir) as serving:
        assert serving.key is None, serving.out
    assert users(data_dir) == ["ops:alice", "admin"]

"""Helpers for tests and benchmarks: run `archipelago serve` as a real subprocess."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence


class ServerProcess:
    """`archipelago serve` on a data directory, on a free 127.0.0.1 port (or a Unix socket).
    Always stop (or kill) it: use it as a context manager or in a fixture's teardown.

    `args`: more options of `archipelago serve`.  `log_path`: its stderr (the log) goes to
    this file instead of a pipe, to be read while it runs (a pipe nobody reads fills up)."""

    def __init__(self, data_dir: str, unix_path: str | None = None,
                 timeout_s: float = 20.0, args: Sequence[str] = (),
                 log_path: str | None = None) -> None:
        self.data_dir = data_dir
        self.unix_path = unix_path
        self.log_path = log_path
        cmd = [sys.executable, "-m", "archipelago.cli", "serve", "--data-dir", data_dir]
        cmd += ["--socket", unix_path] if unix_path else ["--listen", "127.0.0.1:0"]
        cmd += list(args)
        if log_path is None:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.kill()
                raise TimeoutError("archipelago serve did not start")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                err = self.proc.stderr.read().decode() if self.proc.stderr else self.log()
                raise RuntimeError(f"archipelago serve exited: {err}")
            line += chunk
        self.address = line.decode().strip().removeprefix("listening on ")
        if unix_path:
            self.host, self.port = "", 0
        else:
            host, _, port = self.address.rpartition(":")
            self.host, self.port = host, int(port)

    def log(self) -> str:
        """What it logged so far (with `log_path` only)."""
        if self.log_path is None:
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def uri(self, name: str) -> str:
        if self.unix_path:
            return f"nbd+unix:///{name}?socket={self.unix_path}"
        return f"nbd://{self.host}:{self.port}/{name}"

    def qemu_uri(self, name: str) -> str:
        """The same export as qemu-img / qemu-io spell it."""
        if self.unix_path:
            return f"nbd+unix:///{name}?socket={self.unix_path}"
        return f"nbd://{self.host}:{self.port}/{name}"

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close_pipes()

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then wait (kill -9 if it hangs).  Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_pipes()
        return self.proc.returncode

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

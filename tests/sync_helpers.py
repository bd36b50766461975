"""Devices for the sync tests: a folder with its own state database, synced through a live
`pithos serve` in-process (the engine, whose byte counters the tests read) or as the real
`pithos sync` command."""

from __future__ import annotations

import os
import subprocess
import sys

from pithos.sync.engine import Engine, Stats
from pithos.sync.remote import Credentials, Remote
from pithos.sync.state import STATE_DIR, State


class Device:
    def __init__(self, server, folder, container: str = "sync",
                 user: str = "test:tester", key: str = "testing") -> None:
        self.server = server
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.container = container
        self.creds = Credentials(server.auth_url, user, key)
        self.lines: list[str] = []

    def sync(self, progress=None) -> Stats:
        """One `pithos sync` run in-process; asserts it ended in agreement."""
        stats = self.sync_unchecked(progress)
        assert stats.agreed, stats.errors
        return stats

    def sync_unchecked(self, progress=None) -> Stats:
        state = State(self.folder)
        try:
            assert state.lock()
            remote = Remote(self.creds, self.container)
            engine = Engine(state, remote, report=self.lines.append, say=self.lines.append,
                            progress=progress)
            engine.sync_once()
            return engine.stats
        finally:
            state.close()

    def state_chunks(self, rel: str):
        """The chunk list the files cache holds for `rel`."""
        state = State(self.folder)
        try:
            f = state.cached(rel)
            return f.chunks if f is not None else ()
        finally:
            state.close()

    def cli(self, *args: str, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pithos.cli.main", "sync", self.folder, self.container,
               "--auth-url", self.creds.auth_url, "--user", self.creds.user,
               "--key", self.creds.key, *args]
        return subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)

    def path(self, rel: str) -> str:
        return os.path.join(self.folder, rel)

    def write(self, rel: str, data: bytes) -> None:
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)

    def read(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read()

    def files(self) -> dict[str, bytes]:
        out = {}
        for root, dirs, names in os.walk(self.folder):
            if root == self.folder and STATE_DIR in dirs:
                dirs.remove(STATE_DIR)
            for n in names:
                p = os.path.join(root, n)
                with open(p, "rb") as f:
                    out[os.path.relpath(p, self.folder)] = f.read()
        return out


def container_files(server, container: str = "sync") -> dict[str, bytes]:
    """{name: bytes} of the container ({} while it does not exist)."""
    from swiftclient.exceptions import ClientException

    conn = server.connection()
    try:
        try:
            _, listing = conn.get_container(container, full_listing=True)
        except ClientException as exc:
            if exc.http_status == 404:
                return {}
            raise
        return {o["name"]: conn.get_object(container, o["name"])[1] for o in listing}
    finally:
        conn.close()


def assert_agree(server, *devices: Device, container: str = "sync") -> dict[str, bytes]:
    """Every folder and the container hold the same names with the same bytes."""
    remote = container_files(server, container)
    for d in devices:
        local = d.files()
        assert sorted(local) == sorted(remote), (d.folder, sorted(local), sorted(remote))
        for name, data in remote.items():
            assert local[name] == data, (d.folder, name)
    return remote

"""`pithos serve` on loopback, the system measured by swift_bench.py.

Started exactly as a user would: `pithos user add` for the benchmark's tempauth-style user,
then `pithos serve --data-dir DIR --listen 127.0.0.1:PORT --workers N`, on the embedded
defaults (blocks in a local directory, catalog in SQLite) unless `storage_flags` name others
(e.g. `--blocks rados://... --catalog postgresql+psycopg://...`, as scaleout_bench.py does).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from swift_peer import TEST_KEY, TEST_USER, Service, free_port, wait_for_auth


class PithosPeer:
    name = "pithos"

    def __init__(self, work_dir: Path, pithos: Path, workers: int,
                 storage_flags: list[str] | None = None, name: str = "pithos") -> None:
        self.work_dir = work_dir
        self.pithos = pithos
        self.workers = workers
        # Given to `pithos user add` and `pithos serve` after --data-dir.
        self.storage_flags = list(storage_flags or [])
        self.name = name
        self.services: list[Service] = []
        self.auth_url = ""

    def start(self, timeout_s: float = 60.0) -> tuple[str, str]:
        """Create the user, start the server and return (storage URL, token) once auth
        works."""
        data_dir = self.work_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        if not self.pithos.exists():
            raise RuntimeError(f"{self.pithos} not found: install the project first")
        add = [str(self.pithos), "user", "add", TEST_USER, "--key", TEST_KEY, "--admin"]
        storage = ["--data-dir", str(data_dir), *self.storage_flags]
        done = subprocess.run([*add, *storage], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(add)}` failed:\n{done.stdout}{done.stderr}")
        port = free_port()
        argv = [str(self.pithos), "serve", *storage]
        argv += ["--listen", f"127.0.0.1:{port}", "--workers", str(self.workers)]
        self.services.append(Service(f"{self.name} serve", argv, self.work_dir / "serve.log"))
        self.auth_url = f"http://127.0.0.1:{port}/auth/v1.0"
        return wait_for_auth(self.auth_url, self.services, timeout_s)

    def cpu_seconds(self) -> float:
        return sum(service.cpu_seconds() for service in self.services)

    def stop(self) -> None:
        for service in self.services:
            service.stop()
        self.services.clear()

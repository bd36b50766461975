"""Helpers of the compute tests: `pithos serve --compute` and `compute agent` as real
processes on 127.0.0.1, the tiny guest (scripts/guest-image) registered through the image API,
a Keystone token, and the clean-up of every process (VMs included) whatever happens.

Data directories are short paths under /tmp: a VM's QMP socket must fit in a Unix socket path
(107 bytes), and pytest's tmp_path can be longer than that allows."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30
BOOT_TIMEOUT_S = 120
MARKER_OFFSET = 1 * MiB

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None,
    reason="qemu-system-x86 / qemu-utils not installed (scripts/setup --test)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def guest_files() -> dict[str, str]:
    """kernel, initrd and disk of the test guest, built once per machine (cached)."""
    out = subprocess.run([str(REPO / "scripts" / "guest-image")], capture_output=True,
                         timeout=600, check=True).stdout.decode()
    return dict(line.split(" ", 1) for line in out.splitlines())


def short_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def kill_vms(under: str) -> None:
    """SIGKILL every qemu whose command line names a path under `under` (VMs are in sessions
    of their own: they outlive the processes that started them)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if b"qemu-system" in argv and under.encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def qemu_pids(under: str) -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
                if b"qemu-system" in argv and under.encode() in argv:
                    out.add(int(pid))
    return out


class Proc:
    """A child process whose output goes to a log file (read while it runs)."""

    def __init__(self, cmd: list[str], log_path: str, env: dict[str, str] | None = None
                 ) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO,
                                         env={**os.environ, **(env or {})},
                                         start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, pattern: str, timeout_s: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}): {self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in {timeout_s} s: {self.log()[-3000:]}")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc.poll() is None:
            # The whole group: gunicorn's workers and the local agent stop with the master.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group


class Cloud:
    """`pithos serve --compute` on a fresh data directory, with an admin token."""

    def __init__(self, agent_args: str = "", env: dict[str, str] | None = None) -> None:
        self.dir = short_dir("pcomp-")
        self.data_dir = os.path.join(self.dir, "d")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.agents: list[Proc] = []
        self.server = Proc([sys.executable, "-m", "pithos.cli.main", "serve", "--compute",
                            "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir],
                           os.path.join(self.dir, "serve.log"),
                           env={"PITHOS_COMPUTE_AGENT_ARGS": agent_args, **(env or {})})
        try:
            self.key = self.server.wait_log(r"key:\s+(\S+)").group(1)
            self.server.wait_log(r"compute agent local: listening")
            self.token = self.login("admin", "admin", self.key)
            self.wait_agents({"local"})
        except BaseException:
            self.close()
            raise

    @property
    def nova(self) -> str:
        return f"{self.url}/compute/v2.1"

    def login(self, account: str, user: str, key: str) -> str:
        r = requests.post(f"{self.url}/v3/auth/tokens", timeout=10, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": "Default"}, "password": key}}},
            "scope": {"project": {"name": account, "domain": {"name": "Default"}}}}})
        assert r.status_code == 201, r.text
        return r.headers["X-Subject-Token"]

    def add_user(self, account: str, user: str, key: str, admin: bool = True) -> str:
        cmd = [sys.executable, "-m", "pithos.cli.main", "user", "add", f"{account}:{user}",
               "--key", key, "--data-dir", self.data_dir] + (["--admin"] if admin else [])
        subprocess.run(cmd, check=True, capture_output=True, timeout=60, cwd=REPO)
        return self.login(account, user, key)

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"X-Auth-Token": token or self.token}

    def osenv(self) -> dict[str, str]:
        """The environment of the `openstack` CLI, logged in as admin:admin."""
        return {**os.environ, "OS_AUTH_URL": f"{self.url}/v3", "OS_USERNAME": "admin",
                "OS_PASSWORD": self.key, "OS_PROJECT_NAME": "admin",
                "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
                "OS_IDENTITY_API_VERSION": "3"}

    def agent(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Another `compute agent` on this data directory, with a state directory of its
        own."""
        state = os.path.join(self.dir, name)
        p = Proc([sys.executable, "-m", "pithos.cli.compute", "agent", "--api", self.url,
                  "--name", name, "--state-dir", state, "--data-dir", self.data_dir, *args],
                 os.path.join(self.dir, f"{name}.{len(self.agents)}.log"), env=env)
        self.agents.append(p)
        p.wait_log(rf"compute agent {name}: listening")
        return p

    def wait_agents(self, names: set[str], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-m", "pithos.cli.compute", "agents",
                                  "--json", "--data-dir", self.data_dir], capture_output=True,
                                 timeout=30, cwd=REPO)
            if out.returncode == 0 and names <= {a["name"] for a in _json(out.stdout)
                                                 if a["last_report_s"] < 10}:
                return
            time.sleep(0.3)
        raise AssertionError(f"agents {names} did not report")

    # -- images --------------------------------------------------------------------------

    def image(self, path: str, name: str, token: str | None = None, **fields: Any) -> str:
        """Register a file through the image API (Glance v2); its id."""
        doc = {"name": name, "disk_format": "raw", "container_format": "bare", **fields}
        r = requests.post(f"{self.url}/image/v2/images", json=doc, headers=self.h(token),
                          timeout=30)
        assert r.status_code == 201, r.text
        image_id = str(r.json()["id"])
        with open(path, "rb") as f:
            r = requests.put(f"{self.url}/image/v2/images/{image_id}/file", data=f,
                             headers={**self.h(token),
                                      "Content-Type": "application/octet-stream"}, timeout=120)
        assert r.status_code == 204, r.text
        return image_id

    def guest_image(self, guest: dict[str, str], token: str | None = None,
                    name: str = "guest", **fields: Any) -> str:
        """The tiny guest as Nova boots such images: a disk image naming a kernel image and
        a ramdisk image (kernel_id / ramdisk_id), booted with -kernel/-initrd."""
        kernel = self.image(guest["kernel"], f"{name}-kernel", token, disk_format="aki",
                            container_format="aki")
        ramdisk = self.image(guest["initrd"], f"{name}-ramdisk", token, disk_format="ari",
                             container_format="ari")
        return self.image(guest["disk"], name, token, kernel_id=kernel, ramdisk_id=ramdisk,
                          os_command_line="quiet pithos.net=0", **fields)

    # -- servers -------------------------------------------------------------------------

    def create(self, name: str, image: str, flavor: str = "1", token: str | None = None,
               **server: Any) -> requests.Response:
        body = {"server": {"name": name, "imageRef": image, "flavorRef": flavor, **server}}
        return requests.post(f"{self.nova}/servers", json=body, headers=self.h(token),
                             timeout=60)

    def show(self, server_id: str, token: str | None = None) -> dict[str, Any]:
        r = requests.get(f"{self.nova}/servers/{server_id}", headers=self.h(token), timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json()["server"])

    def wait_status(self, server_id: str, status: str, timeout_s: float = BOOT_TIMEOUT_S
                    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.show(server_id)
            if s["status"] == status and s["OS-EXT-STS:task_state"] is None:
                return s
            if s["status"] == "ERROR" and status != "ERROR":
                raise AssertionError(f"server {server_id} went to ERROR: {s.get('fault')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server {server_id} is {s['status']}, not {status}")
            time.sleep(0.3)

    def action(self, server_id: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.nova}/servers/{server_id}/action", json=body,
                             headers=self.h(), timeout=600)

    def console(self, server_id: str) -> str:
        r = self.action(server_id, {"os-getConsoleOutput": {}})
        assert r.status_code == 200, r.text
        return str(r.json()["output"])

    def wait_console(self, server_id: str, pattern: str, timeout_s: float = BOOT_TIMEOUT_S
                     ) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            m = re.search(pattern, self.console(server_id))
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the console of {server_id}: "
                                     f"{self.console(server_id)[-2000:]}")
            time.sleep(0.5)

    def delete(self, server_id: str, wait: bool = True) -> None:
        r = requests.delete(f"{self.nova}/servers/{server_id}", headers=self.h(), timeout=30)
        assert r.status_code in (204, 404), r.text
        deadline = time.monotonic() + 60
        while wait and requests.get(f"{self.nova}/servers/{server_id}", headers=self.h(),
                                    timeout=30).status_code != 404:
            assert time.monotonic() < deadline, f"server {server_id} was not deleted"
            time.sleep(0.3)

    def volumes(self) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "archipelago.cli", "volume", "list",
                              "--json", "--data-dir", self.data_dir], capture_output=True,
                             timeout=60, check=True, cwd=REPO)
        return [h["name"] for h in _json(out.stdout)]

    def close(self) -> None:
        for a in self.agents:
            a.stop()
        self.server.stop()
        kill_vms(self.dir)
        if os.environ.get("PITHOS_KEEP_TEST_DIRS") is None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _json(raw: bytes) -> Any:
    import json
    return json.loads(raw)



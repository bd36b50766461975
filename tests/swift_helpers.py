"""Helpers shared by the Swift API tests that drive a real `pithos serve` (see conftest's
`pithos_server`): raw HTTP with a token, the `swift` CLI as a subprocess, store statistics.

Every connection goes to 127.0.0.1 with a timeout, and is closed after use: an idle keep-alive
connection left open would hold the server's graceful shutdown until its timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import quote

TIMEOUT_S = 60
SWIFT_CLI = os.path.join(os.path.dirname(sys.executable), "swift")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Login:
    token: str
    storage_url: str  # http://127.0.0.1:PORT/v1/AUTH_account

    @property
    def path(self) -> str:
        return "/v1/" + self.storage_url.split("/v1/", 1)[1]


def _port(server) -> int:
    return int(server.port)


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, token: str | None = None) -> Reply:
    """One request on its own connection.  `path` is sent as given (already quoted)."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=TIMEOUT_S)
    try:
        h = dict(headers or {})
        if token is not None:
            h["X-Auth-Token"] = token
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def login(server, user: str = "test:tester", key: str = "testing") -> Login:
    reply = request(server, "GET", "/auth/v1.0",
                    headers={"X-Auth-User": user, "X-Auth-Key": key})
    assert reply.status == 200, reply
    return Login(reply.headers["x-auth-token"], reply.headers["x-storage-url"])


def q(name: str) -> str:
    return quote(name, safe="/")


def swift_cli(server, *args: str, user: str = "test:tester", key: str = "testing",
              cwd: str | None = None, check: bool = True, timeout: int = 300
              ) -> subprocess.CompletedProcess[str]:
    """The python-swiftclient `swift` command with v1.0 auth."""
    cmd = [SWIFT_CLI, "-A", server.auth_url, "-U", user, "-K", key, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[3:]} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def swift_cli_v3(server, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """The `swift` command logging in through the Keystone v3 endpoint."""
    cmd = [SWIFT_CLI, "--auth-version", "3", "--os-auth-url", f"{server.url}/v3",
           "--os-username", "tester", "--os-password", "testing", "--os-project-name", "test",
           "--os-user-domain-name", "Default", "--os-project-domain-name", "Default", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"swift (v3) {args} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def store_stats(server) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", "store", "stats", "--json",
                           *server.storage_flags],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout)

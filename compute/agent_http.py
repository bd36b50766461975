"""The agent's small HTTP API, its reports to the compute API, and the client the API uses.

Agent API (JSON; every request carries `X-Compute-Key`, the deployment's shared secret):

    GET    /v1/info                       name, capacity, accelerator
    GET    /v1/vms                        every server's state
    POST   /v1/vms                        create (body: the create request) -> 202, state
    GET    /v1/vms/ID                     one server's state
    POST   /v1/vms/ID/action              {"action": start|stop|reboot|hard_reboot} -> 202
    DELETE /v1/vms/ID                     -> 202 (gone from the list once done)
    GET    /v1/vms/ID/console?length=N    the serial console log (text/plain)
    POST   /v1/vms/ID/snapshot            {"name": SNAP} -> {"name", "root", "size"}
    DELETE /v1/snapshots/NAME             drop a snapshot head once its root is an image

Errors: {"error": message} with 400, 401, 404, 409 (never a 5xx for bad input).

Reports: the agent PUTs {url, vcpus, ram_mib, vms: [state, ...]} to
`API/compute/internal/agents/NAME` every HEARTBEAT_S seconds and at once after any change, so
the API's view of its servers is at most that old. The agent is the truth about its VMs; the
API writes what it reports.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from compute.agent import Agent
from pithos.core.errors import (
    BackendError,
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    PithosError,
    Unauthenticated,
)

log = logging.getLogger("compute.agent")
HEARTBEAT_S = 2.0
MAX_BODY = 1 << 20
KEY_HEADER = "X-Compute-Key"


def check_key(given: str | None, key: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent, name: str, key: str) -> None:
        super().__init__(address, _Handler)
        self.agent = agent
        self.name = name
        self.key = key

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}"


def _status(exc: PithosError) -> int:
    for cls, status in ((NotFound, 404), (Conflict, 409), (InvalidArgument, 400),
                        (Forbidden, 403), (Unauthenticated, 401)):
        if isinstance(exc, cls):
            return status
    return 503


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: Any, text: bool = False) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if text
                         else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise InvalidArgument("bad Content-Length") from None
        if n > MAX_BODY or n < 0:
            raise InvalidArgument("request body too large")
        raw = self.rfile.read(n) if n else b"{}"
        try:
            body = json.loads(raw)
        except ValueError:
            raise InvalidArgument("the body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidArgument("the body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        try:
            if not check_key(self.headers.get(KEY_HEADER), self.server.key):
                raise Unauthenticated("a valid X-Compute-Key is required")
            url = urllib.parse.urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            query = urllib.parse.parse_qs(url.query)
            body = self._body() if method in ("POST", "PUT") else {}
            self._route(method, parts, query, body)
        except PithosError as exc:
            self._send(_status(exc), {"error": str(exc)})
        except Exception as exc:
            log.exception("%s %s failed", method, self.path)
            self._send(503, {"error": f"agent failure: {exc}"})

    def _route(self, method: str, parts: list[str], query: dict[str, list[str]],
               body: dict[str, Any]) -> None:
        agent = self.server.agent
        if parts[:1] != ["v1"]:
            raise NotFound("no such path")
        rest = parts[1:]
        if rest == ["info"] and method == "GET":
            self._send(200, {"name": self.server.name, "vcpus": agent.capacity.vcpus,
                             "ram_mib": agent.capacity.ram_mib, "accel": agent.accel,
                             "accel_reason": agent.accel_reason})
        elif rest == ["vms"] and method == "GET":
            self._send(200, {"vms": agent.states()})
        elif rest == ["vms"] and method == "POST":
            self._send(202, agent.create(body))
        elif len(rest) == 2 and rest[0] == "vms" and method == "GET":
            self._send(200, agent.state(rest[1]))
        elif len(rest) == 2 and rest[0] == "vms" and method == "DELETE":
            self._send(202, agent.delete(rest[1]))
        elif len(rest) == 3 and rest[0] == "vms" and rest[2] == "action" and method == "POST":
            self._send(202, agent.power(rest[1], str(body.get("action"))))
        elif len(rest) == 3 and rest[0] == "vms" and rest[2] == "console" and method == "GET":
            length = None
            if query.get("length"):
                try:
                    length = int(query["length"][0])
                except ValueError:
                    raise InvalidArgument("length must be a whole number") from None
            self._send(200, agent.console(rest[1], length), text=True)
        elif len(rest) == 3 and rest[0] == "vms" and rest[2] == "snapshot" and method == "POST":
            self._send(200, agent.snapshot(rest[1], str(body.get("name") or "")))
        elif len(rest) == 2 and rest[0] == "snapshots" and method == "DELETE":
            agent.delete_snapshot(rest[1])
            self._send(200, {"deleted": rest[1]})
        else:
            raise NotFound(f"no route {method} {self.path}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


class Reporter:
    """Registers the agent with the API and keeps its report fresh: every HEARTBEAT_S and
    right after a change (`nudge`). An API that is down is retried; nothing is lost, since
    each report is the whole state."""

    def __init__(self, server: AgentServer, api_url: str) -> None:
        self.server = server
        self.api_url = api_url.rstrip("/")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.reported = threading.Event()  # set after the first report the API took
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def report_once(self) -> None:
        agent = self.server.agent
        doc = {"url": self.server.url, "vcpus": agent.capacity.vcpus,
               "ram_mib": agent.capacity.ram_mib, "vms": agent.states()}
        req = urllib.request.Request(
            f"{self.api_url}/compute/internal/agents/{urllib.parse.quote(self.server.name)}",
            data=json.dumps(doc).encode(), method="PUT",
            headers={"Content-Type": "application/json", KEY_HEADER: self.server.key})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        self.reported.set()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.report_once()
                if failing:
                    log.warning("reporting to %s again", self.api_url)
                failing = False
            except (OSError, urllib.error.URLError, ValueError) as exc:
                if not failing:
                    log.warning("cannot report to the API at %s: %s (retrying)",
                                self.api_url, exc)
                failing = True
            self._wake.wait(HEARTBEAT_S)


class AgentClient:
    """The API's side: calls an agent. Errors come back as the project's errors (NotFound,
    Conflict, InvalidArgument), an unreachable agent as a transient BackendError."""

    def __init__(self, url: str, key: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/v1{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              KEY_HEADER: self.key})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                raw = resp.read()
                if resp.headers.get_content_type() == "text/plain":
                    return raw.decode(errors="replace")
                return json.loads(raw)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", str(exc))
            except ValueError:
                message = str(exc)
            for status, cls in ((404, NotFound), (409, Conflict), (400, InvalidArgument)):
                if exc.code == status:
                    raise cls(message) from None
            raise BackendError(f"compute agent {self.url}: {exc.code} {message}",
                               transient=True) from None
        except (OSError, ValueError) as exc:
            raise BackendError(f"compute agent {self.url} unreachable: {exc}",
                               transient=True) from None

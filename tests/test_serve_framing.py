"""Every answer on a keep-alive connection is framed: a body's end is known from its
Content-Length or its chunked coding (a 204, a 304 and an answer to HEAD have none), so the
client reads exactly that and sends its next request on the same connection.  An answer with
neither leaves a keep-alive client waiting for an end that never comes: a sync client's eight
upload threads once sat on such answers for 15 minutes, the server idle.  The worker builds
its answers' heads itself (pithos/cli/serve_worker.py, serve_loop.py), so each kind of answer
is read here strictly, one after another on one connection, with a bounded wait."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest

from pithos.core.hashing import block_hash
from tests.swift_helpers import login

T = 20
# Both configurations: their answers come from different stores and catalogs.
SERVER_CONFIGS = ("embedded", "scaleout")


class StrictConnection:
    """One keep-alive connection; each answer read by its own framing only."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError("the server closed the connection")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("PUT", "POST"):
            head.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        status_line = self._line().decode("latin-1")
        status = int(status_line.split(" ", 2)[1])
        got: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            assert key not in ("content-length", "transfer-encoding") or key not in got, \
                f"{method} {path}: {key} twice"
            got[key] = value.strip()
        assert got.get("connection", "").lower() != "close", \
            f"{method} {path}: {status} closes a keep-alive connection"
        if method == "HEAD" or status in (204, 304):
            assert got.get("transfer-encoding") is None, (method, path, status, got)
            return status, got, b""
        if "transfer-encoding" in got:
            assert got["transfer-encoding"].lower() == "chunked", got
            assert "content-length" not in got, f"{method} {path}: both framings"
            data = b""
            while (size := int(self._line().split(b";")[0], 16)):
                data += self._take(size)
                assert self._take(2) == b"\r\n"
            while self._line():  # trailers, then the blank line
                pass
            return status, got, data
        assert "content-length" in got, \
            f"{method} {path}: {status} has neither Content-Length nor chunked coding: {got}"
        return status, got, self._take(int(got["content-length"]))


@pytest.fixture(scope="module")
def me(pithos_server):
    return login(pithos_server)


def test_every_kind_of_answer_is_framed_on_one_keep_alive_connection(pithos_server, me):
    c = StrictConnection(pithos_server.port)
    auth = {"X-Auth-Token": me.token}
    base = me.path
    data = os.urandom(100_000)
    chunks = [data[:30_000], data[30_000:]]
    hashes = [block_hash(x) for x in chunks]
    try:
        def ask(method, path, expect, headers=None, body=b""):
            status, got, answer = c.request(method, path, {**auth, **(headers or {})}, body)
            assert status in expect, (method, path, status, answer[:300])
            return got, answer

        ask("GET", "/info", {200})
        ask("PUT", f"{base}/f", {201, 202})
        ask("PUT", f"{base}/f", {202})  # exists already
        ask("PUT", f"{base}/f/small", {201}, body=b"hello")
        ask("PUT", f"{base}/f/big", {201}, body=data)
        ask("GET", f"{base}/f/big", {200})
        ask("HEAD", f"{base}/f/big", {200})
        got, _ = ask("GET", f"{base}/f/big", {206}, {"Range": "bytes=10-99"})
        ask("GET", f"{base}/f/big", {416}, {"Range": "bytes=999999-"})
        etag = got["etag"].strip('"')
        ask("GET", f"{base}/f/big", {304}, {"If-None-Match": etag})
        ask("GET", f"{base}/f/big", {412}, {"If-Match": "nope"})
        ask("GET", f"{base}/f/nothing", {404})
        ask("GET", f"{base}/f", {200})
        ask("GET", f"{base}/f?format=json", {200})
        ask("GET", f"{base}/f?format=xml", {200})
        ask("HEAD", f"{base}/f", {204})
        ask("GET", f"{base}", {200})
        ask("POST", f"{base}/f/small", {202}, {"X-Object-Meta-A": "b"})
        ask("COPY", f"{base}/f/small", {201}, {"Destination": "f/copy"})
        ask("OPTIONS", f"{base}/f/small", {200, 401, 405},
            {"Origin": "http://x", "Access-Control-Request-Method": "GET"})
        ask("DELETE", f"{base}/f/copy", {204})
        ask("DELETE", f"{base}/f/copy", {404})
        # The sync client's requests: which chunks are missing, the chunks, the hashmap.
        _, missing = ask("POST", f"{base}/f?missing", {200},
                         {"Content-Type": "application/json"},
                         json.dumps([h.hex() for h in hashes]).encode())
        assert json.loads(missing)
        ask("PUT", f"{base}/f/mapped?hashmap", {409},
            {"Content-Type": "application/json"},
            json.dumps({"bytes": len(data), "hashes": [h.hex() for h in hashes],
                        "lengths": [len(x) for x in chunks]}).encode())
        ask("POST", f"{base}/f?blocks", {200, 201},
            {"Content-Type": "application/octet-stream",
             "X-Block-Lengths": ",".join(str(len(x)) for x in chunks)}, data)
        ask("PUT", f"{base}/f/mapped?hashmap", {201},
            {"Content-Type": "application/json",
             "ETag": hashlib.md5(data).hexdigest()},
            json.dumps({"bytes": len(data), "hashes": [h.hex() for h in hashes],
                        "lengths": [len(x) for x in chunks]}).encode())
        ask("GET", f"{base}/f/mapped?hashmap&format=json", {200})
        ask("GET", f"{base}/f?changes_since=0", {200})
        # Large objects: a manifest's answer is streamed from its segments.
        ask("PUT", f"{base}/f/dlo", {201}, {"X-Object-Manifest": "f/big"})
        ask("GET", f"{base}/f/dlo", {200})
        manifest = json.dumps([{"path": "/f/big", "etag": None, "size_bytes": None}])
        ask("PUT", f"{base}/f/slo?multipart-manifest=put", {201}, body=manifest.encode())
        ask("GET", f"{base}/f/slo", {200})
        ask("GET", f"{base}/f/slo?multipart-manifest=get", {200})
        # Refusals: a bad token, a bad name, a body too large for its limit.
        status, _, _ = c.request("GET", f"{base}/f/big", {"X-Auth-Token": "bad"})
        assert status == 401
        ask("PUT", f"{base}/f/" + "x" * 1100, {400})
        ask("GET", "/v1/", {204, 400, 401, 404, 412})
        ask("GET", f"{base}/f/big", {200})  # and the connection still serves
    finally:
        c.close()

"""A client that stops sending is cut off (`pithos serve --client-timeout`, `--keepalive`).

A request body that sends nothing for the client timeout ends in 408 Request Timeout, and
whatever its upload held (its writer lease, its pieces and threads) is let go: nothing is
committed, the object keeps its previous version, and the garbage collector is no longer held
back by it.  The timeout bounds each wait for the client's next bytes, never the whole upload:
a slow client that keeps sending is never cut off.  A request whose line or headers stop
arriving is disconnected (gunicorn's keep-alive timer).  Raw sockets, so the client can stall
exactly where a test wants it to.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pithos.core.errors import ClientTimeout
from pithos.core.hashing import block_hash, to_hex
from pithos.core.offload import Offload
from pithos.mapper.gc import CLOCK_MARGIN_S
from tests.conftest import PithosServer

CLIENT_TIMEOUT_S = 2
KEEPALIVE_S = 2
# How long a test waits for an answer before it fails (never reached when all is well).
PATIENCE_S = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = PithosServer(tmp_path_factory.mktemp("client-timeout") / "data",
                          serve_args=("--client-timeout", str(CLIENT_TIMEOUT_S),
                                      "--keepalive", str(KEEPALIVE_S)))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def account(server):
    """(storage URL, its path, auth headers) of test:tester, with container c."""
    r = requests.get(server.auth_url, headers={"X-Auth-User": "test:tester",
                                               "X-Auth-Key": "testing"}, timeout=30)
    r.raise_for_status()
    url, headers = r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}
    assert requests.put(f"{url}/c", headers=headers, timeout=30).status_code in (201, 202)
    return url, url[len(server.url):], headers


def send_head(server, method: str, path: str, headers: dict[str, str],
              body: bytes = b"") -> socket.socket:
    """A connection that sent a request's line and headers and `body`, and no more yet."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body)
    return sock


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The next answer on a connection: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise AssertionError(f"the connection closed without an answer: {data!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip()
              for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(fields.get("content-length", "0")):
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return int(lines[0].split()[1]), fields, body


def rest_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    try:
        while more := sock.recv(65536):
            out += more
    except ConnectionResetError:
        pass
    return out


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def versions(url: str, headers: dict[str, str], name: str) -> list[list[str]]:
    r = requests.get(f"{url}/c/{name}", params={"version": "list", "format": "json"},
                     headers=headers, timeout=30)
    r.raise_for_status()
    return list(r.json()["versions"])


# -- a body that stops arriving ---------------------------------------------------------------

def test_a_put_that_stalls_gets_408_and_the_object_keeps_its_version(account, server):
    url, path, h = account
    old = os.urandom(3000)
    assert requests.put(f"{url}/c/kept", data=old, headers=h, timeout=30).status_code == 201
    before = versions(url, h, "kept")
    # More than a block (streamed to the block store as it came), then nothing more.
    sent = os.urandom(4 * 1024 * 1024 + 300_000)
    sock = send_head(server, "PUT", f"{path}/c/kept",
                     {**h, "Content-Length": str(6 * 1024 * 1024)}, sent)
    with sock:
        status, _, body = answer(sock)
        assert status == 408, body
        assert b"request body" in body
    got = requests.get(f"{url}/c/kept", headers=h, timeout=30)
    assert got.status_code == 200 and got.content == old
    assert versions(url, h, "kept") == before


def test_a_chunked_put_that_stalls_gets_408_and_creates_nothing(account, server):
    url, path, h = account
    sock = send_head(server, "PUT", f"{path}/c/never", {**h, "Transfer-Encoding": "chunked"},
                     chunk(os.urandom(1024 * 1024)) + chunk(os.urandom(5000)) + b"4000\r\nxy")
    with sock:
        status, fields, body = answer(sock)
        assert status == 408, body
        # Where the body stopped is unknown: the connection carries no further request.
        assert fields.get("connection") == "close"
        # Bytes that would end the body and make a request, were the connection kept: they
        # are never answered.
        try:
            sock.sendall(b"\r\n0\r\n\r\nGET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            after = rest_of(sock)
        except OSError:  # (closed before they arrived)
            after = b""
        assert b"HTTP/" not in after
    assert requests.head(f"{url}/c/never", headers=h, timeout=30).status_code == 404


def test_a_block_upload_that_stalls_gets_408_and_grants_nothing(account, server):
    url, path, h = account
    blocks = [os.urandom(1000) for _ in range(6)]
    sock = send_head(server, "POST", f"{path}/c?blocks",
                     {**h, "Content-Length": "6000", "X-Block-Lengths": ",".join(["1000"] * 6)},
                     b"".join(blocks[:4]) + blocks[4][:10])
    with sock:
        status, _, body = answer(sock)
        assert status == 408, body
    # The blocks it sent whole were not granted: the account is asked for every one.
    hashes = [to_hex(block_hash(b)) for b in blocks[:4]]
    r = requests.post(f"{url}/c?missing", data=json.dumps(hashes), headers=h, timeout=30)
    assert r.status_code == 200 and sorted(r.json()) == sorted(hashes)


def test_an_in_place_update_that_stalls_gets_408_and_changes_nothing(account, server):
    url, path, h = account
    old = os.urandom(5000)
    assert requests.put(f"{url}/c/patched", data=old, headers=h, timeout=30).status_code == 201
    before = versions(url, h, "patched")
    sock = send_head(server, "POST", f"{path}/c/patched",
                     {**h, "Content-Range": "bytes 100-2099/*", "Content-Length": "2000"},
                     os.urandom(1500))
    with sock:
        status, _, body = answer(sock)
        assert status == 408, body
    assert requests.get(f"{url}/c/patched", headers=h, timeout=30).content == old
    assert versions(url, h, "patched") == before


def test_a_token_request_that_stalls_gets_408(server):
    """Keystone's token request needs no token: one that never ends must not hold its
    connection (and the worker's share of connections) for ever."""
    sock = send_head(server, "POST", "/v3/auth/tokens",
                     {"Content-Type": "application/json", "Content-Length": "1000"}, b"{")
    with sock:
        status, _, body = answer(sock)
        assert status == 408, body


def test_a_bulk_delete_that_stalls_gets_408_and_deletes_nothing(account, server):
    url, path, h = account
    assert requests.put(f"{url}/c/bulk-kept", data=b"x", headers=h,
                        timeout=30).status_code == 201
    sock = send_head(server, "POST", f"{path}?bulk-delete",
                     {**h, "Content-Type": "text/plain", "Content-Length": "1000"},
                     b"/c/bulk-kept\n")
    with sock:
        status, _, body = answer(sock)
        assert status == 408, body
    assert requests.head(f"{url}/c/bulk-kept", headers=h, timeout=30).status_code == 200


def test_a_chunked_put_cut_short_is_a_client_disconnect(account, server):
    """The client closes its side mid-chunk: 499, as a Content-Length body cut short, not
    an internal error."""
    url, path, h = account
    sock = send_head(server, "PUT", f"{path}/c/cut", {**h, "Transfer-Encoding": "chunked"},
                     chunk(os.urandom(3000)) + b"10\r\nabc")
    with sock:
        sock.shutdown(socket.SHUT_WR)
        status, _, body = answer(sock)
        assert status == 499, body
    assert requests.head(f"{url}/c/cut", headers=h, timeout=30).status_code == 404


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_slow_upload_that_keeps_sending_is_never_cut_off(account, server, chunked):
    """A little every half second, for several client timeouts in all."""
    url, path, h = account
    pieces = [os.urandom(1500) for _ in range(4 * CLIENT_TIMEOUT_S * 2 + 1)]
    content = b"".join(pieces)
    framing = ({"Transfer-Encoding": "chunked"} if chunked
               else {"Content-Length": str(len(content))})
    sock = send_head(server, "PUT", f"{path}/c/slow-{int(chunked)}", {**h, **framing})
    with sock:
        for piece in pieces:
            time.sleep(0.5)
            sock.sendall(chunk(piece) if chunked else piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        status, _, body = answer(sock)
        assert status == 201, body
    got = requests.get(f"{url}/c/slow-{int(chunked)}", headers=h, timeout=30)
    assert got.status_code == 200 and got.content == content


# -- a request line or headers that stop arriving ---------------------------------------------

@pytest.mark.parametrize("sent", [
    b"GET /inf",
    b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-To",
], ids=["request-line", "headers"])
def test_a_half_sent_request_is_disconnected(server, sent):
    with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S) as sock:
        sock.sendall(sent)
        # Closed by the server (a recv that waited PATIENCE_S would raise instead).
        assert rest_of(sock) == b""
    # The server is still serving.
    assert requests.get(f"{server.url}/info", timeout=30).status_code == 200


# -- what a stalled upload held is let go ------------------------------------------------------

def pithos(server, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", *args, "--data-dir",
                           str(server.data_dir)], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def lease_rows(server) -> list[tuple[int, float]]:
    from pithos.catalog import Catalog

    catalog = Catalog(f"sqlite:///{server.data_dir}/catalog.sqlite")
    try:
        return catalog.upload_lease_rows()
    finally:
        catalog.close()


def wait_for(predicate, timeout_s: float = PATIENCE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_after_a_stalled_upload_ends_the_collector_reclaims_what_it_spared(account, server):
    """While an upload is in flight, the collector spares every block put since it began (its
    writer lease); once it stalls for the client timeout and gets its 408, its lease goes and
    such a block, unreferenced, is reclaimed."""
    url, path, h = account
    upload = send_head(server, "PUT", f"{path}/c/stalls",
                       {**h, "Content-Length": str(1024 * 1024)}, os.urandom(1000))
    stop = threading.Event()

    def trickle() -> None:  # alive, slowly, until told to stop
        while not stop.wait(0.5):
            upload.sendall(b"x")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        assert wait_for(lambda: lease_rows(server) != [])
        r = requests.post(f"{url}/c?blocks", data=os.urandom(1000), headers=h, timeout=30)
        r.raise_for_status()
        [garbage] = r.json()  # a block no version names
        stored = server.data_dir / "blocks" / garbage[:2] / garbage
        time.sleep(CLOCK_MARGIN_S + 1)  # older than the collector's clock margin
        pithos(server, "gc", "--json")
        assert stored.exists()  # spared: put after the upload in flight began
    finally:
        stop.set()
        trickler.join()
    with upload:
        status, _, body = answer(upload)  # it sends nothing more now
        assert status == 408, body
    assert wait_for(lambda: lease_rows(server) == [])
    pithos(server, "gc", "--json")
    assert not stored.exists()
    r = requests.post(f"{url}/c?missing", data=json.dumps([garbage]), headers=h, timeout=30)
    assert r.json() == [garbage]
    assert requests.head(f"{url}/c/stalls", headers=h, timeout=30).status_code == 404


def test_a_body_that_times_out_lets_go_of_its_hashing_and_its_block_file(tmp_path):
    """In the object service: the MD5 running beside the upload is abandoned and the block
    being streamed is aborted (its temporary file removed)."""
    from pithos.blocker import Blocker, LocalBlockStore
    from pithos.catalog import Catalog
    from pithos.mapper import Mapper
    from pithos.objects.service import ObjectService

    class Stalls:
        """A body that sends 1.5 blocks' worth, then times out."""

        def __init__(self, size: int) -> None:
            self.left = size

        def read(self, n: int = -1) -> bytes:
            if self.left <= 0:
                raise ClientTimeout("no byte came")
            n = min(n, self.left)
            self.left -= n
            return os.urandom(n)

    with ThreadPoolExecutor(4) as pool:
        store = LocalBlockStore(tmp_path / "blocks")
        offload = Offload(pool, cooperative=True, spawner=pool)
        mapper = Mapper(Blocker(store, offload=offload))
        catalog = Catalog(f"sqlite:///{tmp_path}/catalog.sqlite")
        try:
            objects = ObjectService(catalog, mapper, offload=offload)
            size = mapper.block_size * 3 // 2
            with pytest.raises(ClientTimeout), objects.upload_lease():
                objects.store(Stalls(size), 2 * size)  # type: ignore[arg-type]
            assert objects.md5_lanes.active == 0  # the MD5 was abandoned
            assert store.stale_tmp_files() == []
        finally:
            catalog.close()


# -- the body readers alone (pithos/api/body.py) ----------------------------------------------

def gunicorn_request(sock: socket.socket):
    """gunicorn's parse of the request the peer sent on `sock`."""
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    return next(RequestParser(Config(), sock, ("127.0.0.1", 1)))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_each_read_waits_at_most_the_timeout_and_leaves_the_socket_as_it_was(chunked):
    from pithos.api.body import SocketBody, TimedBody, request_body

    server, client = socket.socketpair()
    with server, client:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 5000"
        client.sendall(b"PUT /x HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n\r\n"
                       + (chunk(b"a" * 1000) * 2 if chunked else b"a" * 2000))
        req = gunicorn_request(server)
        server.settimeout(PATIENCE_S)  # (the socket's own, kept; and no test hangs)
        body = request_body({"wsgi.input": req.body, "gunicorn.socket": server},
                            timeout_s=0.3)
        assert isinstance(body, TimedBody if chunked else SocketBody)
        assert body.read(1000) == b"a" * 1000
        assert server.gettimeout() == PATIENCE_S  # (the timeout is set for a read only)
        with pytest.raises(ClientTimeout):
            body.read(5000)  # (the rest of what was sent, then nothing)
        assert server.gettimeout() == PATIENCE_S
        # No further request is read from this connection.
        assert server.recv(10) == b""
        assert req.should_close() or not chunked

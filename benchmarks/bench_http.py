"""The load client of swift_bench.py: one lean HTTP/1.1 client for both servers.

The client shares the machine's two cores with the server under test, so every microsecond it
spends per request is taken from the server, and more so from the faster server. That is why
this is a hand-written keep-alive client over raw sockets instead of http.client or
python-swiftclient (whose header parsing through the email package costs several times more per
request): it sends a prebuilt request head, parses only the status line and the headers, and reads
bodies into a buffer it reuses. One thread per concurrent client; sockets release the GIL while
they wait. `python benchmarks/swift_bench.py --client-check` shows how fast it goes against a
server that does nothing.

Payloads are unique per object, down to every 4 KiB: a content-addressed server must not be
able to win by deduplicating the benchmark's own data.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RECV_BYTES = 256 * 1024


class HttpError(Exception):
    """A request got an answer the benchmark did not expect, or no answer at all."""


class VerifyError(Exception):
    """A server returned data that is not what was uploaded: the run is void."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    # A view of the connection's reusable buffer: valid until the next request on it.
    body: memoryview


class Connection:
    """One keep-alive HTTP/1.1 connection, with just the protocol the benchmark needs.

    Supports Content-Length and chunked response bodies and reconnects when the server closes.
    Not thread-safe: each client thread owns its connection.
    """

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._host_line = f"Host: {host}:{port}\r\n".encode()
        self._sock: socket.socket | None = None
        self._rbuf = bytearray()
        self._body = bytearray(64 * 1024)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._rbuf.clear()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        # Small requests are written in one send; without this Nagle would hold the next one.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        return sock

    def request(
        self,
        method: str,
        path: str,
        headers: bytes = b"",
        body: bytes | bytearray | memoryview | None = None,
    ) -> Response:
        """Send one request and read the whole answer. `headers` is preformatted
        "Name: value\\r\\n" lines, so that the hot loop formats nothing it can prebuild."""
        head = bytearray(f"{method} {path} HTTP/1.1\r\n".encode())
        head += self._host_line
        head += headers
        if body is not None:
            head += b"Content-Length: %d\r\n" % len(body)
        head += b"\r\n"
        # A keep-alive connection the server closed while idle fails on first use: retry once
        # on a new socket, which is safe because nothing was read yet.
        for attempt in (0, 1):
            sock = self._sock or self._connect()
            try:
                if body is not None and len(body) <= 64 * 1024:
                    sock.sendall(bytes(head) + bytes(body))
                else:
                    sock.sendall(head)
                    if body is not None:
                        sock.sendall(body)
                return self._read_response(method)
            except (ConnectionError, BrokenPipeError) as exc:
                self.close()
                if attempt or self._rbuf:
                    raise HttpError(f"{method} {path}: {exc}") from exc
        raise AssertionError("unreachable")

    def _fill(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionError("server closed the connection")
        self._rbuf += data

    def _read_response(self, method: str) -> Response:
        while (end := self._rbuf.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self._rbuf[:end]).decode("latin-1").split("\r\n")
        del self._rbuf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = memoryview(b"")
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self._read_to_close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)

    def _read_exact(self, size: int) -> memoryview:
        if len(self._body) < size:
            self._body = bytearray(size)
        view = memoryview(self._body)[:size]
        have = min(size, len(self._rbuf))
        view[:have] = self._rbuf[:have]
        del self._rbuf[:have]
        assert self._sock is not None
        while have < size:
            got = self._sock.recv_into(view[have:])
            if not got:
                raise ConnectionError("server closed the connection mid-body")
            have += got
        return view

    def _read_chunked(self) -> memoryview:
        out = bytearray()
        while True:
            while (eol := self._rbuf.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(self._rbuf[:eol]).split(b";")[0], 16)
            del self._rbuf[: eol + 2]
            while len(self._rbuf) < size + 2:
                self._fill()
            out += self._rbuf[:size]
            del self._rbuf[: size + 2]
            if size == 0:
                # Trailers are not used by either server; the last chunk's CRLF was consumed.
                return memoryview(out)

    def _read_to_close(self) -> memoryview:
        try:
            while True:
                self._fill()
        except ConnectionError:
            pass
        out = bytes(self._rbuf)
        self.close()
        return memoryview(out)


def split_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")


def swift_auth(auth_url: str, user: str, key: str) -> tuple[str, str]:
    """Swift v1.0 auth: (storage URL, token). Raises HttpError unless the server says 2xx."""
    host, port, path = split_url(auth_url)
    conn = Connection(host, port, timeout_s=10)
    try:
        resp = conn.request("GET", path, f"X-Auth-User: {user}\r\nX-Auth-Key: {key}\r\n".encode())
    finally:
        conn.close()
    token = resp.headers.get("x-auth-token") or resp.headers.get("x-storage-token")
    if resp.status // 100 != 2 or not token or "x-storage-url" not in resp.headers:
        raise HttpError(f"auth at {auth_url} answered {resp.status}")
    return resp.headers["x-storage-url"], token


# --- payloads ---------------------------------------------------------------------------------

STAMP_EVERY = 4096
_POOL_BYTES = 32 * 1024 * 1024 + 4 * 1024 * 1024
_pool = memoryview(os.urandom(_POOL_BYTES))
# Differs per run, so that a server reusing a data directory cannot dedup against an earlier run.
_run_nonce = int.from_bytes(os.urandom(4), "little") << 32
_seg_numbers = array.array("Q", range(64 * 1024))
# Object ids are unique across size classes and servers within a run.
_object_ids = itertools.count(1)


def payload(obj_id: int, size: int) -> bytearray:
    """The content of object `obj_id`: a slice of a random pool, with (run nonce | obj_id,
    segment number) stamped over the first 16 bytes of every 4 KiB. Stamping makes every 4 KiB
    of every object unique (fixed blocks and content-defined chunks alike find nothing to
    share) for one 4 MiB memcpy, where fresh random bytes would cost ~12 ms of client CPU."""
    if size % STAMP_EVERY:
        raise ValueError(f"payload size must be a multiple of {STAMP_EVERY}")
    segments = size // STAMP_EVERY
    span = (_POOL_BYTES - size) // STAMP_EVERY
    offset = (obj_id * 2654435761 % span) * STAMP_EVERY
    buf = bytearray(_pool[offset : offset + size])
    words = memoryview(buf).cast("Q")
    step = STAMP_EVERY // 8
    words[0::step] = array.array("Q", [_run_nonce | obj_id]) * segments
    words[1::step] = _seg_numbers[:segments]
    return buf


# --- the load loop ----------------------------------------------------------------------------


@dataclass
class CellResult:
    requests: int = 0
    payload_bytes: int = 0
    seconds: float = 0.0
    verified: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    # What the rest of the machine spent meanwhile (see machine_cpu_seconds): kernel work, and
    # other programs, which make a cell's figures suspect.
    kernel_cpu_s: float = 0.0
    other_cpu_s: float = 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, kernel) CPU seconds of the whole machine, all cores. Busy excludes idle and I/O
    wait. Kernel is interrupt and softirq time (loopback networking, disk completions) plus
    kernel threads (writeback, journal): work the kernel does for whoever runs, not charged to
    any process, so that it is not mistaken for other programs competing for the cores."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # guest and guest_nice (fields 8, 9) are already counted in user and nice.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    kernel = fields[5] + fields[6]
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(b")") + 2 :].split()
        # Kernel threads are kthreadd (pid 2) and its children.
        if entry.name == "2" or rest[1] == b"2":
            kernel += int(rest[11]) + int(rest[12])
    return busy / ticks, kernel / ticks


# An operation does one request and returns the payload bytes it moved; it raises HttpError on
# an unexpected answer and VerifyError on wrong data.
Operation = Callable[[], int]


def run_cell(
    make_op: Callable[[int], Operation],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_cpu: Callable[[], float],
) -> CellResult:
    """Run `concurrency` threads, each calling its operation back to back, for warmup_s plus
    duration_s. Only requests that complete inside the measured window count, so connection
    set-up and first-request costs stay out of the figures. A VerifyError ends the cell and is
    re-raised: wrong data voids the benchmark, it is not a slow request."""
    result = CellResult()
    lock = threading.Lock()
    ops = [make_op(i) for i in range(concurrency)]
    start_line = threading.Barrier(concurrency + 1)
    fatal: list[BaseException] = []
    t0 = 0.0

    def client(op: Operation) -> None:
        start_line.wait()
        measure_from = t0 + warmup_s
        end = measure_from + duration_s
        done = 0
        moved = 0
        latencies = []
        errors = []
        while not fatal:
            began = time.perf_counter()
            if began >= end:
                break
            try:
                n = op()
            except VerifyError as exc:
                fatal.append(exc)
                break
            except (HttpError, OSError) as exc:
                errors.append(str(exc))
                if len(errors) > 20:
                    break
                continue
            finished = time.perf_counter()
            if measure_from <= finished <= end:
                done += 1
                moved += n
                latencies.append(finished - began)
        with lock:
            result.requests += done
            result.payload_bytes += moved
            result.latencies_s += latencies
            result.errors += errors

    threads = [threading.Thread(target=client, args=(op,), daemon=True) for op in ops]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter()
    start_line.wait()
    time.sleep(warmup_s)
    cpu0, server0, (busy0, kernel0) = time.process_time(), server_cpu(), machine_cpu_seconds()
    time.sleep(duration_s)
    result.client_cpu_s = time.process_time() - cpu0
    result.server_cpu_s = server_cpu() - server0
    busy1, kernel1 = machine_cpu_seconds()
    # A kernel thread that exits takes its CPU time with it: never below zero.
    result.kernel_cpu_s = max(0.0, kernel1 - kernel0)
    result.other_cpu_s = max(
        0.0, busy1 - busy0 - result.kernel_cpu_s - result.client_cpu_s - result.server_cpu_s
    )
    result.seconds = duration_s
    for thread in threads:
        thread.join()
    if fatal:
        raise fatal[0]
    return result


class ObjectLoad:
    """The PUT and GET operations of one size class against one storage URL.

    Objects that PUTs wrote are what GETs read, round-robin across threads. Every
    `verify_every`-th request of each thread (and its first) is checked: a PUT's ETag must be
    the MD5 of what was sent; a GET's body must be byte for byte what was uploaded and its MD5
    must equal the ETag. Checking every request would cost more client CPU than the server
    spends on some cells."""

    def __init__(
        self, storage_url: str, token: str, container: str, size: int, verify_every: int
    ) -> None:
        self.host, self.port, self.base = split_url(storage_url)
        self.container = container
        self.size = size
        self.verify_every = verify_every
        self.auth = f"X-Auth-Token: {token}\r\n".encode()
        self.written: list[tuple[str, int]] = []
        self.verified = 0
        self._lock = threading.Lock()

    def object_path(self, name: str) -> str:
        return f"{self.base}/{self.container}/{name}"

    def _check(self, seq: int) -> bool:
        return self.verify_every > 0 and seq % self.verify_every == 0

    def operations(self, method: str, concurrency: int) -> Callable[[int], Operation]:
        """What run_cell wants: thread index -> that thread's operation."""
        if method == "PUT":
            return self.make_put
        return lambda thread: self.make_get(thread, concurrency)

    def make_put(self, thread: int) -> Operation:
        conn = Connection(self.host, self.port)
        headers = self.auth + b"Content-Type: application/octet-stream\r\n"
        seq = itertools.count()
        label = f"{self.size}"

        def put() -> int:
            obj_id = next(_object_ids)
            name = f"o{label}-{obj_id:09d}"
            body = payload(obj_id, self.size)
            check = self._check(next(seq))
            expected = hashlib.md5(body).hexdigest() if check else ""
            resp = conn.request("PUT", self.object_path(name), headers, body)
            if resp.status != 201:
                raise HttpError(f"PUT {name}: {resp.status} {bytes(resp.body[:200])!r}")
            if check:
                etag = resp.headers.get("etag", "").strip('"')
                if etag != expected:
                    raise VerifyError(f"PUT {name}: ETag {etag!r}, MD5 sent {expected}")
                with self._lock:
                    self.verified += 1
            self.written.append((name, obj_id))
            return self.size

        return put

    def make_get(self, thread: int, concurrency: int) -> Operation:
        conn = Connection(self.host, self.port)
        seq = itertools.count()
        position = itertools.count(thread, concurrency)

        def get() -> int:
            if not self.written:
                raise HttpError("nothing was written to read back")
            name, obj_id = self.written[next(position) % len(self.written)]
            check = self._check(next(seq))
            resp = conn.request("GET", self.object_path(name), self.auth)
            if resp.status != 200 or len(resp.body) != self.size:
                raise HttpError(f"GET {name}: {resp.status}, {len(resp.body)} bytes")
            if check:
                etag = resp.headers.get("etag", "").strip('"')
                if hashlib.md5(resp.body).hexdigest() != etag:
                    raise VerifyError(f"GET {name}: body MD5 differs from ETag {etag!r}")
                if resp.body != payload(obj_id, self.size):
                    raise VerifyError(f"GET {name}: body differs from what was uploaded")
                with self._lock:
                    self.verified += 1
            return self.size

        return get


# --- a server that does nothing, to measure the client ------------------------------------------


class _NullHttp(asyncio.Protocol):
    """Reads requests (with Content-Length bodies) and answers 201 to PUT, and a GET with
    `body_size` bytes: the cheapest HTTP peer, to find the client's own ceiling."""

    def __init__(self, body: bytes) -> None:
        self.buf = bytearray()
        self.need_body = 0
        self.body = body
        md5 = hashlib.md5(body).hexdigest()
        self.get_head = (
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nEtag: {md5}\r\n\r\n".encode()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need_body:
                take = min(self.need_body, len(self.buf))
                del self.buf[:take]
                self.need_body -= take
                if self.need_body:
                    return
                self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[: end + 4]
            if head.startswith(b"get"):
                self.transport.writelines((self.get_head, self.body))
                continue
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.need_body = length
            if not length:
                self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")


def serve_null(port: int, body_size: int) -> None:
    async def main() -> None:
        body = os.urandom(body_size)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _NullHttp(body), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    # `python bench_http.py null-server PORT BODY_SIZE`: used by swift_bench.py --client-check.
    if len(sys.argv) == 4 and sys.argv[1] == "null-server":
        serve_null(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: bench_http.py null-server PORT BODY_SIZE")

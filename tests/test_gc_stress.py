"""Every kind of writer against `pithos gc` in a loop (issue 19): what was acknowledged reads
back byte for byte, what failed said so, and fsck is clean afterwards.

The collector runs back to back (a new run every ~0.5 s, every other one with --force) with a
clock margin of 0, so that the only thing between a writer's blocks and the sweep is the
protocol (pithos.catalog.leases), not a margin of seconds: each writer here takes longer than
a margin would cover.  Each reported loss of issue 19 is one of these scenarios:

- HTTP: 8 clients upload mixed sizes, some slowly, one stalling past the client timeout, while
  others delete (making garbage); also on RADOS + PostgreSQL with two nodes, gc run beside one;
- `pithos store put` from a slow pipe;
- a volume written through NBD, snapshotted and cloned;
- hashmap uploads: POST ?blocks, a pause, then PUT ?hashmap (a 409 sends the missing again).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pithos.catalog.leases import IDLE_CLEAR_S
from tests.conftest import PithosServer, scaleout_storage

MiB = 1024 * 1024
TIMEOUT_S = 120
SERVER_CONFIGS = ("embedded", "scaleout")


def pithos(storage_flags: list[str], *args: str, check: bool = True,
           input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", *args, *storage_flags],
                          capture_output=True, timeout=600, input=input)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


@contextmanager
def gc_loop(storage_flags: list[str]) -> Iterator[list[dict]]:
    """`pithos gc --clock-margin 0` back to back (every other run with --force) until the
    block exits; yields the reports (each must have swept)."""
    reports: list[dict] = []
    stop = threading.Event()
    errors: list[str] = []

    def loop() -> None:
        n = 0
        while not stop.is_set():
            extra = ["--force"] if n % 2 else []
            started = time.monotonic()
            proc = pithos(storage_flags, "gc", "--json", "--clock-margin", "0", *extra,
                          check=False)
            if proc.returncode != 0:
                errors.append(proc.stderr.decode())
            else:
                # (When the run began: a test can wait for a whole run begun after a write.)
                reports.append({**json.loads(proc.stdout), "started": started})
            n += 1
            stop.wait(0.5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield reports
    finally:
        # At least two runs, whatever the machine's load (a loaded CI machine finished a
        # block's writes while the first run was still marking): the first began beside
        # them; the loop is stopped only after the second (bounded: a hung run fails below).
        deadline = time.monotonic() + 300
        while (len(reports) < 2 and thread.is_alive()
               and time.monotonic() < deadline):
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=300)
    # A run may give up on a busy SQLite catalog ("unavailable for now": a transient error,
    # after which it swept nothing); any other failure fails the test.
    assert [e for e in errors if "unavailable for now" not in e] == []
    assert len(reports) >= 2


def assert_fsck_clean(storage_flags: list[str]) -> None:
    report = json.loads(pithos(storage_flags, "store", "fsck", "--json", check=False).stdout)
    assert report["clean"], report


# -- HTTP uploads --------------------------------------------------------------------------------


class Client:
    def __init__(self, server: PithosServer, token: str) -> None:
        self.server = server
        self.token = token

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                chunked: bool = False) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=TIMEOUT_S)
        try:
            conn.request(method, f"/v1/AUTH_test{path}", body=body,
                         headers={"X-Auth-Token": self.token, **(headers or {})},
                         encode_chunked=chunked)
            r = conn.getresponse()
            return r.status, r.read()
        except (ConnectionError, http.client.HTTPException) as exc:
            return -1, str(exc).encode()
        finally:
            conn.close()


def login(server: PithosServer) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/auth/v1.0", headers={"X-Auth-User": "test:tester",
                                               "X-Auth-Key": "testing"})
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    return r.headers["X-Auth-Token"]


def slowly(data: bytes, pieces: int, pause_s: float) -> Iterator[bytes]:
    step = max(len(data) // pieces, 1)
    for i in range(0, len(data), step):
        yield data[i:i + step]
        time.sleep(pause_s)


def http_writers(clients: list[Client], acknowledged: dict[str, bytes],
                 failed: list[str], seconds: float, stall_s: float) -> None:
    """8 clients for `seconds`: mixed sizes, some slow (a body over ~3 s), deletes making
    garbage, and one client that stalls its body past the server's client timeout."""
    # Up to 16 KiB kept inline (no block, no guard), just past it stored as blocks.
    sizes = [0, 1, 4096, 16384, 16385, 100_000, 4 * MiB + 3, 9 * MiB + 17]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(i: int) -> None:
        rng = random.Random(i)
        client = clients[i % len(clients)]
        n = 0
        while time.monotonic() < deadline:
            name = f"/stress/w{i}-{n}"
            data = rng.randbytes(rng.choice(sizes))
            slow = rng.random() < 0.3
            if i == 0 and n == 0:
                # The stalled client: half its body, then nothing for longer than the client
                # timeout, then the rest: the server must have given up (408 or a closed
                # connection), never 201.
                def stalled(data: bytes) -> Iterator[bytes]:
                    yield data[:len(data) // 2]
                    time.sleep(stall_s)
                    yield data[len(data) // 2:]
                data = rng.randbytes(9 * MiB)
                status, _ = client.request("PUT", name, stalled(data),
                                           {"Content-Length": str(len(data))})
                assert status != 201, "a stalled upload was acknowledged"
                with lock:
                    failed.append(name)
            else:
                body = slowly(data, 6, 0.5) if slow and data else data
                headers = {"Content-Length": str(len(data))} if slow and data else {}
                status, _ = client.request("PUT", name, body, headers)
                with lock:
                    if status == 201:
                        acknowledged[name] = data
                    else:
                        failed.append(f"{name}: {status}")
            if rng.random() < 0.25 and n:
                # Garbage for the collector: an earlier object of this client goes.
                old = f"/stress/w{i}-{rng.randrange(n)}"
                if client.request("DELETE", old)[0] == 204:
                    with lock:
                        acknowledged.pop(old, None)
            n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def check_http(clients: list[Client], acknowledged: dict[str, bytes]) -> None:
    for name, data in acknowledged.items():
        status, got = clients[-1].request("GET", name)
        assert status == 200, (name, status, got[:200])
        assert hashlib.md5(got).hexdigest() == hashlib.md5(data).hexdigest(), name


@pytest.fixture
def stress_servers(request, tmp_path_factory):
    """(clients, the storage flags gc runs with): one embedded server, or two scale-out nodes
    over RADOS + PostgreSQL (the collector beside the first), each with a client timeout of
    3 s."""
    args = ("--client-timeout", "3", "--workers", "2")
    if request.param == "embedded":
        server = PithosServer(tmp_path_factory.mktemp("stress"), serve_args=args)
        servers, cleanup = [server], None
    else:
        blocks, catalog, cleanup = scaleout_storage("gcstress")
        servers = [PithosServer(tmp_path_factory.mktemp(f"node-{n}"), blocks=blocks,
                                catalog=catalog, serve_args=args) for n in "ab"]
    try:
        token = login(servers[0])
        yield [Client(s, token) for s in servers], servers[0].storage_flags
    finally:
        for server in servers:
            server.stop()
        if cleanup is not None:
            cleanup()


def pytest_generate_tests(metafunc):
    if "stress_servers" in metafunc.fixturenames:
        metafunc.parametrize("stress_servers", SERVER_CONFIGS, indirect=True)


@pytest.mark.slow
def test_http_uploads_with_gc_in_a_loop(stress_servers):
    clients, flags = stress_servers
    assert clients[0].request("PUT", "/stress")[0] == 201
    acknowledged: dict[str, bytes] = {}
    failed: list[str] = []
    with gc_loop(flags) as reports:
        http_writers(clients, acknowledged, failed, seconds=15, stall_s=5)
    assert any(r["reclaimed_blocks"] for r in reports), "the collector never swept anything"
    assert len(acknowledged) >= 8
    check_http(clients, acknowledged)
    assert failed and failed[0].startswith("/stress/w0-0")
    assert [f for f in failed if ":" in f] == []  # nothing else failed
    assert_fsck_clean(flags)


# -- hashmap uploads ------------------------------------------------------------------------------


def test_hashmap_uploads_with_a_pause_and_gc_in_a_loop(tmp_path):
    """POST ?blocks, a pause longer than a collector run, then PUT ?hashmap: either the blocks
    are still there (201) or the server says which are missing (409) and the client sends them
    again; never a 201 naming a block that is gone."""
    server = PithosServer(tmp_path / "data")
    try:
        client = Client(server, login(server))
        assert client.request("PUT", "/hm")[0] == 201
        rng = random.Random(7)
        done: dict[str, bytes] = {}
        conflicts = 0
        with gc_loop(server.storage_flags) as reports:
            for i in range(6):
                data = rng.randbytes(2 * 4 * MiB + 1000)
                status, body = client.request("POST", "/hm?blocks", data,
                                              {"Content-Length": str(len(data))})
                assert status == 200, body
                hashes = json.loads(body)
                doc = json.dumps({"bytes": len(data), "hashes": hashes}).encode()
                # The blocks are nobody's: a collector may take them once the server's
                # writer lease is gone (dropped IDLE_CLEAR_S after its last write).  Every
                # other pause lasts until a whole run begun after that has finished,
                # whatever the machine's load (a fixed 1.5 s once saw no run take them on a
                # loaded CI machine); the others are short, so the PUT may find them too.
                free = time.monotonic() + IDLE_CLEAR_S + 0.5
                if i % 2 == 0:
                    deadline = free + 120
                    while not any(r["started"] > free for r in reports) and \
                            time.monotonic() < deadline:
                        time.sleep(0.1)
                else:
                    time.sleep(0.2)
                for _ in range(5):
                    status, body = client.request("PUT", f"/hm/o{i}?hashmap", doc)
                    if status == 201:
                        break
                    assert status == 409, body
                    conflicts += 1
                    client.request("POST", "/hm?blocks", data,
                                   {"Content-Length": str(len(data))})
                assert status == 201
                done[f"/hm/o{i}"] = data
        # Whole collector runs passed over unnamed blocks: the protocol was exercised, not
        # dodged (each such run takes them, --clock-margin 0: three 409s here, unless a
        # loaded machine's worker dropped its lease late).
        assert conflicts >= 1
        check_http([client], done)
        assert_fsck_clean(server.storage_flags)
    finally:
        server.stop()


# -- pithos store put -----------------------------------------------------------------------------


def test_store_put_from_a_slow_pipe_with_gc_in_a_loop(tmp_path):
    flags = ["--data-dir", str(tmp_path / "data")]
    # More than one of store put's write batches (32 MiB): the first is stored seconds before
    # the root is recorded.
    data = random.Random(3).randbytes(72 * MiB + 5)
    with gc_loop(flags) as reports:
        put = subprocess.Popen([sys.executable, "-m", "pithos.cli.main", "store", "put", "-",
                                *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        assert put.stdin is not None
        for i in range(0, len(data), MiB):  # ~7 s: its first blocks age under the collector
            put.stdin.write(data[i:i + MiB])
            put.stdin.flush()
            time.sleep(0.1)
        out, err = put.communicate(timeout=300)
        assert put.returncode == 0, err.decode()
        # Garbage for the collector meanwhile: a map stored and never recorded anywhere.
        time.sleep(1.0)
    assert reports
    root = out.decode().split()[0]
    got = pithos(flags, "store", "get", root).stdout
    assert got == data
    assert_fsck_clean(flags)


# -- volumes ---------------------------------------------------------------------------------------

NBD_TOOLS = ["qemu-io", "nbdcopy"]


@pytest.mark.skipif(any(shutil.which(t) is None for t in NBD_TOOLS),
                    reason="qemu-utils / libnbd-bin not installed")
def test_volume_written_snapshotted_and_cloned_with_gc_in_a_loop(tmp_path):
    from archipelago.testing import ServerProcess

    data_dir = tmp_path / "data"
    flags = ["--data-dir", str(data_dir)]

    def archipelago(*args: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([sys.executable, "-m", "archipelago.cli", *args, *flags],
                              capture_output=True, timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc

    archipelago("volume", "create", "disk", "--size", "128M")
    rng = random.Random(5)
    content = bytearray(rng.randbytes(128 * MiB))
    source = tmp_path / "content.raw"
    digests: dict[str, str] = {}
    rounds = 4
    # Two collectors at once (cron runs that overlap), to land in the second or so a snapshot
    # takes between storing its first blocks and committing its heads.
    with gc_loop(flags), gc_loop(flags):
        for n in range(rounds):
            source.write_bytes(content)
            with ServerProcess(str(data_dir)) as nbd:
                subprocess.run(["nbdcopy", str(source), nbd.uri("disk")], check=True,
                               timeout=300)
            archipelago("volume", "snapshot", "disk", f"snap-{n}")
            archipelago("volume", "clone", f"snap-{n}", f"clone-{n}")
            digests[f"snap-{n}"] = hashlib.md5(content).hexdigest()
            # The next round rewrites a quarter: each snapshot keeps its own content.
            at = rng.randrange(4) * 32 * MiB
            content[at:at + 32 * MiB] = rng.randbytes(32 * MiB)
    with ServerProcess(str(data_dir)) as nbd:
        for n in range(rounds):
            for name in (f"snap-{n}", f"clone-{n}"):
                out = tmp_path / f"{name}.raw"
                subprocess.run(["nbdcopy", nbd.uri(name), str(out)], check=True, timeout=300)
                assert hashlib.md5(out.read_bytes()).hexdigest() == digests[f"snap-{n}"], name
                out.unlink()
    assert_fsck_clean(flags)


# -- Swift's versioned writes ---------------------------------------------------------------------


def test_versioned_writes_and_restores_with_gc_in_a_loop(tmp_path):
    """X-Versions-Location: each overwrite archives the current version as a copy of its map
    (nothing re-sent), each DELETE restores the newest archived one as another copy and
    deletes it from the archive (garbage for the collector, but the restored object names the
    same map): every acknowledged current and archived version reads back whole."""
    server = PithosServer(tmp_path / "data")
    try:
        client = Client(server, login(server))
        assert client.request("PUT", "/vw-archive")[0] == 201
        assert client.request("PUT", "/vw", headers={"X-Versions-Location": "vw-archive"}
                              )[0] == 201
        rng = random.Random(11)
        bodies = [rng.randbytes(rng.choice((3000, 5 * MiB + 17))) for _ in range(10)]
        with gc_loop(server.storage_flags):
            for body in bodies:
                assert client.request("PUT", "/vw/o", body)[0] == 201
                time.sleep(0.3)
            for _ in range(4):
                assert client.request("DELETE", "/vw/o")[0] == 204
                time.sleep(0.3)
        status, listing = client.request("GET", "/vw-archive?format=json")
        assert status == 200
        archived = [row["name"] for row in json.loads(listing)]
        assert len(archived) == len(bodies) - 5
        check_http([client], {"/vw/o": bodies[-5],
                              **{f"/vw-archive/{n}": b for n, b in zip(archived, bodies,
                                                                         strict=False)}})
        assert_fsck_clean(server.storage_flags)
    finally:
        server.stop()

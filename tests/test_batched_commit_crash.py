"""The batched commit of new versions on PostgreSQL (a5a2879) under crashes, the collector and
storms of mixed writes, on two scale-out nodes of two workers each (RADOS + PostgreSQL):

- kill -9 of a worker, twice, then of a whole node, while batches are in flight: everything
  acknowledged reads back whole, every listed object is what was sent under its name,
  the counters and the project's usage are what the listings hold, fsck is clean;
- `pithos gc` in a loop beside batched small and block-stored PUTs, overwrites and deletes:
  nothing acknowledged is lost;
- PUT, DELETE and POST of the same names in versioned containers (X-Versions-Location,
  X-History-Location, X-Versions-Enabled): every listing agrees with HEAD and GET of each
  object, and every version listed reads back whole.

The helpers are tests/test_batched_commit_adversarial.py's (the batches seen through
PostgreSQL's function statistics) and tests/test_gc_stress.py's (the collector's loop).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PithosServer, free_port, scaleout_storage
from tests.test_batched_commit_adversarial import (
    calls_since,
    check_stored,
    function_calls,
    head_counts,
    put_storm,
    storm,
)
from tests.test_gc_stress import Client, assert_fsck_clean, gc_loop, login, pithos


def start_node(data_dir, port: int, blocks: str, catalog: str) -> PithosServer:
    return PithosServer(data_dir, blocks=blocks, catalog=catalog, port=port,
                        serve_args=("--workers", "2"))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """(clients, one per node; a function restarting node i after a kill -9; catalog URL)."""
    blocks, catalog, cleanup = scaleout_storage("batchcrash")
    admin = create_engine(catalog, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        db = catalog.rsplit("/", 1)[1]
        conn.execute(text(f"ALTER DATABASE \"{db}\" SET track_functions = 'pl'"))
    admin.dispose()
    dirs = [tmp_path_factory.mktemp(f"node-{n}") for n in "ab"]
    ports = [free_port(), free_port()]
    servers = [start_node(d, p, blocks, catalog) for d, p in zip(dirs, ports, strict=True)]
    token = login(servers[0])
    clients = [Client(s, token) for s in servers]

    def restart(i: int) -> None:
        # (Its start adds the test users again, which ends their tokens: a new login.)
        servers[i].stop()
        servers[i] = start_node(dirs[i], ports[i], blocks, catalog)
        clients[i].server = servers[i]
        token = login(servers[i])
        for client in clients:
            client.token = token

    try:
        yield clients, restart, catalog
    finally:
        for server in servers:
            server.stop()
        cleanup()


def worker_pids(server: PithosServer) -> list[int]:
    """The gunicorn workers of a node (its master's children)."""
    pid = server.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_kill_9_of_workers_and_of_a_node_mid_batch_loses_nothing_acknowledged(nodes):
    clients, restart, catalog = nodes
    assert clients[0].request("PUT", "/crash")[0] == 201
    before = function_calls(catalog)
    outcome: list = []
    writers = threading.Thread(target=lambda: outcome.append(
        put_storm(clients, "crash", seconds=11)))
    writers.start()
    try:
        for node in (0, 1, 0):  # a worker of each node killed, each node keeps serving
            time.sleep(2)
            os.kill(random.choice(worker_pids(clients[node].server)), signal.SIGKILL)
        time.sleep(2)
        os.killpg(clients[1].server.proc.pid, signal.SIGKILL)  # a whole node, mid-batch
        clients[1].server.proc.wait(timeout=30)
    finally:
        writers.join(timeout=120)
    restart(1)  # once the writers are done (its start ends the tokens they hold)
    acknowledged, attempted, others = outcome[0]
    assert calls_since(catalog, before)[0] > 0
    assert len(acknowledged) > 50
    # A request a killed process held gets a dropped connection (-1); none gets a 4xx.
    assert [o for o in others if o[1] not in (-1, 502, 503)] == []
    check_stored(clients, "crash", acknowledged, attempted)
    # The project's usage is what the account's counters (and so the listing) hold.
    usage = json.loads(pithos(clients[0].server.storage_flags, "project", "show", "test")
                       .stdout)["quota"]
    assert (usage["objects"]["usage"], usage["bytes"]["usage"]) == head_counts(clients[0])
    assert_fsck_clean(clients[0].server.storage_flags)


def test_gc_in_a_loop_beside_batched_puts_loses_nothing(nodes):
    clients, _, catalog = nodes
    # No history kept: each overwrite and delete leaves the old blocks to the collector.
    assert clients[0].request("PUT", "/gcb", headers={"X-Container-Policy-Versioning": "none"}
                              )[0] == 201
    stored: dict[str, set[bytes]] = {}  # name -> what it may hold (more than one: unknown)
    lock = threading.Lock()
    before = function_calls(catalog)

    swept: list[dict] = []

    def writer(w: int) -> None:
        rng = random.Random(w)
        # Until the collector ran twice and swept something (a run over RADOS takes
        # seconds), at most 40 s.
        started = time.monotonic()
        n = 0
        while time.monotonic() < started + 6 or (
                (len(swept) < 2 or not any(r["reclaimed_blocks"] for r in swept))
                and time.monotonic() < started + 40):
            name = f"w{w}-{rng.randrange(6)}"  # overwrites: the old version is garbage
            body = rng.randbytes(rng.choice([10, 4096, 16385, 100_000, 300_000]))
            n += 1
            if rng.random() < 0.2:
                status, _ = clients[n % 2].request("DELETE", f"/gcb/{name}")
                with lock:
                    if status in (204, 404):
                        stored.pop(name, None)
                    else:
                        stored.setdefault(name, set()).add(b"")  # maybe gone
                continue
            status, _ = clients[n % 2].request("PUT", f"/gcb/{name}", body)
            with lock:
                if status == 201:
                    stored[name] = {body}
                else:  # perhaps committed: either
                    stored.setdefault(name, set()).add(body)

    with gc_loop(clients[0].server.storage_flags) as reports:
        swept = reports
        storm(12, writer, threads=12)
    assert calls_since(catalog, before)[0] > 0
    assert any(r["reclaimed_blocks"] for r in reports), ("the collector never swept", reports)
    for name, may_hold in sorted(stored.items()):
        status, got = clients[1].request("GET", f"/gcb/{name}")
        if status == 404:
            assert b"" in may_hold, name
        else:
            assert status == 200 and got in may_hold, name
    assert_fsck_clean(clients[0].server.storage_flags)


DELETED = "application/x-deleted"  # (a delete marker's type, with its parameters)
VERSIONED = [
    pytest.param("vloc", {"X-Versions-Location": "vloc-archive"}, id="versions-location"),
    pytest.param("hloc", {"X-History-Location": "hloc-archive"}, id="history-location"),
    # (Its object count drifted up on PostgreSQL: a delete marker's look dropped an object
    # an overwrite had just made visible (13bacec), or found no row while a first PUT of the
    # name committed and wrote an uncounted marker over it.)
    pytest.param("venab", {"X-Versions-Enabled": "true"}, id="versions-enabled"),
]


@pytest.mark.parametrize("container,headers", VERSIONED)
def test_put_delete_post_storm_on_a_versioned_container_keeps_listings_true(
        nodes, container, headers):
    clients, _, catalog = nodes
    archive = headers.get("X-Versions-Location") or headers.get("X-History-Location")
    if archive:
        assert clients[0].request("PUT", f"/{archive}")[0] == 201
    assert clients[0].request("PUT", f"/{container}", headers=headers)[0] == 201
    sent: set[str] = {hashlib.md5(b"").hexdigest()}
    lock = threading.Lock()
    unexpected: list = []
    before = function_calls(catalog)

    def writer(w: int) -> None:
        rng = random.Random(100 + w)
        deadline = time.monotonic() + 5
        n = 0
        while time.monotonic() < deadline:
            n += 1
            path = f"/{container}/o{rng.randrange(5)}"
            client = clients[n % 2]
            op = rng.random()
            if op < 0.6:
                body = f"{path} {w} {n} ".encode() * rng.choice([1, 50, 3000])
                with lock:
                    sent.add(hashlib.md5(body).hexdigest())
                status, reason = client.request("PUT", path, body)
                ok: tuple[int, ...] = (201,)
            elif op < 0.8:
                status, reason = client.request("DELETE", path)
                ok = (204, 404)
            else:
                status, reason = client.request("POST", path,
                                                headers={"X-Object-Meta-Tag": f"{w}-{n}"})
                ok = (202, 404)
            if status not in ok:
                with lock:
                    unexpected.append((path, status, reason[:200]))

    storm(12, writer, threads=12)
    assert calls_since(catalog, before)[0] > 0
    assert unexpected == []

    def listing(path: str) -> list[dict]:
        status, body = clients[0].request("GET", f"{path}format=json&limit=10000")
        assert status == 200
        return json.loads(body)

    def reads_whole(path: str, entry: dict, client: Client) -> None:
        status, got = client.request("GET", path)
        assert status == 200, (path, entry)
        md5 = hashlib.md5(got).hexdigest()
        assert (md5, len(got)) == (entry["hash"], entry["bytes"]) and md5 in sent, path

    entries = listing(f"/{container}?")
    for k, entry in enumerate(entries):
        reads_whole(f"/{container}/{entry['name']}", entry, clients[k % 2])
    listed = {e["name"] for e in entries}
    for name in (f"o{i}" for i in range(5)):
        if name not in listed:
            assert clients[1].request("HEAD", f"/{container}/{name}")[0] == 404
    # Every version kept reads back whole.
    if archive:
        kept = [(f"/{archive}/{e['name']}", e) for e in listing(f"/{archive}?")]
        counted = sum(e["bytes"] for e in entries)
    else:
        rows = listing(f"/{container}?versions&")
        kept = [(f"/{container}/{e['name']}?version-id={e['version_id']}", e)
                for e in rows if not e["content_type"].startswith(DELETED)]
        counted = sum(e["bytes"] for e in rows)  # (Swift's: every version kept counts)
    assert kept
    for k, (path, entry) in enumerate(kept):
        reads_whole(path, entry, clients[k % 2])
    assert head_counts(clients[1], f"/{container}") == (len(entries), counted)

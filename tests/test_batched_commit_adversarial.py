"""The batched commit of new versions on PostgreSQL (pithos/catalog/pg_batch.py, a5a2879)
attacked from outside: two scale-out nodes of two workers each over one RADOS namespace and one
PostgreSQL database, real HTTP clients on 127.0.0.1 racing on names, quotas and the database.

- conditional PUTs of one name (If-None-Match: *, If-Match) through both nodes: one winner,
  never two versions, no lost update, never a 5xx;
- a container byte quota that fits exactly N objects: N stored, the counters what a listing
  shows;
- a hostile request among good ones (over-long content type, name, metadata): it alone fails,
  with a 4xx and a reason;
- a PostgreSQL backend terminated mid-batch: requests fail (5xx) or succeed, nothing
  acknowledged is missing, and the worker recovers without a restart.

Every test first checks that the server really batched (PostgreSQL's function statistics:
more `pithos_put_version` calls than `pithos_put_versions` ones), or its races prove little.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PithosServer, scaleout_storage
from tests.test_gc_stress import Client, assert_fsck_clean, login, pithos

CALL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """(clients: two per node, one per worker's share of the load; the catalog URL)."""
    blocks, catalog, cleanup = scaleout_storage("batchadv")
    admin = create_engine(catalog, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # PL/pgSQL calls counted (pg_stat_user_functions), to see batches of several items.
        db = catalog.rsplit("/", 1)[1]
        conn.execute(text(f"ALTER DATABASE \"{db}\" SET track_functions = 'pl'"))
    admin.dispose()
    servers: list[PithosServer] = []
    try:
        for name in "ab":
            servers.append(PithosServer(tmp_path_factory.mktemp(f"node-{name}"), blocks=blocks,
                                        catalog=catalog, serve_args=("--workers", "2")))
        token = login(servers[0])
        yield [Client(s, token) for s in servers], catalog
    finally:
        for server in servers:
            server.stop()
        cleanup()


def sql(catalog: str, statement: str, **params) -> list:
    engine = create_engine(catalog, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(statement), params))
    finally:
        engine.dispose()


def function_calls(catalog: str) -> dict[str, int]:
    rows = sql(catalog, "SELECT funcname, calls FROM pg_stat_user_functions "
                        "WHERE funcname IN ('pithos_put_version', 'pithos_put_versions', "
                        "'pithos_put_version_item')")
    return {name: int(calls) for name, calls in rows}


def calls_since(catalog: str, before: dict[str, int]) -> tuple[int, int]:
    """(batches, items) since `before`: a backend reports its counts when idle, up to ~10 s
    later (PostgreSQL 15's cumulative statistics), so wait until they are seen."""
    deadline = time.monotonic() + 30
    while True:
        after = function_calls(catalog)
        # (An item of a batch calls pithos_put_version_item since migration 16.)
        got = (after.get("pithos_put_versions", 0) - before.get("pithos_put_versions", 0),
               sum(after.get(f, 0) - before.get(f, 0)
                   for f in ("pithos_put_version", "pithos_put_version_item")))
        if got[0] > 0 or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def storm(n: int, task: Callable[[int], object], threads: int = 24) -> list:
    """task(0..n-1) on `threads` client threads at once, results in order."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(task, range(n), timeout=CALL_TIMEOUT_S))


@contextmanager
def commits_held(catalog: str, waiting: int = 2) -> Iterator[None]:
    """The storm started inside is sure to batch, however loaded the machine: every new
    version's charge waits behind this session's lock on the projects' holdings until
    `waiting` commits wait on it (one per worker at least), and each worker's next commits
    queue meanwhile for the batch that follows; then the lock is let go.  (Left to chance,
    a CI run under load 20 once saw no batch in a storm of 96 requests.)"""
    engine = create_engine(catalog)
    conn = engine.connect()
    conn.execute(text("SET lock_timeout = '60s'"))
    conn.execute(text("SELECT 1 FROM project_holdings FOR UPDATE"))

    def waiters() -> int:
        with engine.connect() as look:
            return int(look.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'")).scalar_one())

    def release() -> None:
        deadline = time.monotonic() + 30
        while waiters() < waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the rest of the storm reaches its worker's queue
        conn.commit()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        yield
    finally:
        releaser.join(60)
        conn.close()
        engine.dispose()


def test_the_servers_batch_concurrent_puts(nodes):
    clients, catalog = nodes
    assert clients[0].request("PUT", "/probe")[0] == 201
    before = function_calls(catalog)
    with commits_held(catalog):
        statuses = storm(200, lambda i: clients[i % 2].request(
            "PUT", f"/probe/o{i}", b"x" * 100)[0])
    assert statuses == [201] * 200
    batches, items = calls_since(catalog, before)
    print("batches", batches, "items", items)
    assert batches > 0 and items > batches


def versions_of(catalog: str, container: str, name: str) -> int:
    return int(sql(catalog, "SELECT count(*) FROM versions v JOIN objects o ON o.id = v.object_id "
                            "JOIN containers c ON c.id = o.container_id "
                            "WHERE c.name = :c AND o.name = :n", c=container, n=name)[0][0])


def test_if_none_match_star_through_both_nodes_makes_one_version(nodes):
    clients, catalog = nodes
    assert clients[1].request("PUT", "/inm")[0] == 201
    names, racers = [f"n{k}" for k in range(6)], 16
    before = function_calls(catalog)

    def put(i: int) -> tuple[int, bytes]:
        name, body = names[i % len(names)], f"racer {i}".encode() * (1 + i % 3)
        status, reason = clients[i % 2].request("PUT", f"/inm/{name}", body,
                                                {"If-None-Match": "*"})
        return status, body if status == 201 else reason

    with commits_held(catalog):
        results = storm(len(names) * racers, put)
    assert calls_since(catalog, before)[0] > 0
    assert sorted({s for s, _ in results}) == [201, 412], results
    for k, name in enumerate(names):
        mine = results[k::len(names)]
        winners = [body for status, body in mine if status == 201]
        assert len(winners) == 1, (name, mine)
        status, got = clients[k % 2].request("GET", f"/inm/{name}")
        assert (status, got) == (200, winners[0])
        assert versions_of(catalog, "inm", name) == 1
    status, listing = clients[0].request("GET", "/inm?format=json")
    assert status == 200 and sorted(e["name"] for e in json.loads(listing)) == names


def test_if_match_racing_updates_lose_none(nodes):
    clients, catalog = nodes
    assert clients[0].request("PUT", "/ifm")[0] == 201
    counters, writers, increments = 3, 18, 4
    for k in range(counters):
        assert clients[0].request("PUT", f"/ifm/c{k}", b"0")[0] == 201
    before = function_calls(catalog)
    unexpected: list[tuple[str, int, bytes]] = []

    def increment(i: int) -> int:
        client, name, done, tries = clients[i % 2], f"/ifm/c{i % counters}", 0, 0
        while done < increments and tries < 400:
            tries += 1
            status, value = client.request("GET", name)
            assert status == 200
            etag = hashlib.md5(value).hexdigest()
            status, reason = client.request("PUT", name, str(int(value) + 1).encode(),
                                            {"If-Match": etag})
            if status == 201:
                done += 1
            elif status != 412:
                unexpected.append((name, status, reason))
                return done
        return done

    done = storm(writers, increment, threads=writers)
    assert unexpected == []
    assert calls_since(catalog, before)[0] > 0
    for k in range(counters):
        status, value = clients[1].request("GET", f"/ifm/c{k}")
        assert status == 200
        assert int(value) == sum(done[k::counters]) == increments * (writers // counters)


def head_counts(client: Client, path: str = "") -> tuple[int, int]:
    """(object count, bytes used) of the account or of a container."""
    conn = http.client.HTTPConnection("127.0.0.1", client.server.port, timeout=30)
    try:
        conn.request("HEAD", f"/v1/AUTH_test{path}", headers={"X-Auth-Token": client.token})
        r = conn.getresponse()
        r.read()
    finally:
        conn.close()
    kind = "Container" if path else "Account"
    return int(r.headers[f"X-{kind}-Object-Count"]), int(r.headers[f"X-{kind}-Bytes-Used"])


def quota_storm(clients: list[Client], catalog: str, container: str, size: int, fits: int
                ) -> list[tuple[int, bytes]]:
    """4 x `fits` new objects of `size` bytes PUT at once into `container`, through both
    nodes; checks that they were batched and that listings and counters agree."""
    before = function_calls(catalog)
    with commits_held(catalog):
        results = storm(4 * fits, lambda i: clients[i % 2].request(
            "PUT", f"/{container}/o{i}", bytes([i]) * size))
    assert calls_since(catalog, before)[0] > 0
    stored = {f"o{i}" for i, (s, _) in enumerate(results) if s == 201}
    for client in clients:
        status, listing = client.request("GET", f"/{container}?format=json")
        assert status == 200 and {e["name"] for e in json.loads(listing)} == stored
        assert head_counts(client, f"/{container}") == (len(stored), len(stored) * size)
    return results


def test_a_project_limit_of_n_objects_stores_exactly_n(nodes):
    clients, catalog = nodes
    flags = clients[0].server.storage_flags
    assert clients[0].request("PUT", "/plimit")[0] == 201
    fits = 10
    used = json.loads(pithos(flags, "project", "show", "test").stdout)["quota"]["objects"]
    pithos(flags, "project", "quota", "test", f"objects={used['usage'] + fits}")
    try:
        results = quota_storm(clients, catalog, "plimit", 100, fits)
    finally:
        pithos(flags, "project", "quota", "test", "objects=none")
    assert sorted(s for s, _ in results) == [201] * fits + [413] * (3 * fits), results


def test_a_container_byte_quota_of_n_objects_stores_exactly_n(nodes):
    clients, catalog = nodes
    size, fits = 1000, 10
    assert clients[0].request("PUT", "/quota", headers={
        "X-Container-Meta-Quota-Bytes": str(size * fits)})[0] == 201
    results = quota_storm(clients, catalog, "quota", size, fits)
    assert sorted(s for s, _ in results) == [201] * fits + [413] * (3 * fits), results


# (path, headers) of a request that should fail alone, with a 4xx and a reason.
HOSTILE = [
    pytest.param("/hostile/ct", {"Content-Type": "x/" + "y" * 300}, id="content-type-300"),
    pytest.param("/hostile/mv", {"X-Object-Meta-Big": "v" * 5000}, id="meta-value-5000"),
    pytest.param("/hostile/many", {f"X-Object-Meta-K{n}": "v" * 30 for n in range(200)},
                 id="meta-200-items"),
    pytest.param("/hostile/mk", {"X-Object-Meta-" + "k" * 200: "v"}, id="meta-key-200"),
    pytest.param("/hostile/" + "n" * 1100, {}, id="name-1100"),
    pytest.param("/hostile/cc", {"Content-Type": "a/b\x01c"}, id="content-type-control"),
]


@pytest.mark.parametrize("path,headers", HOSTILE)
def test_a_hostile_item_fails_alone_with_a_4xx(nodes, path, headers):
    clients, catalog = nodes
    clients[0].request("PUT", "/hostile")
    case = path.rsplit("/", 1)[1][:8]
    good = 40
    before = function_calls(catalog)

    def put(i: int) -> tuple[int, bytes]:
        if i % 8 == 4:  # five hostile requests in the storm, on both nodes
            return clients[i % 2].request("PUT", path, b"bad", headers)
        return clients[i % 2].request("PUT", f"/hostile/{case}-{i}", b"good")

    with commits_held(catalog):
        results = storm(good + 5, put)
    assert calls_since(catalog, before)[0] > 0
    assert [(i, s, r[:200]) for i, (s, r) in enumerate(results) if i % 8 != 4 and s != 201
            ] == []  # every good request in the storm committed
    for i in range(4, good + 5, 8):
        status, reason = results[i]
        assert 400 <= status < 500 and reason, (case, status, reason[:300])


# -- failures under the batches -------------------------------------------------------------


def body_of(name: str) -> bytes:
    """What is PUT under `name`: mostly small (kept inline, the commit is most of the PUT),
    some stored as blocks."""
    rng = random.Random(name)
    return rng.randbytes(rng.choice([0, 1, 700, 4096, 16384, 16385, 200_000]))


def put_storm(clients: list[Client], container: str, seconds: float, threads: int = 16
              ) -> tuple[set[str], set[str], list[tuple[str, int, bytes]]]:
    """New names PUT for `seconds` through both nodes: (acknowledged, attempted, answers
    other than 201)."""
    acknowledged: set[str] = set()
    attempted: set[str] = set()
    others: list[tuple[str, int, bytes]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def writer(w: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            name = f"w{w}-{n}"
            n += 1
            with lock:
                attempted.add(name)
            status, reason = clients[(w + n) % len(clients)].request(
                "PUT", f"/{container}/{name}", body_of(name))
            with lock:
                if status == 201:
                    acknowledged.add(name)
                else:
                    others.append((name, status, reason[:200]))

    storm(threads, writer, threads=threads)
    return acknowledged, attempted, others


def list_all(client: Client, container: str) -> list[dict]:
    """The container's whole listing, page by page (a page is at most 10000 entries, and a
    fast storm acknowledges more than that)."""
    entries: list[dict] = []
    while True:
        marker = quote(entries[-1]["name"]) if entries else ""
        status, page = client.request(
            "GET", f"/{container}?format=json&limit=10000&marker={marker}")
        assert status == 200
        got = json.loads(page)
        if not got:
            return entries
        entries.extend(got)


def check_stored(clients: list[Client], container: str, acknowledged: set[str],
                 attempted: set[str]) -> None:
    """Every acknowledged name reads back whole on both nodes; every listed name was
    attempted and reads back as what was sent under it; the counters are the listing's."""
    entries = {e["name"]: e for e in list_all(clients[0], container)}
    assert acknowledged <= set(entries), sorted(acknowledged - set(entries))[:10]
    assert set(entries) <= attempted
    for k, (name, entry) in enumerate(sorted(entries.items())):
        status, got = clients[k % len(clients)].request("GET", f"/{container}/{name}")
        assert (status, got) == (200, body_of(name)), name
        assert entry["bytes"] == len(got) and entry["hash"] == hashlib.md5(got).hexdigest()
    for client in clients:
        assert head_counts(client, f"/{container}") == (
            len(entries), sum(e["bytes"] for e in entries.values()))


def terminate_backends(catalog: str, active_only: bool, wait: bool = False) -> int:
    """How many of the catalog's backends were told to end (`wait`: and have ended)."""
    db = catalog.rsplit("/", 1)[1]
    rows = sql(catalog, "SELECT array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)) "
                        "FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
                        + (" AND state = 'active'" if active_only else ""), db=db)
    pids = list(rows[0][0] or [])
    deadline = time.monotonic() + 30
    while wait and pids and time.monotonic() < deadline:
        left = sql(catalog, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)",
                   p=pids)
        if not left[0][0]:
            break
        time.sleep(0.05)
    return len(pids)


def test_backends_terminated_mid_batch_fail_requests_clearly_and_lose_nothing(nodes):
    clients, catalog = nodes
    assert clients[0].request("PUT", "/killpg")[0] == 201
    stop = threading.Event()
    killed: list[int] = []

    def killer() -> None:
        rng = random.Random(3)
        while not stop.wait(rng.uniform(0.1, 0.4)):
            killed.append(terminate_backends(catalog, active_only=rng.random() < 0.7))

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        acknowledged, attempted, others = put_storm(clients, "killpg", seconds=10)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert sum(killed) > 0 and acknowledged
    # A failed request says so with a 5xx (503: the catalog, try again), never a dropped
    # connection or a 4xx.
    assert [o for o in others if o[1] not in (500, 503)] == []
    # Recovered without a restart: every pooled connection killed once more, and the
    # backends gone before the next request.  A connection whose backend ended while it sat
    # in the pool is replaced at checkout (its socket holds the goodbye: no round trip), so
    # not one request fails for it, in the pool of a batch or of a single call.
    terminate_backends(catalog, active_only=False, wait=True)
    made = [clients[0].request("PUT", "/killpg-after")[0] for _ in range(3)]
    assert made[0] in (201, 202) and set(made) <= {201, 202}, made
    terminate_backends(catalog, active_only=False, wait=True)
    for round_ in range(3):
        statuses = storm(24, lambda i, r=round_: clients[i % 2].request(
            "PUT", f"/killpg-after/r{r}-{i}", b"x")[0])
        assert statuses == [201] * 24, (round_, statuses)
    check_stored(clients, "killpg", acknowledged, attempted)
    assert_fsck_clean(clients[0].server.storage_flags)


def test_a_delete_racing_overwrites_of_an_existing_object_finds_it(nodes):
    """The object exists from before the storm and its PUTs only replace it: a DELETE sent
    meanwhile must find it (204), whichever version it deletes."""
    clients, _ = nodes
    assert clients[0].request("PUT", "/deloverw")[0] == 201
    for rnd in range(6):
        path = f"/deloverw/o{rnd}"
        assert clients[0].request("PUT", path, b"first")[0] == 201
        start = threading.Event()

        def task(i: int, path: str = path, start: threading.Event = start) -> int:
            if i == 7:
                start.wait(30)
                return clients[1].request("DELETE", path)[0]
            if i == 3:
                start.set()
            return clients[i % 2].request("PUT", path, f"v{i}".encode() * 100)[0]

        statuses = storm(16, task, threads=16)
        assert statuses[7] == 204, (rnd, statuses)
        assert set(statuses[:7] + statuses[8:]) == {201}

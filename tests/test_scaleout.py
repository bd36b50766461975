"""Two `pithos serve` nodes over one Ceph pool namespace and one PostgreSQL database: the
scale-out configuration, where any node serves any request.

- what one node writes, the other reads, lists, copies and deletes, and both count alike;
- concurrent PUTs of one name through both nodes end with one complete winner, the loser kept
  as a version;
- `pithos gc` run beside one node while uploads go through the other loses nothing;
- kill -9 of a node mid-upload: the other keeps serving, nothing partial is visible, fsck is
  clean.

Needs the real Ceph cluster and PostgreSQL (scripts/ceph up, scripts/postgres up; scripts/test
starts both): `scaleout_storage` skips the module without them, which CI turns into a failure.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.conftest import PithosServer, scaleout_storage

MiB = 1024 * 1024
TIMEOUT_S = 120


class Node:
    """One `pithos serve` seen by a client: its base URL and a token (tokens live in the
    shared catalog, so one from either node works on both)."""

    def __init__(self, server: PithosServer, token: str) -> None:
        self.server = server
        self.base = server.url
        self.h = {"X-Auth-Token": token}

    def url(self, path: str = "") -> str:
        return f"{self.base}/v1/AUTH_test{path}"

    def get(self, path: str, headers: dict | None = None, **kw) -> requests.Response:
        return requests.get(self.url(path), headers={**self.h, **(headers or {})},
                            timeout=TIMEOUT_S, **kw)

    def head(self, path: str = "") -> requests.Response:
        return requests.head(self.url(path), headers=self.h, timeout=TIMEOUT_S)

    def put(self, path: str, data: bytes | None = None, headers: dict | None = None
            ) -> requests.Response:
        return requests.put(self.url(path), data=data, headers={**self.h, **(headers or {})},
                            timeout=TIMEOUT_S)

    def delete(self, path: str, **kw) -> requests.Response:
        return requests.delete(self.url(path), headers=self.h, timeout=TIMEOUT_S, **kw)


def login(server: PithosServer) -> str:
    r = requests.get(server.auth_url, headers={"X-Auth-User": "test:tester",
                                               "X-Auth-Key": "testing"}, timeout=30)
    r.raise_for_status()
    return r.headers["X-Auth-Token"]


def pithos(server: PithosServer, *args: str, check: bool = True) -> str:
    """The CLI with the node's storage flags (its data dir, the shared blocks and catalog)."""
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", *args,
                           *server.storage_flags], capture_output=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def fsck(server: PithosServer) -> dict:
    report = json.loads(pithos(server, "store", "fsck", "--json", check=False))
    assert report["clean"], report
    return report


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(node A, node B, blocks URL, catalog URL): two servers on different ports over the same
    RADOS namespace and PostgreSQL database, each with a data directory of its own."""
    blocks, catalog, cleanup = scaleout_storage("scaleout")
    servers: list[PithosServer] = []
    try:
        for name in ("a", "b"):
            servers.append(PithosServer(tmp_path_factory.mktemp(f"node-{name}"), blocks=blocks,
                                        catalog=catalog))
        token = login(servers[0])
        yield Node(servers[0], token), Node(servers[1], token), blocks, catalog
    finally:
        for server in servers:
            server.stop()
        cleanup()


def counters(node: Node, container: str) -> tuple:
    c, a = node.head(f"/{container}"), node.head()
    assert c.status_code == 204 and a.status_code == 204
    return (c.headers["X-Container-Object-Count"], c.headers["X-Container-Bytes-Used"],
            a.headers["X-Account-Container-Count"], a.headers["X-Account-Object-Count"],
            a.headers["X-Account-Bytes-Used"])


def test_written_on_one_node_is_read_listed_copied_and_deleted_on_the_other(cluster):
    a, b, _, _ = cluster
    assert a.put("/shared").status_code == 201
    body = os.urandom(9 * MiB + 12345)  # three blocks, the last one partial
    put = a.put("/shared/doc", body, {"Content-Type": "application/x-test",
                                      "X-Object-Meta-Color": "blue"})
    assert put.status_code == 201 and put.headers["ETag"] == md5(body)
    assert counters(a, "shared") == counters(b, "shared")
    assert counters(b, "shared")[:2] == ("1", str(len(body)))

    got = b.get("/shared/doc")
    assert got.status_code == 200 and got.content == body
    assert got.headers["ETag"] == md5(body)
    assert got.headers["Content-Type"] == "application/x-test"
    assert got.headers["X-Object-Meta-Color"] == "blue"
    ranged = b.get("/shared/doc", headers={"Range": "bytes=4194300-8388620"})
    assert ranged.status_code == 206 and ranged.content == body[4194300:8388621]
    listing = b.get("/shared", params={"format": "json"}).json()
    assert [(e["name"], e["bytes"], e["hash"]) for e in listing] == [
        ("doc", len(body), md5(body))]

    # A server-side copy through B names A's map; A reads it back.
    copy = b.put("/shared/copy", headers={"X-Copy-From": "/shared/doc"})
    assert copy.status_code == 201
    assert a.get("/shared/copy").content == body
    assert sorted(e["name"] for e in a.get("/shared", params={"format": "json"}).json()) == [
        "copy", "doc"]
    assert counters(a, "shared") == counters(b, "shared")
    assert counters(a, "shared")[:2] == ("2", str(2 * len(body)))

    # Deleted through B: gone on both, and both count it gone.
    assert b.delete("/shared/doc").status_code == 204
    assert a.get("/shared/doc").status_code == 404
    assert b.get("/shared/doc").status_code == 404
    assert [e["name"] for e in a.get("/shared", params={"format": "json"}).json()] == ["copy"]
    assert counters(a, "shared") == counters(b, "shared")
    assert counters(a, "shared")[:2] == ("1", str(len(body)))
    assert a.get("/shared/copy").content == body


def test_small_requests_do_not_wait_on_the_event_loop(cluster):
    """RADOS completions arrive on librados' threads: a batch must not wait for the gevent
    hub's next timer tick to notice them (it did, about a second per batch, so a 4 KiB PUT
    took 3 s and a GET 1 s).  40 small PUT + GET pairs take about a second; 15 s is the cap."""
    a, b, _, _ = cluster
    assert a.put("/quick").status_code == 201
    began = time.monotonic()
    for i in range(20):
        for writer, reader in ((a, b), (b, a)):
            body = os.urandom(4096)
            assert writer.put(f"/quick/o{i}", body).status_code == 201
            assert reader.get(f"/quick/o{i}").content == body
    assert time.monotonic() - began < 15, "small requests wait for something"


def test_nodes_opening_a_fresh_database_at_once():
    """N nodes started together on a new (or older) database all migrate it: one applies
    each step, the others wait for it and find it done (none dies on a duplicate table)."""
    _, catalog, cleanup = scaleout_storage("fresh")
    try:
        # Each process imports, says so, and opens the catalog when told: all at once.
        code = ("import sys; from pithos.catalog import Catalog; print('ready', flush=True); "
                f"sys.stdin.readline(); Catalog({catalog!r}).close()")
        procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(5)]
        for p in procs:
            assert p.stdout.readline() == b"ready\n"
        for p in procs:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        errors = [p.communicate(timeout=120)[1].decode()[-300:] for p in procs]
        assert [p.returncode for p in procs] == [0] * 5, errors
    finally:
        cleanup()


def ceph(conf: str, *args: str) -> str:
    proc = subprocess.run(["ceph", "-c", conf, *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_workers_of_a_node_are_distinct_rados_clients(tmp_path):
    """Each worker of a node opens its own RADOS client after gunicorn forks it, and no two
    may share a client address.  They did: the master had opened the block store (for the
    first-start check), so every worker inherited librados' random state and drew the same
    address nonce, and the OSD kept resetting one worker's session in favour of the other's:
    each read in flight was sent again and again (hundreds of 4 MiB reads for one GET, which
    took a second).  A cephx user of the test's own tells its sessions apart in the mon."""
    blocks, catalog, cleanup = scaleout_storage("workers")
    conf = os.environ["PITHOS_CEPH_CONF"]
    pool = blocks.split("://", 1)[1].split("?", 1)[0]
    user = f"pithos-test-{os.urandom(4).hex()}"
    keyring = tmp_path / "keyring"
    ceph(conf, "auth", "get-or-create", f"client.{user}", "mon", "allow r", "osd",
         f"allow rw pool={pool}", "-o", str(keyring))
    own_conf = tmp_path / "ceph.conf"
    with open(conf) as f:
        own_conf.write_text(f.read() + f"\n[client.{user}]\nkeyring = {keyring}\n")
    server = None
    try:
        server = PithosServer(tmp_path / "node", workers=2, catalog=catalog,
                              blocks=blocks.replace(f"conf={conf}", f"conf={own_conf}")
                              + f"&id={user}")
        mons = [m["name"] for m in json.loads(ceph(conf, "mon", "dump", "-f", "json"))["mons"]]
        deadline = time.monotonic() + 30
        while True:
            nonces = [a["nonce"] for mon in mons
                      for session in json.loads(ceph(conf, "tell", f"mon.{mon}", "sessions"))
                      if session.get("entity_name") == f"client.{user}"
                      for a in session["addrs"]["addrvec"]]
            if len(nonces) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(nonces) == 2, nonces  # one client per worker, none left in the master
        assert len(set(nonces)) == 2, f"two workers share the RADOS client nonce {nonces[0]}"
    finally:
        if server is not None:
            server.stop()
        ceph(conf, "auth", "del", f"client.{user}")
        cleanup()


def race_upload(node: Node, body: bytes, start: threading.Barrier,
                replies: dict[str, requests.Response], label: str) -> None:
    start.wait()
    replies[label] = node.put("/race/obj", body)


def test_concurrent_puts_of_one_name_through_both_nodes(cluster):
    """Each round, one thread per node PUTs the same name with its own content at the same
    moment: one complete winner, never a mix, and (versioning on) the loser is a version."""
    a, b, _, _ = cluster
    assert a.put("/race").status_code == 201
    rounds = 5
    seen_versions: list[str] = []
    winners = {"a": 0, "b": 0}
    for round_no in range(rounds):
        # Same size, different bytes in every block: a mix would show in the MD5.
        bodies = {"a": os.urandom(6 * MiB + 777), "b": os.urandom(6 * MiB + 777)}
        replies: dict[str, requests.Response] = {}
        start = threading.Barrier(2)
        threads = [threading.Thread(target=race_upload,
                                    args=(node, bodies[label], start, replies, label))
                   for label, node in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for label in ("a", "b"):
            assert replies[label].status_code == 201, (round_no, label, replies[label].text)
            assert replies[label].headers["ETag"] == md5(bodies[label])
        vids = {label: replies[label].headers["X-Object-Version"] for label in ("a", "b")}
        assert vids["a"] != vids["b"]

        current = {node.base: node.get("/race/obj") for node in (a, b)}
        results = list(current.values())
        assert results[0].headers["X-Object-Version"] == results[1].headers["X-Object-Version"]
        winner = next(label for label in ("a", "b")
                      if vids[label] == results[0].headers["X-Object-Version"])
        loser = "b" if winner == "a" else "a"
        winners[winner] += 1
        for got in results:
            assert got.content == bodies[winner]
            assert got.headers["ETag"] == md5(got.content) == md5(bodies[winner])

        # The loser is kept as a version, whole, and reads back through either node.
        listed = b.get("/race/obj", params={"version": "list", "format": "json"}).json()
        ids = [v for v, _ in listed["versions"]]
        assert ids[-1] == vids[winner] and vids[loser] in ids
        seen_versions += [vids[loser], vids[winner]]
        assert ids == seen_versions
        for node in (a, b):
            old = node.get("/race/obj", params={"version": vids[loser]})
            assert old.status_code == 200 and old.content == bodies[loser]
            assert old.headers["ETag"] == md5(bodies[loser])
    assert counters(a, "race") == counters(b, "race")
    assert counters(a, "race")[:2] == ("1", str(6 * MiB + 777))


def test_gc_beside_one_node_while_uploads_go_through_the_other(cluster):
    """`pithos gc` with node A's flags, again and again for ~18 s, while two clients upload,
    overwrite and delete through node B (versioning none, so overwrites and deletes make
    garbage all the time, and uploads keep re-putting shared blocks the sweep may be
    looking at): every retained object reads back right through both nodes; fsck is clean."""
    a, b, _, _ = cluster
    assert b.put("/churn", headers={"X-Container-Policy-Versioning": "none"}).status_code == 201
    shared = [os.urandom(4 * MiB) for _ in range(3)]
    retained: dict[str, str] = {}
    lock = threading.Lock()
    errors: list[str] = []
    stop = time.monotonic() + 18
    uploads = [0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while time.monotonic() < stop:
            name = f"o{seed}-{rng.randrange(6)}"  # each name has one writer: the truth is known
            try:
                if rng.random() < 0.25:
                    r = session.delete(b.url(f"/churn/{name}"), headers=b.h, timeout=TIMEOUT_S)
                    if r.status_code not in (204, 404):
                        errors.append(f"DELETE {name}: {r.status_code}")
                    with lock:
                        retained.pop(name, None)
                    continue
                body = rng.choice(shared) + os.urandom(rng.randrange(1, 1_500_000))
                r = session.put(b.url(f"/churn/{name}"), data=body, headers=b.h,
                                timeout=TIMEOUT_S)
            except requests.RequestException as exc:
                errors.append(f"{name}: {exc}")
                continue
            if r.status_code != 201 or r.headers.get("ETag") != md5(body):
                errors.append(f"PUT {name}: {r.status_code} {r.text[:200]}")
                continue
            with lock:
                retained[name] = md5(body)
                uploads[0] += 1
        session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    reports = []
    try:
        while time.monotonic() < stop:
            reports.append(json.loads(pithos(a.server, "gc", "--json")))
    finally:
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert len(reports) >= 2 and uploads[0] >= 10, (len(reports), uploads[0])
    time.sleep(2.5)  # the last garbage is older than the collector's clock margin
    reports.append(json.loads(pithos(a.server, "gc", "--json")))
    # The collector did sweep (overwrites and deletes made garbage), and lost nothing.
    assert sum(r["reclaimed_blocks"] for r in reports) > 0, reports
    listing = {e["name"]: e["hash"] for e in a.get("/churn", params={"format": "json"}).json()}
    assert listing == retained
    for name, digest in retained.items():
        for node in (a, b):
            r = node.get(f"/churn/{name}")
            assert r.status_code == 200, (node.base, name, r.status_code)
            assert md5(r.content) == digest == r.headers["ETag"]
    fsck(a.server)


def chunked_upload(node: Node, path: str) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", node.server.port, timeout=TIMEOUT_S)
    conn.putrequest("PUT", f"/v1/AUTH_test{path}")
    conn.putheader("X-Auth-Token", node.h["X-Auth-Token"])
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    return conn


def send_chunk(conn: http.client.HTTPConnection, data: bytes) -> None:
    conn.send(b"%x\r\n" % len(data) + data + b"\r\n")


def stored_blocks(server: PithosServer) -> int:
    return int(json.loads(pithos(server, "store", "stats", "--json"))["blocks"])


def test_kill_9_of_a_node_mid_upload(cluster, tmp_path):
    """A third node C on the same storage takes two large chunked uploads (an overwrite of an
    object that has a complete version, and a new name); once some of their blocks are in
    RADOS, C's whole process group is killed.  B serves reads and writes at once, shows the
    previous complete version and no trace of the new name, and fsck is clean."""
    a, b, blocks, catalog = cluster
    c_server = PithosServer(tmp_path / "node-c", blocks=blocks, catalog=catalog)
    conns: list[http.client.HTTPConnection] = []
    try:
        # Starting C ran `pithos user add` again, which resets the key and revokes the
        # user's tokens on every node: log in anew.
        token = login(c_server)
        for node in (a, b):
            node.h["X-Auth-Token"] = token
        c = Node(c_server, token)
        assert b.put("/crash").status_code == 201
        previous = os.urandom(5 * MiB + 3)
        assert b.put("/crash/big", previous).status_code == 201
        before = counters(b, "crash")
        blocks_before = stored_blocks(b.server)

        conns = [chunked_upload(c, "/crash/big"), chunked_upload(c, "/crash/fresh")]
        chunk = os.urandom(MiB)
        deadline = time.monotonic() + 60
        sent = 0
        # Keep both uploads going until the store holds some of their blocks (C stores them
        # in batches of 8 MiB as the body arrives): they are truly mid-upload when killed.
        while True:
            for _ in range(8):
                for conn in conns:
                    send_chunk(conn, chunk + sent.to_bytes(8, "big"))
                sent += 1
            if sent >= 24 and stored_blocks(b.server) > blocks_before:
                break
            assert time.monotonic() < deadline and sent < 200, "no block reached the store"
        os.killpg(c_server.proc.pid, signal.SIGKILL)
        c_server.proc.wait(timeout=30)

        # B serves at once: writes and reads, the old version intact, nothing partial.
        fresh = os.urandom(3 * MiB)
        assert b.put("/crash/after", fresh).status_code == 201
        assert b.get("/crash/after").content == fresh
        for node in (a, b):
            head = node.head("/crash/big")
            assert head.status_code == 200
            assert head.headers["ETag"] == md5(previous)
            assert int(head.headers["Content-Length"]) == len(previous)
            assert node.get("/crash/big").content == previous
            assert node.head("/crash/fresh").status_code == 404
            listed = node.get("/crash/big", params={"version": "list", "format": "json"})
            assert len(listed.json()["versions"]) == 1
        names = sorted(e["name"] for e in b.get("/crash", params={"format": "json"}).json())
        assert names == ["after", "big"]
        after = counters(b, "crash")
        assert after[0] == str(int(before[0]) + 1)
        assert after[1] == str(int(before[1]) + len(fresh))
        assert counters(a, "crash") == after
        report = fsck(b.server)
        assert report["blocks_checked"] > blocks_before
    finally:
        for conn in conns:
            conn.close()
        c_server.stop()

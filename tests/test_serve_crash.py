"""kill -9 of a real `pithos serve` (master and workers) during concurrent PUTs, three times on
one data directory: after each restart every acknowledged object reads back whole, and every
object listed reads back as what was sent under its name (nothing half-made is visible)."""

import hashlib
import http.client
import os
import random
import signal
import threading
import time

from tests.conftest import PithosServer
from tests.swift_helpers import login, request

MiB = 1 << 20


def _content(name: str) -> bytes:
    rng = random.Random(name)
    # Up to 16 KiB kept inline in the version row (the row is the only copy), past it blocks.
    size = rng.choice([0, 1, 4096, 16384, 16385, MiB + 7, 4 * MiB, 5 * MiB + 3])
    return rng.randbytes(size)


def _put_until_killed(server, auth, prefix, acknowledged, errors, stop):
    n = 0
    while not stop.is_set():
        name = f"{prefix}-{n}"
        n += 1
        body = _content(name)
        try:
            reply = request(server, "PUT", f"{auth.path}/c/{name}", body=body,
                            headers={"ETag": hashlib.md5(body).hexdigest()}, token=auth.token)
        except (OSError, http.client.HTTPException):
            return  # the server died under this request: not acknowledged
        if reply.status != 201:
            errors.append((name, reply.status))
            return
        acknowledged.append(name)


def test_kill_9_of_the_server_during_puts_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(7)
    data_dir = tmp_path / "data"
    acknowledged: list[str] = []
    for round_ in range(3):
        server = PithosServer(data_dir, workers=2)
        try:
            auth = login(server)
            assert request(server, "PUT", f"{auth.path}/c", token=auth.token).status in (201, 202)
            stop = threading.Event()
            ours: list[str] = []
            errors: list[tuple[str, int]] = []
            clients = [threading.Thread(target=_put_until_killed,
                                        args=(server, auth, f"r{round_}w{w}", ours,
                                              errors, stop)) for w in range(6)]
            for c in clients:
                c.start()
            deadline = time.monotonic() + 60
            while not ours and time.monotonic() < deadline:  # something acknowledged
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 1.0))
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=30)
            stop.set()
            for c in clients:
                c.join(timeout=60)
            assert errors == []
            assert ours, "no PUT was acknowledged before the kill"
            acknowledged += ours
        finally:
            server.stop()

    server = PithosServer(data_dir, workers=1)
    try:
        swift = server.connection()
        for name in acknowledged:
            headers, body = swift.get_object("c", name)
            assert body == _content(name), name
            assert headers["etag"] == hashlib.md5(body).hexdigest()
        _, listing = swift.get_container("c", full_listing=True)
        for entry in listing:
            headers, body = swift.get_object("c", entry["name"])
            assert body == _content(entry["name"]), entry["name"]
            assert entry["bytes"] == len(body)
        assert int(swift.head_container("c")["x-container-object-count"]) == len(listing)
    finally:
        server.stop()

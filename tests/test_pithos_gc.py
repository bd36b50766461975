"""`pithos gc` against a live server: it reclaims exactly what no retained version uses, and
running it while clients upload and delete loses nothing."""

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

import requests

from tests.conftest import PithosServer


def auth(server, user="test:tester", key="testing"):
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=30)
    r.raise_for_status()
    return r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}


def pithos(server, *args):
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", *args, "--data-dir",
                           str(server.data_dir)], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def stats(server):
    return json.loads(pithos(server, "store", "stats", "--json"))


def test_gc_reclaims_exactly_the_unused_blocks(tmp_path):
    server = PithosServer(tmp_path / "data")
    try:
        url, h = auth(server)
        requests.put(f"{url}/g", headers=h, timeout=30)
        keep = os.urandom(9 * 1024 * 1024)
        gone = os.urandom(5 * 1024 * 1024)
        requests.put(f"{url}/g/keep", data=keep, headers=h, timeout=60)
        requests.put(f"{url}/g/gone", data=gone, headers=h, timeout=60)
        requests.put(f"{url}/g/copy", headers={**h, "X-Copy-From": "/g/keep"}, timeout=60)
        requests.put(f"{url}/g/over", data=b"old" * 7000, headers=h, timeout=60)
        requests.put(f"{url}/g/over", data=b"new" * 7000, headers=h, timeout=60)
        before = stats(server)
        # Deleted objects and old versions hold their blocks until their history is purged.
        requests.delete(f"{url}/g/gone", headers=h, timeout=30)
        time.sleep(2.5)  # older than the collector's clock margin
        report = json.loads(pithos(server, "gc", "--json"))
        assert report["reclaimed_blocks"] == 0
        requests.delete(f"{url}/g", params={"until": time.time() + 1}, headers=h, timeout=30)
        time.sleep(2.5)
        dry = json.loads(pithos(server, "gc", "--dry-run", "--json"))
        report = json.loads(pithos(server, "gc", "--json"))
        after = stats(server)
        # gone: two data blocks and a map page; over's old version (past the size of objects
        # kept inline, which store no block): a block and a page.
        assert dry["garbage_blocks"] == report["reclaimed_blocks"] == 5
        assert after["blocks"] == before["blocks"] - 5
        assert after["bytes"] == before["bytes"] - report["reclaimed_bytes"]
        for name, content in (("keep", keep), ("copy", keep), ("over", b"new" * 7000)):
            assert requests.get(f"{url}/g/{name}", headers=h, timeout=60).content == content
        assert json.loads(pithos(server, "store", "fsck", "--json"))["clean"]
    finally:
        server.stop()


def test_gc_while_uploading_and_deleting_loses_nothing(tmp_path):
    server = PithosServer(tmp_path / "data", workers=2)
    try:
        url, h = auth(server)
        requests.put(f"{url}/stress", headers={**h, "X-Container-Policy-Versioning": "none"},
                     timeout=30)
        retained: dict[str, str] = {}
        lock = threading.Lock()
        stop = time.monotonic() + 25
        errors: list[str] = []
        # A few shared blocks, so uploads keep re-using blocks the collector could be sweeping.
        shared = [os.urandom(4 * 1024 * 1024) for _ in range(3)]

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                # Each client has names of its own: with two writers of one name, the order in
                # which they learn of their commits need not be the commit order, and the test
                # would expect the wrong one.
                name = f"o{seed}-{rng.randrange(4)}"
                if rng.random() < 0.3:
                    r = requests.delete(f"{url}/stress/{name}", headers=h, timeout=60)
                    if r.status_code in (204, 404):
                        with lock:
                            retained.pop(name, None)
                    continue
                body = rng.choice(shared) + os.urandom(rng.randrange(1, 300_000))
                r = requests.put(f"{url}/stress/{name}", data=body, headers=h, timeout=120)
                if r.status_code != 201:
                    errors.append(f"PUT {name}: {r.status_code}")
                    continue
                if r.headers.get("ETag") != hashlib.md5(body).hexdigest():
                    errors.append(f"PUT {name}: ETag {r.headers.get('ETag')}")
                with lock:
                    retained[name] = hashlib.md5(body).hexdigest()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        runs = 0
        while time.monotonic() < stop:
            pithos(server, "gc", "--json")
            runs += 1
        for t in threads:
            t.join()
        assert not errors and runs >= 2
        pithos(server, "gc", "--json")
        for name, digest in retained.items():
            r = requests.get(f"{url}/stress/{name}", headers=h, timeout=120)
            assert r.status_code == 200, name
            assert hashlib.md5(r.content).hexdigest() == digest
        assert json.loads(pithos(server, "store", "fsck", "--json"))["clean"]
    finally:
        server.stop()


def clone_outlives_its_object(server, url, headers, name, data) -> None:
    """archipelago volume clone --from-object of images/`name` (holding `data`) as volume
    vm1; then the object goes, its history is purged and `pithos gc` runs: the volume still
    reads `data` (the clone named the object's map, or stored it first)."""
    from archipelago import Volumes

    proc = subprocess.run([sys.executable, "-m", "archipelago.cli", "volume", "clone",
                           "--from-object", f"AUTH_test/images/{name}", "vm1",
                           "--data-dir", str(server.data_dir)], capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    requests.delete(f"{url}/images/{name}", headers=headers, timeout=30)
    requests.delete(f"{url}/images", params={"until": time.time() + 1}, headers=headers,
                    timeout=30)
    assert requests.head(f"{url}/images/{name}", headers=headers, timeout=30).status_code \
        == 404
    time.sleep(2.5)  # older than the collector's clock margin
    pithos(server, "gc", "--json")
    vol = Volumes.local(str(server.data_dir)).open("vm1")
    try:
        got = bytearray(len(data))
        vol.read_into(memoryview(got), 0)
    finally:
        vol.close()
    assert bytes(got) == data


def test_volume_cloned_from_an_object_survives_its_deletion(tmp_path):
    """archipelago volume clone --from-object: the clone names the object's map; the GC keeps
    it after the object and its history are gone."""
    server = PithosServer(tmp_path / "data")
    try:
        url, h = auth(server)
        requests.put(f"{url}/images", headers=h, timeout=30)
        image = os.urandom(8 * 1024 * 1024)
        requests.put(f"{url}/images/disk.raw", data=image, headers=h, timeout=60)
        missing = subprocess.run([sys.executable, "-m", "archipelago.cli", "volume", "clone",
                                  "--from-object", "test/images/nope", "vm2", "--data-dir",
                                  str(server.data_dir)], capture_output=True, timeout=120)
        assert missing.returncode != 0 and b"no object" in missing.stderr
        clone_outlives_its_object(server, url, h, "disk.raw", image)
    finally:
        server.stop()

"""Blocks heal, through a real `pithos serve` (issue 19, "Nothing acknowledged is ever lost").

A byte flips in a stored block: a GET of the object fails (a 500, or a body cut short: never
the damaged bytes) and quarantines the block; `pithos store fsck` names the object that needs
it; the same bytes uploaded again, by the same account or by another, store the block afresh,
and the object reads back whole.  (Before quarantine, the upload found the block "present",
kept the damaged file and answered 201: every later upload of that content was acknowledged
and unreadable.)  On the embedded data directory and on RADOS + PostgreSQL.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from swift_helpers import TIMEOUT_S, login, request

from pithos.core.hashing import block_hash

SERVER_CONFIGS = ("embedded", "scaleout")
MiB = 1 << 20
BLOCK = 4 * MiB


def corrupt(server, hash_: bytes, offset: int) -> None:
    """Flip one byte of a stored block behind the server's back, as a failing disk would."""
    if server.config == "embedded":
        path = server.data_dir / "blocks" / hash_.hex()[:2] / hash_.hex()
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x01]))
            os.fsync(f.fileno())
        return
    import rados

    url = urlsplit(server.storage_flags[server.storage_flags.index("--blocks") + 1])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    cluster = rados.Rados(conffile=query["conf"])
    cluster.connect()
    try:
        ioctx = cluster.open_ioctx(url.netloc)
        ioctx.set_namespace(query.get("namespace", ""))
        data = bytearray(ioctx.read(hash_.hex(), BLOCK + 1, 0))
        data[offset] ^= 0x01
        ioctx.write_full(hash_.hex(), bytes(data))  # (its omap, the block's times, stays)
        ioctx.close()
    finally:
        cluster.shutdown()


def get_object(server, path: str, token: str) -> tuple[int, bytes, bool]:
    """(status, body, whether the body came whole): the server cuts a body short when it
    meets damage after sending the headers."""
    conn = http.client.HTTPConnection("127.0.0.1", int(server.port), timeout=TIMEOUT_S)
    try:
        conn.request("GET", path, headers={"X-Auth-Token": token})
        resp = conn.getresponse()
        try:
            return resp.status, resp.read(), True
        except http.client.IncompleteRead as exc:
            return resp.status, exc.partial, False
    finally:
        conn.close()


def assert_fails_without_damaged_bytes(reply: tuple[int, bytes, bool], data: bytes) -> None:
    status, body, whole = reply
    if status < 500:
        assert status == 200 and not whole
        assert body == data[:len(body)]  # what was sent before the damage was verified


def fsck(server) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "pithos.cli.main", "store", "fsck", "--json",
                           *server.storage_flags], capture_output=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout)


def quarantined(report: dict, hash_: bytes) -> dict:
    (entry,) = [e for e in report["quarantined"] if e["hash"] == hash_.hex()]
    return entry


@pytest.mark.parametrize("uploader", ["same account", "another account"])
@pytest.mark.parametrize("block, offset", [(0, 3 * MiB + 17), (1, 1000)],
                         ids=["first block, a later part", "second block"])
def test_a_corrupt_block_heals_when_its_content_is_uploaded_again(pithos_server, uploader,
                                                                  block, offset):
    server = pithos_server
    me = login(server)
    container = f"heal-{uuid.uuid4().hex[:8]}"
    assert request(server, "PUT", f"{me.path}/{container}", token=me.token).status == 201
    data = os.urandom(2 * BLOCK + MiB + 5)
    obj = f"{me.path}/{container}/obj"
    assert request(server, "PUT", obj, body=data, token=me.token).status == 201
    assert get_object(server, obj, me.token) == (200, data, True)
    victim = block_hash(data[block * BLOCK:(block + 1) * BLOCK])

    corrupt(server, victim, offset)
    assert_fails_without_damaged_bytes(get_object(server, obj, me.token), data)
    code, report = fsck(server)
    assert code == 1 and victim.hex() in report["corrupt"]
    entry = quarantined(report, victim)
    assert entry["healed"] is False
    assert any(name.startswith(f"object test/{container}/obj version")
               for name in entry["named_by"])
    # Still damaged until the content is uploaded again.
    assert_fails_without_damaged_bytes(get_object(server, obj, me.token), data)

    if uploader == "same account":
        again = f"{me.path}/{container}/again"
        assert request(server, "PUT", again, body=data, token=me.token).status == 201
    else:
        other = login(server, "test2:tester2", "testing2")
        assert request(server, "PUT", f"{other.path}/{container}",
                       token=other.token).status == 201
        assert request(server, "PUT", f"{other.path}/{container}/copy", body=data,
                       token=other.token).status == 201
    assert get_object(server, obj, me.token) == (200, data, True)
    code, report = fsck(server)
    assert code == 0, report
    assert quarantined(report, victim)["healed"] is True


# -- the blocker alone ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "local", "packed"])
def blocker(request, tmp_path):
    from pithos.blocker import Blocker, LocalBlockStore, MemoryBlockStore

    # "packed": every small block a record in a pack (pithos.blocker.packs), even alone.
    store = MemoryBlockStore() if request.param == "memory" else \
        LocalBlockStore(tmp_path / "b", pack_min_batch=1 if request.param == "packed" else 5)
    b = Blocker(store)
    yield b
    b.close()


def damage(blocker, hash_: bytes, offset: int, truncate: bool = False) -> None:
    from pithos.blocker import MemoryBlockStore

    store = blocker.store
    if isinstance(store, MemoryBlockStore):
        stored = store._blobs[hash_]
        store._blobs[hash_] = stored[:offset] if truncate else \
            stored[:offset] + bytes([stored[offset] ^ 1]) + stored[offset + 1:]
        return
    from tests import block_damage

    # (a file of its own, or a record in a pack)
    if truncate:
        block_damage.truncate(store, hash_, offset)
    else:
        block_damage.flip(store, hash_, offset, 1)


def test_a_read_quarantines_the_damage_it_finds_and_a_put_heals(blocker):
    from pithos.core.errors import IntegrityError

    good, bad = os.urandom(3 * MiB), os.urandom(5000)
    h_good, h_bad = blocker.put_many([good, bad])
    damage(blocker, h_bad, 10)
    with pytest.raises(IntegrityError, match="moved to quarantine") as found:
        blocker.get_many([h_good, h_bad])
    assert found.value.hashes == [h_bad]
    assert blocker.store.quarantined() == [h_bad] and blocker.missing([h_bad]) == [h_bad]
    # Later reads: still an integrity error (the block was stored, and is damaged).
    with pytest.raises(IntegrityError, match="quarantined") as again:
        blocker.get(h_bad)
    assert again.value.hashes == [h_bad]
    with pytest.raises(IntegrityError):
        list(blocker.read_parts(h_bad))
    assert blocker.check([h_good, h_bad]) == ([h_bad], [])
    assert blocker.put(bad) == h_bad  # stored afresh
    assert blocker.get_many([h_good, h_bad]) == [good, bad]
    assert blocker.check([h_good, h_bad]) == ([], [])


def test_a_truncated_block_is_replaced_by_the_next_put_without_a_read(blocker):
    data = os.urandom(2 * MiB)
    h = blocker.put(data)
    damage(blocker, h, MiB, truncate=True)
    assert blocker.put(data) == h  # the size differs: quarantined and stored afresh
    assert blocker.get(h) == data
    assert blocker.store.quarantined([h]) == [h]


def test_a_part_that_fails_its_check_quarantines_the_block(tmp_path):
    from pithos.blocker import Blocker, LocalBlockStore
    from pithos.core import treehash
    from pithos.core.errors import IntegrityError

    if not treehash.AVAILABLE:
        pytest.skip("no tree hashing here: blocks are read whole")
    b = Blocker(LocalBlockStore(tmp_path / "b"))
    try:
        data = os.urandom(BLOCK)
        stream = b.open_stream()
        stream.write(data)
        h = stream.finish()
        damage(b, h, 3 * MiB + 1)
        got = []
        with pytest.raises(IntegrityError):
            got.extend(b.read_parts(h))
        assert b"".join(got) == data[:len(b"".join(got))] and len(got) < 4
        assert b.store.quarantined() == [h] and b.missing([h]) == [h]
        stream = b.open_stream()
        stream.write(data)
        assert stream.finish() == h
        assert b"".join(b.read_parts(h)) == data
    finally:
        b.close()
